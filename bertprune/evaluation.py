"""Evaluation of a (masked or pruned) model on a task's validation split, and one evaluator per kind of task data.

``predict_logits`` / ``evaluate`` / ``predict_spans``: plain-PyTorch passes over a loader or feature rows; the
metrics are the task kind's (``bertprune.tasks.kinds``). ``TextEvaluator``: labelled text (classification,
regression): tokenized rows, the task's metrics on the validation logits. ``SpanEvaluator``: question
answering: SQuAD training features with answer positions, the dev features' start/end logits decoded as MLPerf
does (n-best), the official SQuAD EM/F1. ``evaluator_for`` picks the one the task's kind reads: the training
rows the calibration batches are drawn from, how they are collated, and how a model is scored.

Above ``models`` and ``tasks`` (it runs a model on a task's data), below ``core``'s callers and ``onnx``.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from bertprune.models import model_inputs
from bertprune.tasks.data import Task, average_token_length, load_task_data, make_loader, tokenize
from bertprune.tasks.features import squad_data, stack_rows
from bertprune.tasks.kinds import TaskKind, score


@torch.no_grad()
def predict_logits(model, loader, device="cpu", progress: bool = False, desc: str = "eval"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N, num_labels]`` and labels ``[N]`` over a loader (model in eval mode)."""
    was_training = model.training
    model.eval()
    outs, labels = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        batch = {k: v.to(device) for k, v in batch.items()}
        outs.append(model(**model_inputs(model, batch)).logits.float().cpu())
        labels.append(batch["labels"].cpu())
    model.train(was_training)
    return torch.cat(outs), torch.cat(labels)


def evaluate(model, loader, kind: str | TaskKind, device="cpu", progress: bool = False, desc: str = "eval",
             metrics=None) -> dict:
    """The kind's metrics (``TaskKind.score``: ``{"accuracy": %}``, ``{"mse": ...}``; or the named ``metrics``,
    a task's ``metric_names``) of ``model`` over ``loader``."""
    logits, labels = predict_logits(model, loader, device, progress, desc)
    return score(kind, logits, labels, metrics)


@torch.no_grad()
def predict_spans(model, kind, rows: list[dict], batch_size: int, device, desc: str = "eval") -> torch.Tensor:
    """Start/end logits ``[N, max_length, 2]`` (float32, CPU) of ``model`` over feature ``rows``, in order."""
    was_training = model.training
    model.eval()
    outs = []
    for i in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False):
        batch = {k: v.to(device) for k, v in stack_rows(rows[i:i + batch_size]).items()}
        start, end = kind.graph_outputs(model(**model_inputs(model, batch)))
        outs.append(torch.stack([start, end], dim=-1).float().cpu())
    model.train(was_training)
    return torch.cat(outs)


class TextEvaluator:
    """Labelled text: ``train_rows`` (tokenized, unpadded), ``collate`` (pads a list of rows into a batch)."""

    def __init__(self, task: Task, tokenizer, batch_size: int, device):
        self.task, self.device = task, device
        self.data = load_task_data(task)
        self.n_train = len(self.data["train"])
        self.tokenized = tokenize(self.data, task, tokenizer)
        self.train_rows = self.tokenized["train"]
        self.loader = make_loader(self.tokenized["validation"], tokenizer, int(batch_size))
        self.collate = self.loader.collate_fn

    def mean_tokens(self) -> float:
        """Average token count of the training rows (unpadded): the S of the MAC cost model."""
        return average_token_length(self.tokenized["train"])

    def predict(self, model, desc: str):
        """``(logits [N, num_labels], labels [N])`` of ``model`` over the validation split."""
        return predict_logits(model, self.loader, self.device, progress=True, desc=desc)

    def scores(self, outputs, labels) -> dict:
        return self.task.score(outputs, labels)

    def metrics(self, model, desc: str) -> dict:
        return evaluate(model, self.loader, self.task.task_kind, self.device, progress=True, desc=desc,
                        metrics=self.task.metrics)


class SpanEvaluator:
    """Question answering: SQuAD training features with answer positions; dev examples and features."""

    collate = staticmethod(stack_rows)

    def __init__(self, task: Task, tokenizer, batch_size: int, device):
        self.task, self.device, self.batch_size = task, device, int(batch_size)
        self.qa = squad_data(task, tokenizer)
        self.train_rows = self.qa.train
        self.n_train = len(self.qa.train)

    def mean_tokens(self) -> float:
        """Average real (unpadded) token count of the features: their input_mask."""
        return self.qa.mean_tokens

    def predict(self, model, desc: str):
        """``(start/end logits [N spans, max_length, 2], None)`` over the dev features, as the harness reads them."""
        return predict_spans(model, self.task.task_kind, self.qa.validation, self.batch_size, self.device, desc), None

    def scores(self, outputs, labels=None) -> dict:  # MLPerf's n-best decoding, then the official SQuAD EM/F1
        return self.task.score(outputs, examples=self.qa.examples, squad=self.qa.features)

    def metrics(self, model, desc: str) -> dict:
        return self.scores(*self.predict(model, desc))


def evaluator_for(task: Task, tokenizer, batch_size: int, device: torch.device | str):
    """The evaluator of ``task``'s kind (its data loaded and tokenized once)."""
    cls = TextEvaluator if task.task_kind.labelled_text else SpanEvaluator
    return cls(task, tokenizer, batch_size, device)
