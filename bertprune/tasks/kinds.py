"""Task kinds: everything that differs between classification, regression and question answering.

One object per kind owns its Hugging Face head, its loss, its metrics (names, the primary one and
which way is better), its label dtype and the ONNX outputs of the MLPerf interface. Code elsewhere
asks the kind (``get_kind(task.kind).loss(outputs, batch)``) instead of testing ``kind == "qa"``;
adding a kind means adding one class here and registering it in ``KINDS``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from bertprune.onnx.interface import LOGITS_OUTPUTS, QA_OUTPUTS


class TaskKind:
    """Base of the task kinds; subclasses set the class attributes and implement ``loss``/``score``."""

    name: ClassVar[str]
    head: ClassVar[str]  # Hugging Face class suffix: AutoModel<head>
    metrics: ClassVar[tuple[str, ...]]  # metric keys a scored run reports, the primary one first
    higher_is_better: ClassVar[bool]
    onnx_outputs: ClassVar[tuple[str, ...]]  # MLPerf interface outputs, in graph order
    label_dtype: ClassVar[Any] = np.int64
    # True: the sequence length is part of the interface (SQuAD's 384); False: dynamic, may be trimmed
    fixed_seq_len: ClassVar[bool] = False
    # True: the model's number of labels comes from the task (a head is sized by num_labels)
    sized_head: ClassVar[bool] = True

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    def auto_model_class(self):
        import transformers

        return getattr(transformers, f"AutoModel{self.head}")

    def check_num_labels(self, task_name: str, num_labels: int) -> None:
        """Raise when ``num_labels`` does not fit the kind."""

    def loss(self, outputs, batch: dict) -> torch.Tensor:
        """The task loss of a Hugging Face forward's ``outputs`` on ``batch`` (a scalar)."""
        raise NotImplementedError

    def graph_outputs(self, outputs) -> tuple[torch.Tensor, ...]:
        """The Hugging Face ``outputs`` as the ONNX graph returns them (``onnx_outputs`` order)."""
        return (outputs.logits,)

    def stack_outputs(self, arrays: list[np.ndarray]) -> np.ndarray:
        """ONNX Runtime outputs (``onnx_outputs`` order) -> one float32 array per sample row, the shape
        LoadGen logs and ``score`` reads: ``[N, num_labels]`` (text kinds) or ``[N, seq, 2]`` (qa)."""
        return np.ascontiguousarray(arrays[0], dtype=np.float32)

    def score(self, outputs: np.ndarray, labels: np.ndarray | None = None, examples=None, squad=None) -> dict:
        """Metrics of ``outputs`` (see ``stack_outputs``) against the references: ``labels [N]`` for
        the text kinds; the SQuAD ``examples`` and their ``squad`` features for qa."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<task kind {self.name}>"


class Classification(TaskKind):
    name = "classification"
    head = "ForSequenceClassification"
    metrics = ("accuracy",)
    higher_is_better = True
    onnx_outputs = LOGITS_OUTPUTS

    def check_num_labels(self, task_name: str, num_labels: int) -> None:
        if num_labels < 2:
            raise ValueError(f"task {task_name}: classification needs num_labels >= 2, got {num_labels}")

    def loss(self, outputs, batch):
        return torch.nn.functional.cross_entropy(outputs.logits, batch["labels"])

    def score(self, outputs, labels=None, examples=None, squad=None):
        """``{"accuracy": %}``; outputs ``[N, num_labels]``, labels ``[N]`` class ids."""
        outputs, labels = _np(outputs), _np(labels)
        return {"accuracy": 100.0 * float(np.mean(outputs.argmax(axis=-1) == labels))}


class Regression(TaskKind):
    name = "regression"
    head = "ForSequenceClassification"  # a 1-output head; HF picks MSE from num_labels == 1
    metrics = ("mse",)
    higher_is_better = False
    onnx_outputs = LOGITS_OUTPUTS
    label_dtype = np.float32

    def check_num_labels(self, task_name: str, num_labels: int) -> None:
        if num_labels != 1:
            raise ValueError(f"task {task_name}: regression needs num_labels == 1, got {num_labels}")

    def loss(self, outputs, batch):
        return torch.nn.functional.mse_loss(outputs.logits.squeeze(-1), batch["labels"].float())

    def score(self, outputs, labels=None, examples=None, squad=None):
        """``{"mse": ...}``; outputs ``[N, 1]``, labels ``[N]`` floats."""
        outputs, labels = _np(outputs), _np(labels)
        return {"mse": float(np.mean((outputs[:, 0] - labels) ** 2))}


class QuestionAnswering(TaskKind):
    name = "qa"
    head = "ForQuestionAnswering"
    metrics = ("f1", "exact_match")
    higher_is_better = True
    onnx_outputs = QA_OUTPUTS
    fixed_seq_len = True
    sized_head = False  # start/end logits: the head has 2 outputs whatever num_labels says

    def loss(self, outputs, batch):
        ce = torch.nn.functional.cross_entropy
        return 0.5 * (ce(outputs.start_logits, batch["start_positions"]) + ce(outputs.end_logits, batch["end_positions"]))

    def graph_outputs(self, outputs):
        return outputs.start_logits, outputs.end_logits

    def stack_outputs(self, arrays):
        return np.ascontiguousarray(np.stack(arrays[:2], axis=-1), dtype=np.float32)

    def score(self, outputs, labels=None, examples=None, squad=None):
        """Official SQuAD v1.1 ``{"exact_match": %, "f1": %, "total": n, "targets": ...}`` after MLPerf's
        n-best decoding; outputs ``[N, seq, 2]`` (start, end logits) for the rows of ``squad``."""
        from bertprune.tasks.squad import MLPERF_BERT, postprocess, squad_v1_metrics, target_report

        if examples is None or squad is None:
            raise ValueError("question-answering metrics need the SQuAD examples and the features they made")
        outputs = _np(outputs)
        preds = postprocess(examples, squad, outputs[..., 0], outputs[..., 1],
                            n_best_size=MLPERF_BERT["n_best_size"], max_answer_length=MLPERF_BERT["max_answer_length"])
        m = squad_v1_metrics(preds, examples)
        return {"exact_match": m["exact_match"], "f1": m["f1"], "total": m["total"], "targets": target_report(m["f1"])}


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


KINDS: dict[str, TaskKind] = {k.name: k() for k in (Classification, Regression, QuestionAnswering)}


def get_kind(kind: str | TaskKind) -> TaskKind:
    """The kind object for a ``task.kind`` value; one clear error for an unknown one."""
    if isinstance(kind, TaskKind):
        return kind
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"task.kind={kind!r} is not one of {tuple(KINDS)}") from None
