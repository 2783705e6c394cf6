"""A task's validation inputs: the one builder behind export parity / accuracy, the LoadGen QSL and the
developer benchmarks, so all of them see the same tokens in the same order.

Text kinds (classification, regression): the validation split tokenized by ``tasks.data.tokenize``
(truncation to ``task.max_length``, no padding), in file order; callers pad as they need (``pad``):
the QSL to ``max_length``, parity batches both to the longest member and to ``max_length``.
Question answering: SQuAD v1.1 / v2.0 examples featurized with MLPerf's doc stride (``squad_validation``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bertprune.interface import HF_INPUTS, INPUTS
from bertprune.tasks.kinds import KINDS, QuestionAnswering, get_kind

TRAIN_ROWS_FOR_LENGTH = 4096  # training rows whose mean token length is the MAC model's S (export)

# Used for qa parity when no SQuAD file is at hand: real text, tokenized as a question/context pair.
QA_SAMPLE_PAIRS = [
    ("Who developed the theory of relativity?",
     "Albert Einstein developed the theory of relativity, one of the two pillars of modern physics. His work is "
     "also known for its influence on the philosophy of science."),
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
]


@dataclass
class Features:
    """Model inputs (MLPerf names) for every validation sample. N samples, L = max_length.

    input_ids, input_mask, segment_ids: int64 [N, L] (padding on the right); labels: [N]
    (classification int64, regression float32); qa: ``squad`` (SquadFeatures) + ``examples``.
    """

    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    labels: np.ndarray | None = None
    squad: object | None = None
    examples: list | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        """Real tokens per sample [N]."""
        if getattr(self, "_lengths", None) is None:
            self._lengths = self.input_mask.sum(axis=1).astype(np.int64)
        return self._lengths


def tokenized_splits(task, tokenizer, limits: dict):
    """``{split: first n rows}`` of a text task, tokenized (unpadded, ``label`` kept) in one pass: a
    ``datasets.DatasetDict`` with those splits (n None = the whole split)."""
    import datasets

    from bertprune.tasks.data import load_task_data, tokenize

    dd = load_task_data(task)
    parts = {}
    for split, n in limits.items():
        part = dd[split]
        parts[split] = part if n is None else part.select(range(min(int(n), len(part))))
    if "train" not in parts:  # tokenize() reads the columns to drop from the train split
        parts["train"] = parts[next(iter(parts))].select([])
    return tokenize(datasets.DatasetDict(parts), task, tokenizer)


def input_rows(split, n: int | None = None) -> list[dict]:
    """The first ``n`` (all) rows of a tokenized split as token dicts without the label (for ``pad``)."""
    n = len(split) if n is None else min(int(n), len(split))
    return [{k: v for k, v in split[i].items() if k != "label"} for i in range(n)]


def pad(tokenizer, rows: list[dict], padding: str = "max_length", max_length: int | None = None,
        return_tensors: str = "np"):
    """``rows`` padded on the right by the tokenizer (Hugging Face names: input_ids, attention_mask
    [, token_type_ids], each ``[len(rows), seq]``)."""
    return tokenizer.pad(rows, padding=padding, max_length=max_length, return_tensors=return_tensors)


def to_feeds(batch) -> dict[str, np.ndarray]:
    """MLPerf-named, C-contiguous int64 arrays ``[batch, seq]`` from a batch with Hugging Face names (or
    already MLPerf names); missing token_type_ids -> zeros."""
    def arr(x):
        return np.ascontiguousarray((x.cpu().numpy() if torch.is_tensor(x) else np.asarray(x)).astype(np.int64))

    if all(k in batch for k in INPUTS):
        return {k: arr(batch[k]) for k in INPUTS}
    feeds = {k: arr(batch[hf]) for k, hf in HF_INPUTS.items() if batch.get(hf) is not None}
    feeds.setdefault("segment_ids", np.zeros_like(feeds["input_ids"]))  # a tokenizer without token types
    return {k: feeds[k] for k in INPUTS}


def squad_validation(task, tokenizer, limit: int | None = None):
    """``(examples, squad.SquadFeatures)`` of a qa task: ``task.data_file`` (else the hub's validation split
    of the kind's SQuAD version), the first ``limit`` examples, featurized to ``task.max_length`` with the
    task's doc stride and query length. Features: int64 ``[N spans, max_length]``. A v2.0 file given to a
    v1.1 task is one clear error here, before any model work."""
    from bertprune.tasks.squad import featurize, load_squad, load_squad_hub

    kind = get_kind(task.kind)
    examples = load_squad(task.data_file) if task.data_file else load_squad_hub(dataset=kind.hub_dataset)
    kind.check_examples(examples, f"task.data_file={task.data_file}" if task.data_file
                        else f"the hub's {kind.hub_dataset} validation split")
    if limit:
        examples = examples[: int(limit)]
    feats = featurize(examples, tokenizer, max_seq_length=task.max_length, doc_stride=task.doc_stride,
                      max_query_length=task.max_query_length, progress=False)
    return examples, feats


@dataclass
class SquadData:
    """A qa task's data for pruning: training features with answer positions (rows for Fisher / calibration /
    tuning) and the dev examples + features the stage metrics decode against."""

    train: list[dict]  # per feature: input_ids / attention_mask / token_type_ids [max_length], start/end_positions []
    mean_tokens: float  # mean real (unpadded) tokens per training feature: the MAC cost model's sequence length
    examples: list  # dev SquadExamples
    features: object  # dev squad.SquadFeatures [N spans, max_length]
    validation: list[dict]  # dev feature rows (inputs only)


def feature_rows(feats, training: bool) -> list[dict]:
    """One dict of tensors per SQuAD feature (Hugging Face input names; ``training``: with answer positions)."""
    cols = {"input_ids": feats.input_ids, "attention_mask": feats.input_mask, "token_type_ids": feats.segment_ids}
    if training:
        cols.update(start_positions=feats.start_positions, end_positions=feats.end_positions)
    tensors = {k: torch.from_numpy(v) for k, v in cols.items()}
    return [{k: v[i] for k, v in tensors.items()} for i in range(len(feats))]


def squad_data(task, tokenizer) -> SquadData:
    """Training features of ``task.train_file`` (else the hub's SQuAD train split; offline: one error naming
    ``task.train_file``), featurized with answer positions, and the dev examples/features of ``task.data_file``
    (``squad_validation``), all at ``task.max_length`` / doc stride / query length."""
    from bertprune.tasks.squad import featurize, load_squad, load_squad_hub

    examples, features = squad_validation(task, tokenizer)  # first: a wrong dev file fails before train featurizing
    hub = get_kind(task.kind).hub_dataset
    if task.train_file:
        train_examples = load_squad(task.train_file)
    else:
        try:
            train_examples = load_squad_hub("train", dataset=hub)
        except Exception as err:  # noqa: BLE001 - offline / hub errors: one message with the fix
            raise ValueError(
                f"task={task.name}: task.train_file is not set and SQuAD's training split could not be loaded from "
                f"the hub ({type(err).__name__}: {str(err)[:200]}). Fisher and mask tuning need training features "
                "with answer positions: give a local SQuAD training file, e.g. "
                f"task.train_file=/data/squad/train-{'v2.0' if hub == 'squad_v2' else 'v1.1'}.json") from None
    train = featurize(train_examples, tokenizer, max_seq_length=task.max_length, doc_stride=task.doc_stride,
                      max_query_length=task.max_query_length, progress=False, training=True)
    return SquadData(train=feature_rows(train, True), mean_tokens=float(train.input_mask.sum(1).mean()),
                     examples=examples, features=features, validation=feature_rows(features, False))


def stack_rows(rows: list[dict]) -> dict:
    """Rows of equal-length tensors -> a batch (each key stacked: ``[b, max_length]`` / ``[b]``)."""
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def sample_qa_rows(tokenizer, n: int, max_length: int) -> list[dict]:
    """``n`` unpadded rows cycling through ``QA_SAMPLE_PAIRS`` (question/context pairs), for parity and
    speed measurements of a qa model when no SQuAD file is at hand."""
    enc = tokenizer([q for q, _ in QA_SAMPLE_PAIRS], [c for _, c in QA_SAMPLE_PAIRS], truncation=True,
                    max_length=max_length)
    rows = [{k: enc[k][i] for k in enc} for i in range(len(QA_SAMPLE_PAIRS))]
    return [rows[i % len(rows)] for i in range(n)]


def _text_features(task, tokenizer) -> Features:
    val = tokenized_splits(task, tokenizer, {"validation": None})["validation"]
    feeds = to_feeds(pad(tokenizer, input_rows(val), "max_length", task.max_length))
    labels = np.asarray(val["label"], dtype=get_kind(task.kind).label_dtype)
    return Features(*(feeds[k] for k in INPUTS), labels=labels)


def _squad_features(task, tokenizer) -> Features:
    examples, sq = squad_validation(task, tokenizer)
    return Features(sq.input_ids, sq.input_mask, sq.segment_ids, squad=sq, examples=examples)


# Kinds whose validation inputs are not the text kinds' one row per sample (tasks.kinds could own this).
VALIDATION_BUILDERS = {k.name: _squad_features for k in KINDS.values() if isinstance(k, QuestionAnswering)}


def validation_features(task, tokenizer) -> Features:
    """Every validation sample of ``task`` padded to ``task.max_length``, in data-set order: the LoadGen
    QSL's data. Text kinds: int64 ``[N, max_length]`` + labels ``[N]`` (the kind's label dtype); qa: the
    SQuAD spans + the ``squad`` features and ``examples`` they decode against."""
    return VALIDATION_BUILDERS.get(get_kind(task.kind).name, _text_features)(task, tokenizer)
