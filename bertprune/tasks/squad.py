"""SQuAD v1.1 / v2.0 data pipeline and metrics, following MLPerf Inference BERT.

MLPerf Inference BERT reuses Google BERT's ``run_squad.py`` logic: whitespace word
splitting, WordPiece sub-tokenization per word, sliding doc spans, the "max context"
rule, n-best span decoding with ``get_final_text`` and the official SQuAD v1.1 EM/F1.
This module re-implements that pipeline with plain Python + numpy; the tokenizer is any
object with ``tokenize(str) -> list[str]`` and ``convert_tokens_to_ids(list[str])``
(e.g. a ``transformers`` BERT tokenizer).

Pipeline::

    examples = load_squad("dev-v1.1.json")
    features = featurize(examples, tokenizer, **featurize_kwargs)   # [N, max_seq_length]
    start_logits, end_logits = model(...)                           # [N, max_seq_length] each
    preds = postprocess(examples, features, start_logits, end_logits)
    squad_v1_metrics(preds, examples)  # {"exact_match", "f1", "total"}

SQuAD v2.0 (questions without an answer): the same features; ``postprocess(...,
null_score_diff_threshold=0.0)`` predicts "" when the [CLS] (null) score beats the best span by more
than the threshold, as Google's ``run_squad.py`` v2 does, and ``squad_v2_metrics`` is the official
v2.0 evaluation (an unanswerable question is right only with an empty prediction).
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "MLPERF_BERT",
    "REFERENCE_F1",
    "TARGETS",
    "SquadExample",
    "SquadFeatures",
    "featurize",
    "load_squad",
    "load_squad_hub",
    "postprocess",
    "squad_v1_metrics",
    "squad_v2_metrics",
    "target_report",
]

# MLPerf Inference BERT settings (bert/run.py + create_squad_data.py).
MLPERF_BERT = dict(max_seq_length=384, doc_stride=128, max_query_length=64, n_best_size=20, max_answer_length=30)
REFERENCE_F1 = 90.874  # BERT-large FP32 F1 on SQuAD v1.1 dev, the MLPerf reference
TARGETS = {"bert-99": 0.99, "bert-99.9": 0.999}

_DATA_HINT = "Give the path to SQuAD dev-v1.1.json (or dev-v2.0.json) with task.data_file=/path/to/dev-v1.1.json"


# --------------------------------------------------------------------------- examples
@dataclass
class SquadExample:
    """One question. ``doc_tokens`` are the whitespace-split context words; ``start_position``
    / ``end_position`` are word indices of the first gold answer in ``doc_tokens`` (or None).
    ``answers`` is empty for a SQuAD v2.0 question without an answer (``is_impossible``)."""

    qas_id: str
    question: str
    context: str
    doc_tokens: list[str]
    answers: list[str]
    start_position: int | None = None
    end_position: int | None = None


def _is_whitespace(c: str) -> bool:
    return c in " \t\r\n" or ord(c) == 0x202F


def _split_context(context: str) -> tuple[list[str], list[int]]:
    """Whitespace word split as in Google BERT; returns (words, char index -> word index)."""
    words: list[str] = []
    char_to_word: list[int] = []
    prev_ws = True
    for c in context:
        if _is_whitespace(c):
            prev_ws = True
        else:
            if prev_ws:
                words.append(c)
            else:
                words[-1] += c
            prev_ws = False
        # whitespace maps to the preceding word (-1 before the first word)
        char_to_word.append(len(words) - 1)
    return words, char_to_word


def _make_example(qas_id: str, question: str, context: str, answers: list[tuple[str, int]]) -> SquadExample:
    words, char_to_word = _split_context(context)
    start = end = None
    if answers:
        text, offset = answers[0]
        if text and 0 <= offset and offset + len(text) <= len(context):
            s, e = char_to_word[offset], char_to_word[offset + len(text) - 1]
            # same sanity check as run_squad.py: the words must contain the answer text
            if s >= 0 and " ".join(words[s : e + 1]).find(" ".join(text.split())) != -1:
                start, end = s, e
    return SquadExample(
        qas_id=str(qas_id),
        question=question,
        context=context,
        doc_tokens=words,
        answers=[t for t, _ in answers],
        start_position=start,
        end_position=end,
    )


def load_squad(path: str | Path) -> list[SquadExample]:
    """Read a SQuAD v1.1 or v2.0 json file into one ``SquadExample`` per question (file order); a v2.0
    question marked ``is_impossible`` gets no answers (its ``plausible_answers`` are not gold)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SQuAD file not found: {path}. {_DATA_HINT}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid SQuAD json ({err})") from err

    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: expected a SQuAD object with a 'data' list at the top level")
    examples: list[SquadExample] = []
    where = "data"
    try:
        for a, article in enumerate(data["data"]):
            for p, para in enumerate(article["paragraphs"]):
                where = f"data[{a}].paragraphs[{p}]"
                context = para["context"]
                for q, qa in enumerate(para["qas"]):
                    where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                    gold = [] if qa.get("is_impossible", False) else qa["answers"]
                    answers = [(ans["text"], int(ans["answer_start"])) for ans in gold]
                    examples.append(_make_example(qa["id"], qa["question"], context, answers))
    except KeyError as err:
        raise ValueError(f"{path}: missing key {err} at {where}; is this a SQuAD v1.1 / v2.0 file?") from err
    except (TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"{path}: malformed SQuAD entry at {where} ({err})") from err
    if not examples:
        raise ValueError(f"{path}: contains no questions")
    return examples


