"""Plain-PyTorch evaluation of a (masked or pruned) model on a task's validation split."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def predict_logits(model, loader, device="cpu", progress: bool = False, desc: str = "eval"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N, num_labels]`` and labels ``[N]`` over a loader (model in eval mode)."""
    was_training = model.training
    model.eval()
    outs, labels = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        batch = {k: v.to(device) for k, v in batch.items()}
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        outs.append(model(**inputs).logits.float().cpu())
        labels.append(batch["labels"].cpu())
    model.train(was_training)
    return torch.cat(outs), torch.cat(labels)


def metrics_from_logits(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """``{"accuracy": %}`` for classification, ``{"mse": ...}`` for regression."""
    if kind == "regression":
        return {"mse": float(((logits.squeeze(-1) - labels.float()) ** 2).mean())}
    return {"accuracy": 100.0 * float((logits.argmax(-1) == labels).float().mean())}


def evaluate(model, loader, kind: str, device="cpu", progress: bool = False, desc: str = "eval") -> dict:
    logits, labels = predict_logits(model, loader, device, progress, desc)
    return metrics_from_logits(kind, logits, labels)


def primary_metric(kind: str) -> str:
    return "mse" if kind == "regression" else "accuracy"
