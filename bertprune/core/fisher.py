"""Fisher information of the masks (plain PyTorch).

For each calibration mini-batch the task kind's loss (``TaskKind.loss``) is back-propagated to the
head and neuron masks (weights frozen, eval mode); the per-batch gradients are kept (mask
rearrangement needs them) and the importance of a unit is the sum over batches of g² (the diagonal
of the empirical Fisher).
"""

from __future__ import annotations

import torch

from bertprune.core.masks import MaskHooks, ones_masks
from bertprune.models import model_inputs
from bertprune.tasks.kinds import TaskKind, get_kind


class FisherAccumulator:
    """Collects per-batch mask gradients of one model (SparseGPT-style: ``add_batch`` then read)."""

    def __init__(self, model, kind: str | TaskKind, num_batches: int, device=None):
        self.model, self.kind = model, get_kind(kind)
        self.head_mask, self.neuron_mask = ones_masks(model, device)
        L, H = self.head_mask.shape
        F = self.neuron_mask.shape[1]
        # Per-batch gradients in global batch order: ranks fill their own slots, the rest stay 0,
        # so an all-reduce SUM yields the full set.
        self.head_grads = torch.zeros(num_batches, L, H, device=device)
        self.neuron_grads = torch.zeros(num_batches, L, F, device=device)
        self.seen = torch.zeros(num_batches, device=device)

    def add_batch(self, batch: dict, batch_index: int) -> None:
        """Back-propagate the task loss of one batch to the masks and store its gradients."""
        self.head_mask.requires_grad_(True)
        self.neuron_mask.requires_grad_(True)
        self.head_mask.grad = self.neuron_mask.grad = None
        with torch.enable_grad(), MaskHooks(self.model, self.head_mask, self.neuron_mask):
            outputs = self.model(**model_inputs(self.model, batch))
            loss = self.kind.loss(outputs, batch)
            head_g, neuron_g = torch.autograd.grad(loss, (self.head_mask, self.neuron_mask))
        self.head_grads[batch_index] = head_g.detach()
        self.neuron_grads[batch_index] = neuron_g.detach()
        self.seen[batch_index] += 1

    @property
    def head_importance(self) -> torch.Tensor:
        """``[L, H]`` Σ_batches g²."""
        return self.head_grads.pow(2).sum(0)

    @property
    def neuron_importance(self) -> torch.Tensor:
        """``[L, F]`` Σ_batches g²."""
        return self.neuron_grads.pow(2).sum(0)


def freeze(model):
    """Weights frozen and dropout off: only the masks receive gradients."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def check_importance(head_importance: torch.Tensor, neuron_importance: torch.Tensor) -> None:
    """NaN/inf importances mean the calibration forward/backward broke: stop with one clear error."""
    for name, t in (("head", head_importance), ("neuron", neuron_importance)):
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise FloatingPointError(
                f"{bad} {name} importances are NaN/inf: the model produced non-finite gradients on the calibration "
                "data (corrupt weights, or fp16 overflow). Check the checkpoint / use precision=32-true.")
    if head_importance.sum() == 0 and neuron_importance.sum() == 0:
        raise FloatingPointError("all importances are zero: the masks received no gradient (is the loss constant?)")


def collect_fisher(model, batches, kind: str | TaskKind, device="cpu", progress: bool = True) -> FisherAccumulator:
    """Single-process Fisher over an iterable of padded batches (dicts with inputs ``[B, T]`` and labels ``[B]``):
    per-batch mask gradients ``head_grads [N, L, H]`` / ``neuron_grads [N, L, F]`` for ``N`` batches."""
    from tqdm.auto import tqdm

    batches = list(batches)
    acc = FisherAccumulator(freeze(model), kind, len(batches), device)
    for i, batch in enumerate(tqdm(batches, desc="fisher", disable=not progress)):
        acc.add_batch({k: v.to(device) for k, v in batch.items()}, i)
    return acc
