"""Plain-PyTorch evaluation of a (masked or pruned) model on a task's validation split; the metrics
are the task kind's (``bertprune.tasks.kinds``)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from bertprune.models import model_inputs
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
    from bertprune.tasks.features import stack_rows

    was_training = model.training
    model.eval()
    outs = []
    for i in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False):
        batch = {k: v.to(device) for k, v in stack_rows(rows[i:i + batch_size]).items()}
        start, end = kind.graph_outputs(model(**model_inputs(model, batch)))
        outs.append(torch.stack([start, end], dim=-1).float().cpu())
    model.train(was_training)
    return torch.cat(outs)
