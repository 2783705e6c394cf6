"""Parity and accuracy of an exported graph: ONNX Runtime against the PyTorch model it came from.

``check_parity`` compares every output on padded validation batches (``load_eval_data``: the first b
validation samples padded to the longest one and to ``max_length``, for each parity batch size b);
``evaluate_onnx`` / ``evaluate_pytorch`` measure the task metric with both, with the same definitions as
``bertprune.evaluation`` (text kinds) and the kind's ``score`` (qa: SQuAD v1.1 after n-best decoding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bertprune.interface import INPUTS
from bertprune.onnx.wrapper import MLPerfWrapper
from bertprune.tasks.data import Task
from bertprune.tasks.features import to_feeds
from bertprune.tasks.kinds import KINDS, QuestionAnswering, get_kind, score

PARITY_TOLERANCE = 1e-4
PARITY_BATCH_SIZES = (1, 16)
EVAL_BATCH_SIZE = 32


class ParityError(RuntimeError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


@torch.no_grad()
def run_pytorch(model, feeds: dict[str, np.ndarray], kind, device="cpu") -> list[np.ndarray]:
    """The wrapped model's outputs (the kind's ``onnx_outputs`` order) as float32 numpy arrays; feeds:
    MLPerf-named int64 ``[batch, seq]``."""
    out = MLPerfWrapper(model, get_kind(kind))(*(torch.from_numpy(feeds[k]).to(device) for k in INPUTS))
    out = out if isinstance(out, tuple) else (out,)
    return [o.float().cpu().numpy() for o in out]


def check_parity(model, onnx_path, batches, device: str = "auto", kind=None, session=None) -> float:
    """Max |PyTorch − ONNX Runtime| over all outputs of all ``batches`` (padded real inputs).

    batches: dicts with ``input_ids``/``attention_mask``/``token_type_ids`` (HF names) or the MLPerf
    names, ``[batch, seq]`` each. kind defaults to the first kind whose outputs the graph has.
    """
    from bertprune.onnx.runtime import make_session

    if session is None:
        session, _ = make_session(onnx_path, device)
    if kind is None:
        names = tuple(o.name for o in session.get_outputs())
        kind = next((k for k in KINDS.values() if k.onnx_outputs == names), KINDS["classification"])
    kind = get_kind(kind)
    device = torch_device(session)
    model = model.to(device).eval()
    worst = 0.0
    for batch in batches:
        feeds = to_feeds(batch)
        ours = run_pytorch(model, feeds, kind, device)
        theirs = session.run(list(kind.onnx_outputs), feeds)
        for a, b in zip(ours, theirs):
            if a.shape != b.shape:
                raise ParityError(f"output shape differs: PyTorch {a.shape}, ONNX Runtime {b.shape}")
            diff = float(np.max(np.abs(a - b))) if a.size else 0.0
            worst = max(worst, diff if math.isfinite(diff) else math.inf)
    return worst


def torch_device(session) -> str:
    """The torch device matching where ``session`` runs (cuda for the CUDA provider, else cpu)."""
    return "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"


def evaluate_onnx(session, data, kind, examples=None, batch_size: int = EVAL_BATCH_SIZE, metrics=None) -> dict:
    """Task metrics through ONNX Runtime, with the same definitions as ``bertprune.evaluation``.

    classification / regression: ``data`` = batches with a ``labels`` entry (a ``make_loader`` loader)
    -> ``{"accuracy": %}`` / ``{"mse": ..}``. qa: ``data`` = ``squad.SquadFeatures`` and ``examples`` the
    ``SquadExample`` list they came from -> ``{"exact_match": %, "f1": %}``. metrics: the names to compute
    (a task's ``metric_names``; None: the kind's default).
    """
    kind = get_kind(kind)
    names = list(kind.onnx_outputs)
    if isinstance(kind, QuestionAnswering):
        return _span_metrics(kind, lambda feeds: session.run(names, feeds), data, examples, batch_size)
    logits, labels = [], []
    for batch in data:
        logits.append(session.run(names, to_feeds(batch))[0])
        labels.append(np.asarray(batch["labels"]))
    return score(kind, np.concatenate(logits), np.concatenate(labels), metrics)


def evaluate_pytorch(model, data, kind, examples=None, device="cpu", batch_size: int = EVAL_BATCH_SIZE,
                     metrics=None) -> dict:
    """The PyTorch side of ``evaluate_onnx`` (classification goes through ``bertprune.evaluation``)."""
    kind = get_kind(kind)
    if isinstance(kind, QuestionAnswering):
        model = model.to(device).eval()
        return _span_metrics(kind, lambda feeds: run_pytorch(model, feeds, kind, device), data, examples, batch_size)
    from bertprune.evaluation import evaluate

    return evaluate(model.to(device), data, kind.name, device, metrics=metrics)


def _span_metrics(kind, run, features, examples, batch_size: int) -> dict:
    """``{"exact_match", "f1"}`` of the kind's ``score`` over ``features`` run in batches of ``batch_size``."""
    if examples is None:
        raise ValueError("qa evaluation needs the SquadExample list the features were made from")
    outs = []
    for i in range(0, len(features), batch_size):
        outs.append(kind.stack_outputs(run(to_feeds({k: getattr(features, k)[i:i + batch_size] for k in INPUTS}))))
    m = kind.score(np.concatenate(outs), examples=examples, squad=features)
    return {"exact_match": m["exact_match"], "f1": m["f1"]}


