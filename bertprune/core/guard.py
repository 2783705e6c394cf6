"""No stage may silently make the model worse: every stage after the search (rearrangement, tuning) is kept
layer by layer only where it lowers the task loss on a held-out part of the calibration data.

The held-out batches (the last ``guard_samples`` of the calibration sample) feed nothing else: not the Fisher
importance, not rearrangement's gradients, not the tuning fits — and never the dev set, which would tune on
the test. After a stage, each layer (bottom-up) whose masks it changed is tried with its previous masks; the
previous ones stay when they give a lower held-out loss; if the stage is still worse than before, all of
it is rolled back. A layer's unit counts are the same before and after
either stage, so a rollback never changes the cost. Every rollback is reported (stage, layer, losses).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bertprune.core.masks import MaskHooks
from bertprune.models import model_inputs
from bertprune.tasks.kinds import TaskKind


def split_held_out(batches: list[dict], num_samples: int) -> tuple[list[dict], list[dict]]:
    """``(fit, held_out)``: the last whole batches holding at least ``num_samples`` samples are held out; at least
    one batch stays for fitting (one clear error otherwise)."""
    held, n = [], 0
    for b in reversed(batches):
        if n >= num_samples:
            break
        held.insert(0, b)
        n += len(b["input_ids"])
    if len(held) >= len(batches):
        raise ValueError(f"guard_samples={num_samples} would hold out all {len(batches)} calibration batches; "
                         "hold out fewer (e.g. 1/8 of num_samples) or raise num_samples")
    return batches[: len(batches) - len(held)], held


@dataclass
class GuardReport:
    """Held-out loss after each stage and every layer a stage was rolled back in."""

    losses: dict[str, float] = field(default_factory=dict)  # stage -> held-out loss of the kept masks
    rollbacks: list[dict] = field(default_factory=list)  # {"stage", "layer", "loss_with_stage", "loss_rolled_back"}


class Guard:
    """The held-out loss of masked versions of ``model`` (kind's loss, mean over the held-out samples)."""

    def __init__(self, model, kind: TaskKind, held_out: list[dict], device):
        self.model, self.kind, self.device = model, kind, device
        self.batches = held_out
        self.report = GuardReport()
        self.last: float | None = None  # held-out loss of the masks the last stage kept

    def baseline(self, stage: str, head_mask: torch.Tensor, neuron_mask: torch.Tensor) -> float:
        """Record the held-out loss of an unguarded stage's masks (the search's): the next stage's baseline."""
        self.last = self.report.losses[stage] = self.loss(head_mask, neuron_mask)
        return self.last

    @torch.no_grad()
    def loss(self, head_mask: torch.Tensor, neuron_mask: torch.Tensor, model=None) -> float:
        """Held-out loss of ``model`` (default: the guarded one) with the masks."""
        model = self.model if model is None else model
        total, n = 0.0, 0
        with MaskHooks(model, head_mask, neuron_mask):
            for batch in self.batches:
                batch = {k: v.to(self.device) for k, v in batch.items()}
                b = len(batch["input_ids"])
                total += float(self.kind.loss(model(**model_inputs(model, batch)), batch)) * b
                n += b
        return total / n

    def check_model(self, stage: str, work, after: tuple[torch.Tensor, torch.Tensor],
                    before: tuple[torch.Tensor, torch.Tensor]) -> bool:
        """A stage that changed weights (``work``, a refitted copy, with the masks ``after``): kept (True) only if
        its held-out loss is lower than ``before``'s on the guarded model; a rollback is of the whole stage."""
        current = self.loss(*after, model=work)
        base = self.loss(*before) if self.last is None else self.last
        if current > base:
            self.report.rollbacks.append({"stage": stage, "layer": "all", "loss_with_stage": current,
                                          "loss_rolled_back": base})
            self.last = self.report.losses[stage] = base
            return False
        self.last = self.report.losses[stage] = current
        return True

    def check(self, stage: str, before: tuple[torch.Tensor, torch.Tensor], after: tuple[torch.Tensor, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks ``after`` a stage with each layer rolled back to ``before`` where that lowers the held-out
        loss (layers bottom-up, greedily), and the whole stage rolled back if the result is still worse than
        ``before`` (whose loss is the last kept stage's, when recorded); ``[L, H]`` / ``[L, F]`` each. Never worse
        than before."""
        head, neuron = after[0].clone(), after[1].clone()
        current = self.loss(head, neuron)
        base = self.loss(*before) if self.last is None else self.last
        for li in range(head.shape[0]):
            if torch.equal(head[li], before[0][li]) and torch.equal(neuron[li], before[1][li]):
                continue
            trial_h, trial_n = head.clone(), neuron.clone()
            trial_h[li], trial_n[li] = before[0][li], before[1][li]
            loss = self.loss(trial_h, trial_n)
            if loss < current:
                self.report.rollbacks.append({"stage": stage, "layer": li, "loss_with_stage": current,
                                              "loss_rolled_back": loss})
                head, neuron, current = trial_h, trial_n, loss
        if current > base:  # the layers together still worse than before the stage: the whole stage goes
            self.report.rollbacks.append({"stage": stage, "layer": "all", "loss_with_stage": current,
                                          "loss_rolled_back": base})
            head, neuron, current = before[0].clone(), before[1].clone(), base
        self.last = self.report.losses[stage] = current
        return head, neuron
