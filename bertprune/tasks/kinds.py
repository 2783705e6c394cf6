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

from bertprune.interface import LOGITS_OUTPUTS, QA_OUTPUTS
from bertprune.tasks.metrics import METRICS


class TaskKind:
    """Base of the task kinds; subclasses set the class attributes and implement ``loss``/``score``."""

    name: ClassVar[str]
    head: ClassVar[str]  # Hugging Face class suffix: AutoModel<head>
    metrics: ClassVar[tuple[str, ...]]  # the default metric keys a scored run reports, the primary one first
    # every metric the kind can compute (``bertprune.tasks.metrics``); a task picks from these (task.metrics)
    available_metrics: ClassVar[tuple[str, ...]]
    higher_is_better: ClassVar[bool]  # of the default primary metric; per metric: ``METRICS[name].higher_is_better``
    onnx_outputs: ClassVar[tuple[str, ...]]  # MLPerf interface outputs, in graph order
    label_dtype: ClassVar[Any] = np.int64
    # True: the sequence length is part of the interface (SQuAD's 384); False: dynamic, may be trimmed
    fixed_seq_len: ClassVar[bool] = False
    # True: the model's number of labels comes from the task (a head is sized by num_labels)
    sized_head: ClassVar[bool] = True
    # True: rows are 1 or 2 text columns plus one label column (bertprune.tasks.data loads them);
    # False: the kind brings its own features (qa: bertprune.tasks.squad)
    labelled_text: ClassVar[bool] = True
    # True: the head reads only the first ([CLS]) token of the last layer (tuning may fit it on that token)
    reads_cls: ClassVar[bool] = True
    # Fisher / calibration batch of the paper's code (halved for large models: bertprune.jobs.prune)
    calibration_batch_size: ClassVar[int] = 32

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    def auto_model_class(self):
        import transformers

        return getattr(transformers, f"AutoModel{self.head}")

    def check_num_labels(self, task_name: str, num_labels: int) -> None:
        """Raise when ``num_labels`` does not fit the kind."""

    def check_metrics(self, task_name: str, metrics, num_labels: int = 2) -> None:
        """Raise one clear error when ``metrics`` (a task's ``metrics`` list) names one the kind cannot compute."""
        if metrics is not None and not metrics:
            raise ValueError(f"task {task_name}: task.metrics is empty; name at least one of {self.available_metrics} "
                             "(the primary one first) or leave it null for the kind's default")
        bad = [m for m in metrics or () if m not in self.available_metrics]
        if bad:
            raise ValueError(f"task {task_name}: task.metrics names {bad}, which a {self.name} task cannot compute; "
                             f"choose from {self.available_metrics}")

    def _score_text(self, pred: np.ndarray, labels, metrics) -> dict:
        """``{name: value}`` of ``metrics`` (default: the kind's) on predictions ``pred [N]`` and ``labels [N]``."""
        labels = _np(labels)
        return {m: METRICS[m].fn(pred, labels) for m in (metrics or self.metrics)}

    def loss(self, outputs, batch: dict) -> torch.Tensor:
        """The task loss of a Hugging Face forward's ``outputs`` on ``batch`` (a scalar)."""
        raise NotImplementedError

    # ---- labelled text rows (``labelled_text`` kinds)
    def label_rule(self, num_labels: int) -> str:
        """What a label of this kind is, for error messages."""
        raise NotImplementedError(f"{self.name} has no label column")

    def label_problem(self, y, num_labels: int) -> str | None:
        """Why one label ``y`` (as read from a data file) does not fit the kind, with the fix; None if it fits."""
        import math

        expected = self.label_rule(num_labels)
        if y is None or (isinstance(y, float) and math.isnan(y)):
            return f"the label is empty; {expected}: fill it in or drop that row"
        if isinstance(y, (str, bool, np.bool_)) or not isinstance(y, (int, float, np.integer, np.floating)):
            return f"label {y!r} is a {type(y).__name__}; {expected}: convert the column"
        if not math.isfinite(y):
            return f"label {y!r} is not finite; {expected}: fix or drop that row"
        return None

    def check_labels(self, task_name: str, labels: list, num_labels: int) -> None:
        """Checks of a whole (valid-row) training label column; raise one clear error."""

    def cast_labels(self, dd):
        """The ``label`` column of a ``datasets.DatasetDict`` in the kind's dtype (a no-op by default)."""
        return dd

    def fit_metrics(self, num_labels: int, metrics=None) -> dict:
        """``{metric key: torchmetrics.Metric}`` of a fine-tuning validation pass (they sync across processes):
        the kind's default metrics plus the task's ``metrics``."""
        raise NotImplementedError

    def fit_metric_inputs(self, outputs, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predictions, targets)`` of one batch for ``fit_metrics``."""
        raise NotImplementedError

    def fit_metric_value(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """A computed torchmetrics value in the unit ``score`` reports (accuracy and F1 in %)."""
        return value

    def graph_outputs(self, outputs) -> tuple[torch.Tensor, ...]:
        """The Hugging Face ``outputs`` as the ONNX graph returns them (``onnx_outputs`` order)."""
        return (outputs.logits,)

    def stack_outputs(self, arrays: list[np.ndarray]) -> np.ndarray:
        """ONNX Runtime outputs (``onnx_outputs`` order) -> one float32 array per sample row, the shape
        LoadGen logs and ``score`` reads: ``[N, num_labels]`` (text kinds) or ``[N, seq, 2]`` (qa)."""
        return np.ascontiguousarray(arrays[0], dtype=np.float32)

    def score(self, outputs: np.ndarray, labels: np.ndarray | None = None, examples=None, squad=None,
              metrics=None) -> dict:
        """Metrics of ``outputs`` (see ``stack_outputs``) against the references: ``labels [N]`` for
        the text kinds; the SQuAD ``examples`` and their ``squad`` features for qa. ``metrics``: the names
        to compute (a task's ``metric_names``); None = the kind's default ``metrics``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<task kind {self.name}>"


class Classification(TaskKind):
    name = "classification"
    head = "ForSequenceClassification"
    metrics = ("accuracy",)
    available_metrics = ("accuracy", "f1", "mcc")
    higher_is_better = True
    onnx_outputs = LOGITS_OUTPUTS

    def check_num_labels(self, task_name: str, num_labels: int) -> None:
        if num_labels < 2:
            raise ValueError(f"task {task_name}: {self.name} needs num_labels >= 2, got {num_labels}")

    def loss(self, outputs, batch):
        return torch.nn.functional.cross_entropy(outputs.logits, batch["labels"])

    def label_rule(self, num_labels):
        return f"labels are integer class ids 0..{num_labels - 1}"

    def label_problem(self, y, num_labels):
        problem = super().label_problem(y, num_labels)
        if problem:
            return problem
        expected = self.label_rule(num_labels)
        if float(y) != int(y):
            return f"label {y!r} is not an integer; {expected}: fix or drop that row"
        if not 0 <= int(y) < num_labels:
            return (f"label {y!r} is out of range for num_labels={num_labels}; {expected}: "
                    "fix that row, or set task.num_labels if the task has more classes")
        return None

    def check_labels(self, task_name, labels, num_labels):
        seen = int(max(labels)) + 1
        if seen != num_labels:
            raise ValueError(f"task {task_name}: num_labels={num_labels} but the training labels span "
                             f"{sorted(set(int(y) for y in labels))[:10]}; set task.num_labels={seen}")

    def cast_labels(self, dd):
        """Integral floats (a csv column with 1.0) -> int64 class ids."""
        import datasets

        return datasets.DatasetDict({split: ds if ds.features["label"].dtype == "int64"
                                     else ds.cast_column("label", datasets.Value("int64")) for split, ds in dd.items()})

    def check_metrics(self, task_name, metrics, num_labels=2):
        super().check_metrics(task_name, metrics, num_labels)
        if "f1" in (metrics or ()) and num_labels != 2:
            raise ValueError(f"task {task_name}: metric f1 is the binary F1 of class 1 (GLUE's MRPC/QQP) but "
                             f"num_labels={num_labels}; use accuracy or mcc")

    def fit_metrics(self, num_labels, metrics=None):
        from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MulticlassMatthewsCorrCoef

        build = {"accuracy": lambda: MulticlassAccuracy(num_classes=num_labels, average="micro"),
                 "f1": BinaryF1Score, "mcc": lambda: MulticlassMatthewsCorrCoef(num_classes=num_labels)}
        return {m: build[m]() for m in dict.fromkeys([*self.metrics, *(metrics or ())])}

    def fit_metric_inputs(self, outputs, batch):
        return outputs.logits.argmax(-1), batch["labels"]

    def fit_metric_value(self, key, value):
        return 100.0 * value if key in ("accuracy", "f1") else value

    def score(self, outputs, labels=None, examples=None, squad=None, metrics=None):
        """``{"accuracy": %}`` (or the named ``metrics``: f1 %, mcc); outputs ``[N, num_labels]``, labels ``[N]`` class ids."""
        return self._score_text(_np(outputs).argmax(axis=-1), labels, metrics)


class Regression(TaskKind):
    name = "regression"
    head = "ForSequenceClassification"  # a 1-output head; HF picks MSE from num_labels == 1
    metrics = ("mse",)
    available_metrics = ("mse", "pearson", "spearman")
    higher_is_better = False
    onnx_outputs = LOGITS_OUTPUTS
    label_dtype = np.float32

    def check_num_labels(self, task_name: str, num_labels: int) -> None:
        if num_labels != 1:
            raise ValueError(f"task {task_name}: {self.name} needs num_labels == 1, got {num_labels}")

    def loss(self, outputs, batch):
        return torch.nn.functional.mse_loss(outputs.logits.squeeze(-1), batch["labels"].float())

    def label_rule(self, num_labels):
        return "regression labels are finite numbers"

    def fit_metrics(self, num_labels, metrics=None):
        from torchmetrics import MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef

        build = {"mse": MeanSquaredError, "pearson": PearsonCorrCoef, "spearman": SpearmanCorrCoef}
        return {m: build[m]() for m in dict.fromkeys([*self.metrics, *(metrics or ())])}

    def fit_metric_inputs(self, outputs, batch):
        return outputs.logits.squeeze(-1), batch["labels"].float()

    def score(self, outputs, labels=None, examples=None, squad=None, metrics=None):
        """``{"mse": ...}`` (or the named ``metrics``: pearson, spearman); outputs ``[N, 1]``, labels ``[N]`` floats."""
        return self._score_text(_np(outputs)[:, 0], labels, metrics)


class QuestionAnswering(TaskKind):
    name = "qa"
    head = "ForQuestionAnswering"
    metrics = ("f1", "exact_match")
    available_metrics = ("f1", "exact_match")
    higher_is_better = True
    onnx_outputs = QA_OUTPUTS
    fixed_seq_len = True
    sized_head = False  # start/end logits: the head has 2 outputs whatever num_labels says
    labelled_text = False  # question + context features with answer spans: bertprune.tasks.squad
    reads_cls = False  # start/end logits are read at every token
    calibration_batch_size = 12  # the paper's SQuAD batch (384-token features)

    def loss(self, outputs, batch):
        ce = torch.nn.functional.cross_entropy
        return 0.5 * (ce(outputs.start_logits, batch["start_positions"]) + ce(outputs.end_logits, batch["end_positions"]))

    def graph_outputs(self, outputs):
        return outputs.start_logits, outputs.end_logits

    def stack_outputs(self, arrays):
        return np.ascontiguousarray(np.stack(arrays[:2], axis=-1), dtype=np.float32)

    hub_dataset: ClassVar[str] = "squad"  # datasets.load_dataset name of the task's SQuAD version
    # SQuAD v2.0's rule for predicting no answer (None: v1.1, every question has one)
    null_score_diff_threshold: ClassVar[float | None] = None

    def check_examples(self, examples, where: str) -> None:
        """One clear error when ``examples`` (dev questions read from ``where``) do not fit the SQuAD version."""
        empty = [ex.qas_id for ex in examples if not ex.answers]
        if empty:
            raise ValueError(f"{where}: {len(empty)} of {len(examples)} questions have no answer (e.g. {empty[0]!r}): "
                             "a SQuAD v2.0 file; SQuAD v1.1 (task=squad) needs an answer for every question. "
                             "Use task=squad_v2 for SQuAD v2.0, or give a v1.1 file.")

    def metric_values(self, predictions, examples) -> dict:
        from bertprune.tasks.squad import squad_v1_metrics, target_report

        m = squad_v1_metrics(predictions, examples)
        return {"exact_match": m["exact_match"], "f1": m["f1"], "total": m["total"], "targets": target_report(m["f1"])}

    def score(self, outputs, labels=None, examples=None, squad=None, metrics=None):
        """Official SQuAD ``{"exact_match": %, "f1": %, "total": n, ...}`` after MLPerf's n-best decoding (both
        metrics, whatever ``metrics`` says); outputs ``[N, seq, 2]`` (start, end logits) for the rows of ``squad``.
        v1.1 adds the MLPerf BERT targets; v2.0 its HasAns / NoAns breakdown."""
        from bertprune.tasks.squad import MLPERF_BERT, postprocess

        if examples is None or squad is None:
            raise ValueError("question-answering metrics need the SQuAD examples and the features they made")
        outputs = _np(outputs)
        preds = postprocess(examples, squad, outputs[..., 0], outputs[..., 1],
                            n_best_size=MLPERF_BERT["n_best_size"], max_answer_length=MLPERF_BERT["max_answer_length"],
                            null_score_diff_threshold=self.null_score_diff_threshold)
        return self.metric_values(preds, examples)


class QuestionAnsweringV2(QuestionAnswering):
    """SQuAD v2.0: questions may have no answer. The same model, loss (an unanswerable question's positions are
    [CLS], 0) and features as v1.1; decoding predicts "" when the [CLS] score wins (threshold 0, Google's
    ``run_squad.py``) and the metric is the official v2.0 one. Not an MLPerf task (no BERT-99 target)."""

    name = "qa_v2"
    hub_dataset = "squad_v2"
    null_score_diff_threshold = 0.0

    def check_examples(self, examples, where: str) -> None:
        return None  # answered and unanswerable questions are both v2.0

    def metric_values(self, predictions, examples) -> dict:
        from bertprune.tasks.squad import squad_v2_metrics

        return squad_v2_metrics(predictions, examples)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


KINDS: dict[str, TaskKind] = {k.name: k() for k in (Classification, Regression, QuestionAnswering,
                                                    QuestionAnsweringV2)}


def score(kind: str | TaskKind, outputs, labels=None, metrics=None, **references) -> dict:
    """``kind.score`` of ``outputs`` with the task's ``metrics`` (``task.metrics``); None: the kind's default,
    asked without a ``metrics`` argument (a kind's ``score`` may then take only the references)."""
    kind = get_kind(kind)
    if metrics is None:
        return kind.score(outputs, labels, **references)
    return kind.score(outputs, labels, metrics=tuple(metrics), **references)


def get_kind(kind: str | TaskKind) -> TaskKind:
    """The kind object for a ``task.kind`` value; one clear error for an unknown one."""
    if isinstance(kind, TaskKind):
        return kind
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"task.kind={kind!r} is not one of {tuple(KINDS)}") from None