@dataclass
class EvalData:
    """The task's validation data in the forms the export needs: parity batches, an accuracy loader
    (classification / regression) or SQuAD features + examples (qa), and S for the MAC model."""

    parity_batches: list[dict]
    loader: object = None
    features: object = None  # squad.SquadFeatures
    examples: list | None = None  # squad.SquadExample list
    mac_seq_len: float | None = None

    @property
    def has_metrics(self) -> bool:
        return self.loader is not None or (self.features is not None and self.examples is not None)

    @property
    def metric_data(self):
        return self.loader if self.loader is not None else self.features


def load_eval_data(task: Task, tokenizer, batch_sizes=PARITY_BATCH_SIZES, max_eval_samples: int | None = None,
                   onnx_seq_len: int | None = None, qa_data=None) -> EvalData:
    """Validation data of ``task`` for parity and accuracy (built by ``bertprune.tasks.features``).

    Parity batches (HF names, ``[b, seq]``): for each b in ``batch_sizes`` the first b validation
    examples padded to the longest one and to ``task.max_length`` — so every batch size sees padding.
    qa_data: ``(examples, features)`` for qa; else loaded from ``task.data_file`` when set (metrics), or
    the built-in sample pairs (parity only).
    """
    from bertprune.tasks.data import average_token_length, make_loader
    from bertprune.tasks.features import TRAIN_ROWS_FOR_LENGTH, input_rows, pad, tokenized_splits

    if isinstance(get_kind(task.kind), QuestionAnswering):
        return _qa_eval_data(task, tokenizer, batch_sizes, max_eval_samples, onnx_seq_len or task.max_length,
                             qa_data)
    tok = tokenized_splits(task, tokenizer, {"train": TRAIN_ROWS_FOR_LENGTH, "validation": max_eval_samples or None})
    rows = input_rows(tok["validation"], max(batch_sizes))
    parity = [pad(tokenizer, rows[:b], padding, task.max_length, "pt")
              for b in batch_sizes for padding in ("longest", "max_length")]
    loader = make_loader(tok["validation"], tokenizer, EVAL_BATCH_SIZE)
    return EvalData(parity, loader=loader, mac_seq_len=average_token_length(tok["train"]))


def _qa_eval_data(task, tokenizer, batch_sizes, max_eval_samples, onnx_seq_len, qa_data) -> EvalData:
    from bertprune.tasks.features import pad, sample_qa_rows, squad_validation

    examples = features = None
    if qa_data is not None:
        examples, features = qa_data
    elif task.data_file:
        examples, features = squad_validation(task, tokenizer, max_eval_samples)
    if features is not None:
        if features.max_seq_length != onnx_seq_len:
            raise ValueError(f"SQuAD features have max_seq_length={features.max_seq_length}, the export uses "
                             f"{onnx_seq_len}")
        parity = [{k: torch.from_numpy(getattr(features, k)[:b]) for k in INPUTS} for b in batch_sizes]
        return EvalData(parity, features=features, examples=examples,
                        mac_seq_len=float(features.input_mask.sum(1).mean()))
    rows = sample_qa_rows(tokenizer, max(batch_sizes), onnx_seq_len)
    parity = [pad(tokenizer, rows[:b], "max_length", onnx_seq_len, "pt") for b in batch_sizes]
    return EvalData(parity, mac_seq_len=float(onnx_seq_len))