def load_squad_hub(split: str = "validation", dataset: str = "squad") -> list[SquadExample]:
    """SQuAD from the Hugging Face hub (``datasets.load_dataset(dataset)``: ``squad`` = v1.1, ``squad_v2``:
    unanswerable questions have empty answer lists); needs network."""
    from datasets import load_dataset  # lazy: optional path for users with network

    rows = load_dataset(dataset, split=split)
    return [
        _make_example(
            r["id"], r["question"], r["context"],
            list(zip(r["answers"]["text"], (int(s) for s in r["answers"]["answer_start"]))),
        )
        for r in rows
    ]


# --------------------------------------------------------------------------- features
@dataclass
class SquadFeatures:
    """Model inputs, one row per doc span (feature). N = number of features, L = max_seq_length.

    input_ids, input_mask, segment_ids: int64 [N, L]; example_index: int64 [N] (index into the
    examples list). Per feature: token_to_orig_map (feature position -> doc word index, span
    tokens only), token_is_max_context (feature position -> bool, span tokens only) and the
    unpadded wordpiece ``tokens``.
    """

    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    example_index: np.ndarray
    token_to_orig_map: list[dict[int, int]]
    token_is_max_context: list[dict[int, bool]]
    tokens: list[list[str]]
    # training features only (``featurize(..., training=True)``): int64 [N] positions of the answer's first /
    # last sub-token in the feature, 0 ([CLS]) when the answer is not inside the feature's doc span
    start_positions: np.ndarray | None = None
    end_positions: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_seq_length(self) -> int:
        return int(self.input_ids.shape[1])

    @staticmethod
    def _paths(path: str | Path) -> tuple[Path, Path]:
        base = str(path)
        for suffix in (".npz", ".json"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        return Path(base + ".npz"), Path(base + ".json")

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<path>.json`` (per-feature maps), then ``<path>.npz`` (arrays), each atomically; no pickle."""
        import io

        from bertprune.io import atomic_write_bytes, atomic_write_text

        npz, js = self._paths(path)
        meta = {
            "format": "bertprune.tasks.squad.features/1",
            "token_to_orig_map": [{str(k): v for k, v in m.items()} for m in self.token_to_orig_map],
            "token_is_max_context": [{str(k): v for k, v in m.items()} for m in self.token_is_max_context],
            "tokens": self.tokens,
        }
        atomic_write_text(js, json.dumps(meta))
        buf = io.BytesIO()
        np.savez(
            buf,
            input_ids=self.input_ids, input_mask=self.input_mask,
            segment_ids=self.segment_ids, example_index=self.example_index,
        )
        atomic_write_bytes(npz, buf.getvalue())
        return npz, js

    @classmethod
    def load(cls, path: str | Path) -> SquadFeatures:
        """Inverse of ``save`` (arrays loaded with ``allow_pickle=False``)."""
        npz, js = cls._paths(path)
        for p in (npz, js):
            if not p.is_file():
                raise FileNotFoundError(f"SQuAD features file not found: {p}")
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("input_ids", "input_mask", "segment_ids", "example_index")}
        meta = json.loads(js.read_text(encoding="utf-8"))
        feats = cls(
            **arrays,
            token_to_orig_map=[{int(k): int(v) for k, v in m.items()} for m in meta["token_to_orig_map"]],
            token_is_max_context=[{int(k): bool(v) for k, v in m.items()} for m in meta["token_is_max_context"]],
            tokens=[list(t) for t in meta["tokens"]],
        )
        n = len(feats)
        if not (len(feats.token_to_orig_map) == len(feats.token_is_max_context) == len(feats.tokens)
                == feats.example_index.shape[0] == n):
            raise ValueError(f"{npz} and {js} disagree on the number of features")
        return feats


def _is_max_context(spans: list[tuple[int, int]], span_index: int, position: int) -> bool:
    """True if ``spans[span_index]`` is the span giving doc token ``position`` the most context.

    score = min(left context, right context) + 0.01 * span length; first best span wins ties.
    """
    best_score, best_index = None, None
    for i, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_index = score, i
    return span_index == best_index


def _improve_answer_span(doc: list[str], start: int, end: int, tokenizer, answer: str) -> tuple[int, int]:
    """Google BERT's ``_improve_answer_span``: the sub-token span inside ``[start, end]`` that matches the
    tokenized answer text exactly (e.g. "1895" inside the word "(1895-1943)."), else ``(start, end)``."""
    target = " ".join(tokenizer.tokenize(answer))
    for new_start in range(start, end + 1):
        for new_end in range(end, new_start - 1, -1):
            if " ".join(doc[new_start : new_end + 1]) == target:
                return new_start, new_end
    return start, end


def featurize(
    examples: list[SquadExample],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    progress: bool = True,
    training: bool = False,
) -> SquadFeatures:
    """Google BERT / MLPerf ``convert_examples_to_features`` (inference mode; ``training=True`` adds the
    answer positions as Google's ``run_squad.py`` training mode computes them).

    Each example yields one feature per doc span: ``[CLS] query [SEP] span [SEP]`` padded with
    0 to ``max_seq_length``. Returns ``SquadFeatures`` with int64 arrays of shape [N, max_seq_length];
    with ``training``, ``start_positions`` / ``end_positions`` int64 [N]: the feature positions of the first
    gold answer's first / last sub-token when both lie in the feature's doc span, else 0 ([CLS]) — also for
    an example whose answer text was not found in its context (``start_position`` None).
    """
    if max_query_length < 1:
        raise ValueError(f"max_query_length must be >= 1, got {max_query_length}")
    if max_seq_length <= max_query_length + 3:
        raise ValueError(
            f"max_seq_length ({max_seq_length}) must be > max_query_length + 3 ({max_query_length + 3}) "
            "to leave room for [CLS], 2x[SEP] and at least one context token"
        )
    if not 1 <= doc_stride <= max_seq_length - max_query_length - 3:
        # a larger stride would skip context tokens between spans
        raise ValueError(
            f"doc_stride must be in [1, max_seq_length - max_query_length - 3 = "
            f"{max_seq_length - max_query_length - 3}], got {doc_stride}"
        )
    cls_tok, sep_tok = getattr(tokenizer, "cls_token", None) or "[CLS]", getattr(tokenizer, "sep_token", None) or "[SEP]"

    ids_rows, mask_rows, seg_rows, ex_idx = [], [], [], []
    to_orig, max_ctx, all_tokens = [], [], []
    starts, ends = [], []
    it: Iterable = enumerate(examples)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(examples), desc="SQuAD featurize", unit="ex")
    cached_words: list[str] | None = None
    for e_i, ex in it:
        query = tokenizer.tokenize(ex.question)[:max_query_length]
        if ex.doc_tokens != cached_words:  # questions on one paragraph share its sub-tokens
            cached_words = ex.doc_tokens
            tok_to_orig: list[int] = []
            doc: list[str] = []
            orig_to_tok: list[int] = []  # doc word -> its first sub-token (as Google's run_squad)
            for w_i, word in enumerate(ex.doc_tokens):
                orig_to_tok.append(len(doc))
                for sub in tokenizer.tokenize(word):
                    tok_to_orig.append(w_i)
                    doc.append(sub)
        answer_span = None  # (first, last) sub-token of the gold answer in doc
        if training and ex.start_position is not None:
            a_start = orig_to_tok[ex.start_position]
            a_end = orig_to_tok[ex.end_position + 1] - 1 if ex.end_position < len(ex.doc_tokens) - 1 else len(doc) - 1
            answer_span = _improve_answer_span(doc, a_start, a_end, tokenizer, ex.answers[0])

        max_doc = max_seq_length - len(query) - 3
        spans: list[tuple[int, int]] = []  # (start, length) into doc
        start = 0
        while start < len(doc):
            length = min(len(doc) - start, max_doc)
            spans.append((start, length))
            if start + length == len(doc):
                break
            start += min(length, doc_stride)

        for s_i, (start, length) in enumerate(spans):
            tokens = [cls_tok, *query, sep_tok]
            segs = [0] * len(tokens)
            t2o: dict[int, int] = {}
            tmc: dict[int, bool] = {}
            for k in range(start, start + length):
                t2o[len(tokens)] = tok_to_orig[k]
                tmc[len(tokens)] = _is_max_context(spans, s_i, k)
                tokens.append(doc[k])
            if training:
                inside = answer_span is not None and start <= answer_span[0] and answer_span[1] <= start + length - 1
                offset = len(query) + 2  # [CLS] query [SEP]
                starts.append(answer_span[0] - start + offset if inside else 0)
                ends.append(answer_span[1] - start + offset if inside else 0)
            tokens.append(sep_tok)
            segs += [1] * (length + 1)
            ids = list(tokenizer.convert_tokens_to_ids(tokens))
            pad = max_seq_length - len(ids)
            ids_rows.append(ids + [0] * pad)
            mask_rows.append([1] * len(ids) + [0] * pad)
            seg_rows.append(segs + [0] * pad)
            ex_idx.append(e_i)
            to_orig.append(t2o)
            max_ctx.append(tmc)
            all_tokens.append(tokens)

    def arr(rows: list) -> np.ndarray:
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), max_seq_length)

    return SquadFeatures(
        input_ids=arr(ids_rows), input_mask=arr(mask_rows), segment_ids=arr(seg_rows),
        example_index=np.asarray(ex_idx, dtype=np.int64),
        token_to_orig_map=to_orig, token_is_max_context=max_ctx, tokens=all_tokens,
        start_positions=np.asarray(starts, dtype=np.int64) if training else None,
        end_positions=np.asarray(ends, dtype=np.int64) if training else None,
    )


# --------------------------------------------------------------------------- postprocess
def _is_punctuation(c: str) -> bool:
    cp = ord(c)
    # all non-letter/number ASCII counts as punctuation, as in BERT's BasicTokenizer
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


# BERT's special tokens: the basic tokenizer keeps a word equal to one of them whole (never lower-cased or split)
NEVER_SPLIT = ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")


def _basic_tokenize(text: str, do_lower_case: bool = True) -> list[str]:
    """BERT BasicTokenizer, as MLPerf's reference ``get_final_text`` runs it.

    Cleaning drops NUL, U+FFFD and every Unicode category-C character (Cc, Cf, Cs, Co, Cn) except
    tab/newline/CR, which like category Zs become spaces; CJK ideographs are spaced out. Each
    whitespace-separated word equal to a special token (``NEVER_SPLIT``) is kept as is; every other
    word is lower-cased with accents stripped (NFD, Mn dropped) and split around punctuation.
    """
    out = []
    for c in text:
        cat = unicodedata.category(c)
        if c in " \t\n\r" or cat == "Zs":
            out.append(" ")
        elif cat.startswith("C") or c == "\ufffd":  # NUL is Cc
            continue
        elif _is_cjk(ord(c)):
            out.append(f" {c} ")
        else:
            out.append(c)
    tokens = []
    for word in "".join(out).split():
        if word in NEVER_SPLIT:
            tokens.append(word)
            continue
        if do_lower_case:
            word = "".join(ch for ch in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(ch) != "Mn")
        piece = ""
        for ch in word:
            if _is_punctuation(ch):
                if piece:
                    tokens.append(piece)
                tokens.append(ch)
                piece = ""
            else:
                piece += ch
        if piece:
            tokens.append(piece)
    return " ".join(tokens).split()  # as the reference: split once more on whitespace


def _strip_spaces(text: str) -> tuple[str, dict[int, int]]:
    """Drop spaces; return the text and a map (index without spaces -> index in ``text``)."""
    chars, ns_to_s = [], {}
    for i, c in enumerate(text):
        if c != " ":
            ns_to_s[len(chars)] = i
            chars.append(c)
    return "".join(chars), ns_to_s


def _final_text(pred_text: str, orig_text: str, do_lower_case: bool = True) -> str:
    """Google BERT ``get_final_text``: project the normalised prediction onto the original words.

    ``pred_text`` is detokenised wordpieces (lower-cased, punctuation split off); ``orig_text``
    is the original words it came from. The prediction is located in the BasicTokenizer form of
    ``orig_text``; if both agree character-for-character once spaces are removed, the matching
    slice of ``orig_text`` (original casing/punctuation) is returned, else ``orig_text``.
    """
    tok_text = " ".join(_basic_tokenize(orig_text, do_lower_case))
    start = tok_text.find(pred_text)
    if start == -1:
        return orig_text
    end = start + len(pred_text) - 1
    orig_ns, orig_ns_to_s = _strip_spaces(orig_text)
    tok_ns, tok_ns_to_s = _strip_spaces(tok_text)
    if len(orig_ns) != len(tok_ns):
        return orig_text
    tok_s_to_ns = {v: k for k, v in tok_ns_to_s.items()}
    if start not in tok_s_to_ns or end not in tok_s_to_ns:
        return orig_text
    o_start, o_end = orig_ns_to_s.get(tok_s_to_ns[start]), orig_ns_to_s.get(tok_s_to_ns[end])
    if o_start is None or o_end is None:
        return orig_text
    return orig_text[o_start : o_end + 1]


def _top_indices(logits: np.ndarray, n: int) -> np.ndarray:
    # descending, ties by lower index (matches the reference's stable sort)
    return np.argsort(-logits, kind="stable")[:n]


def postprocess(
    examples: list[SquadExample],
    features: SquadFeatures,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    do_lower_case: bool = True,
    null_score_diff_threshold: float | None = None,
) -> dict[str, str]:
    """Decode the best answer span per example; returns {qas_id: answer text} ("" if none).

    start_logits, end_logits: float [N, max_seq_length], row i belonging to ``features`` row i.
    Candidates are the n_best start x n_best end positions of every feature of the example; a
    candidate must lie inside the doc span, have end >= start, length <= max_answer_length, and
    its start must be max-context in that feature. The highest start+end logit wins.
    ``null_score_diff_threshold`` (SQuAD v2.0; None = v1.1, always a span): the null score of an example is
    the smallest ``start[0] + end[0]`` ([CLS]) over its features; the prediction is "" when the null score
    exceeds the best span's score by more than the threshold (Google ``run_squad.py``, 0.0 by default).
    """
    start_logits = np.asarray(start_logits, dtype=np.float64)
    end_logits = np.asarray(end_logits, dtype=np.float64)
    expected = (len(features), features.max_seq_length)
    for name, a in (("start_logits", start_logits), ("end_logits", end_logits)):
        if a.shape != expected:
            raise ValueError(f"{name} has shape {a.shape}, expected [N features, max_seq_length] = {expected}")
    if len(features) and int(features.example_index.max()) >= len(examples):
        raise ValueError("features refer to more examples than were given; featurize and postprocess the same list")

    by_example: dict[int, list[int]] = {}
    for f_i, e_i in enumerate(features.example_index.tolist()):
        by_example.setdefault(e_i, []).append(f_i)

    predictions: dict[str, str] = {}
    for e_i, ex in enumerate(examples):
        best = None  # (score, feature, start, end); strict > keeps the first of equal scores
        null = None  # smallest [CLS] score over the example's features (v2.0)
        for f_i in by_example.get(e_i, []):
            t2o, tmc, n_tok = features.token_to_orig_map[f_i], features.token_is_max_context[f_i], len(features.tokens[f_i])
            s_log, e_log = start_logits[f_i], end_logits[f_i]
            if null is None or s_log[0] + e_log[0] < null:
                null = s_log[0] + e_log[0]
            ends = _top_indices(e_log, n_best_size).tolist()
            for s in _top_indices(s_log, n_best_size).tolist():
                if s >= n_tok or s not in t2o or not tmc.get(s, False):
                    continue
                for e in ends:
                    if e >= n_tok or e not in t2o or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = s_log[s] + e_log[e]
                    if best is None or score > best[0]:
                        best = (score, f_i, s, e)
        if best is None or (null_score_diff_threshold is not None and null is not None
                            and null - best[0] > null_score_diff_threshold):
            predictions[ex.qas_id] = ""
            continue
        _, f_i, s, e = best
        pieces = " ".join(features.tokens[f_i][s : e + 1])
        # undo WordPiece: "un ##aff ##able" -> "unaffable"
        tok_text = " ".join(pieces.replace(" ##", "").replace("##", "").strip().split())
        t2o = features.token_to_orig_map[f_i]
        orig_text = " ".join(ex.doc_tokens[t2o[s] : t2o[e] + 1])
        predictions[ex.qas_id] = _final_text(tok_text, orig_text, do_lower_case)
    return predictions


# --------------------------------------------------------------------------- metrics
_PUNCT = set(string.punctuation)


def _normalize_answer(s: str) -> str:
    """Official SQuAD v1.1 normalisation: lower, drop punctuation, drop a/an/the, squash spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1(prediction: str, truth: str) -> float:
    pred, gold = _normalize_answer(prediction).split(), _normalize_answer(truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_v1_metrics(predictions: dict[str, str], examples: list[SquadExample]) -> dict[str, Any]:
    """Official SQuAD v1.1 EM and F1 (percent, max over gold answers); missing predictions score 0."""
    if not examples:
        raise ValueError("squad_v1_metrics needs at least one example")
    em = f1 = 0.0
    for ex in examples:
        if not ex.answers:
            raise ValueError(f"question {ex.qas_id!r} has no gold answers; SQuAD v1.1 needs at least one")
        if ex.qas_id not in predictions:
            continue
        pred = predictions[ex.qas_id]
        em += max(float(_normalize_answer(pred) == _normalize_answer(g)) for g in ex.answers)
        f1 += max(_f1(pred, g) for g in ex.answers)
    n = len(examples)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n, "total": n}


def _f1_v2(prediction: str, truth: str) -> float:
    """Official v2.0 F1: an empty answer (no-answer) scores 1 only against an empty prediction."""
    pred, gold = _normalize_answer(prediction).split(), _normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    return _f1(prediction, truth)


def squad_v2_metrics(predictions: dict[str, str], examples: list[SquadExample]) -> dict[str, Any]:
    """Official SQuAD v2.0 exact match and F1 (percent, max over gold answers; a question without an answer
    has the one gold answer "", so only an empty prediction is right), overall and split into
    ``HasAns_*`` / ``NoAns_*`` (the official script's breakdown); missing predictions score 0."""
    if not examples:
        raise ValueError("squad_v2_metrics needs at least one example")
    sums = {"HasAns": [0.0, 0.0, 0], "NoAns": [0.0, 0.0, 0]}
    for ex in examples:
        golds = [a for a in ex.answers if _normalize_answer(a)] or [""]
        part = sums["HasAns" if golds != [""] else "NoAns"]
        part[2] += 1
        if ex.qas_id not in predictions:
            continue
        pred = predictions[ex.qas_id]
        part[0] += max(float(_normalize_answer(pred) == _normalize_answer(g)) for g in golds)
        part[1] += max(_f1_v2(pred, g) for g in golds)
    n = len(examples)
    out: dict[str, Any] = {"exact_match": 100.0 * (sums["HasAns"][0] + sums["NoAns"][0]) / n,
                           "f1": 100.0 * (sums["HasAns"][1] + sums["NoAns"][1]) / n, "total": n}
    for name, (em, f1, count) in sums.items():
        if count:
            out.update({f"{name}_exact_match": 100.0 * em / count, f"{name}_f1": 100.0 * f1 / count,
                        f"{name}_total": count})
    return out


def target_report(f1: float, reference_f1: float = REFERENCE_F1) -> dict[str, dict[str, Any]]:
    """MLPerf accuracy targets: ``{target: {"fraction", "required_f1", "met"}}``.

    required_f1 = reference_f1 * fraction, unrounded, as the MLPerf submission checker compares
    (89.96526 for bert-99, 90.783126 for bert-99.9; the published 89.965 / 90.783 are rounded down,
    so an F1 of 89.965 does not meet bert-99).
    """
    report = {}
    for name, frac in TARGETS.items():
        required = reference_f1 * frac
        report[name] = {"fraction": frac, "required_f1": required, "met": bool(f1 >= required)}
    return report
