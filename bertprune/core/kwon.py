"""``method=kwon``: the paper's one-shot pipeline (Kwon et al., NeurIPS 2022): Fisher -> search -> rearrange -> tune.

The search keeps the most important heads and neurons within the budget (``core/search.py``); rearrangement
swaps units inside each layer, their count fixed (``core/rearrange.py``); tuning fits the kept units' output:
``tuning=scales`` one scale per kept unit by damped least squares (the paper's mask tuning, ``core/tuning.py``),
``tuning=projection`` the whole attention / FFN output projections by ridge least squares (``core/reconstruct.py``,
checked on held-out calibration samples), ``tuning=none`` no fit. ``guard=true`` keeps rearrangement and
tuning, layer by layer, only where they lower the task loss on the held-out samples (``core/guard.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from bertprune.core.guard import Guard
from bertprune.core.masks import ones_masks
from bertprune.core.method import (LastLayerTokens, MethodOutput, PruneContext, PruneMethod, check_choice,
                                   check_number, held_out_samples)
from bertprune.core.rearrange import rearrange_masks
from bertprune.core.reconstruct import reconstruct
from bertprune.core.search import search_masks
from bertprune.core.tuning import tune_masks


class Tuning(StrEnum):
    scales = "scales"  # one scale per kept head / neuron (the paper's mask tuning)
    projection = "projection"  # the whole output projections refitted by ridge least squares
    none = "none"  # no tuning


class TuningTeacher(StrEnum):
    sqrt = "sqrt"  # the search mask at constraint √C (the paper's code)
    dense = "dense"  # the unpruned model


def tune_prefix(batches: list[dict], num_samples: int) -> list[dict]:
    """The shortest prefix of ``batches`` holding ``num_samples`` samples (all of them if fewer)."""
    out, n = [], 0
    for b in batches:
        if n >= num_samples:
            break
        out.append(b)
        n += len(b["input_ids"])
    return out


@dataclass(frozen=True)
class Kwon(PruneMethod):
    """The paper's pipeline; its options are ``method.<field>`` with ``method=kwon``."""

    name = "kwon"
    rearrange: bool = True  # which units of each layer, their count fixed (costs nothing in MACs)
    tuning: Tuning = Tuning.scales
    tuning_teacher: TuningTeacher = TuningTeacher.sqrt  # tuning=scales: what the fits match
    tuning_samples: int = 512  # calibration samples (a prefix of the fit batches) of the least-squares fits
    damping: float = 1e-2  # ridge of the fits (toward 1 for scales, toward the dense weights for projection)
    max_scale: float = 10.0  # tuning=scales: larger |scale| = failed solve: re-damp, else keep the binary mask
    last_layer_tokens: LastLayerTokens = LastLayerTokens.all  # the last layer's FFN fitted on every token / [CLS]
    guard: bool = False  # keep rearrangement / tuning per layer only where they lower the held-out loss
    held_out_samples: Optional[int] = None  # guard / projection: samples held out; null: min(256, num_samples // 8)

    def __post_init__(self) -> None:
        check_choice("tuning", self.tuning, Tuning)
        check_choice("tuning_teacher", self.tuning_teacher, TuningTeacher)
        check_choice("last_layer_tokens", self.last_layer_tokens, LastLayerTokens)
        check_number("tuning_samples", self.tuning_samples, 1, int, " (to skip tuning set method.tuning=none)")
        check_number("damping", self.damping, 0.0, why=" (a ridge; negative damping gives meaningless fits)")
        check_number("max_scale", self.max_scale, 1.0, why=" (the bound on |scale|: scales near 1 must pass)")
        if self.held_out_samples is not None:
            check_number("held_out_samples", self.held_out_samples, 1, int, " (or null: min(256, num_samples // 8))")

    def held_out(self, num_samples: int) -> int:
        if self.guard or self.tuning == Tuning.projection:
            return held_out_samples(num_samples, self.held_out_samples)
        return 0

    def prune(self, ctx: PruneContext) -> MethodOutput:
        model, fisher = ctx.model, ctx.fisher()
        head_imp, neuron_imp = fisher["head_importance"].to(ctx.device), fisher["neuron_importance"].to(ctx.device)
        guard = Guard(model, ctx.kind, ctx.held_out, ctx.device) if self.guard else None
        last_tokens = str(self.last_layer_tokens) if ctx.kind.reads_cls else "all"
        masked_model = model

        head_mask, neuron_mask = ctx.timed("search", search_masks, head_imp, neuron_imp, ctx.constraint, ctx.cost)
        if guard is not None:
            guard.baseline("search", head_mask, neuron_mask)
        ctx.stage("search", masked_model, head_mask, neuron_mask)

        def guarded(name: str, before, after):
            return after if guard is None else ctx.timed(f"guard_{name}", guard.check, name, before, after)

        if self.rearrange:
            before = (head_mask, neuron_mask)
            head_mask, neuron_mask = ctx.timed("rearrange", lambda: (
                rearrange_masks(head_mask, fisher["head_grads"]), rearrange_masks(neuron_mask, fisher["neuron_grads"])))
            head_mask, neuron_mask = guarded("rearrange", before, (head_mask, neuron_mask))
            ctx.stage("rearrange", masked_model, head_mask, neuron_mask)

        reports = {}
        fit = tune_prefix(ctx.fit_batches, self.tuning_samples)
        if self.tuning == Tuning.projection:
            before = (head_mask, neuron_mask)
            work, head_mask, neuron_mask, reports["reconstruction"] = ctx.timed(
                "tune", reconstruct, model, head_mask, neuron_mask, fit, ctx.held_out, damping=self.damping,
                last_layer_tokens=last_tokens, device=ctx.device, progress=ctx.progress)
            # the refit is weights, not masks: kept or rolled back as a whole
            if guard is None or ctx.timed("guard_tune", guard.check_model, "tune", work, (head_mask, neuron_mask),
                                          before):
                masked_model = work
            else:
                head_mask, neuron_mask = before
            ctx.stage("tune", masked_model, head_mask, neuron_mask)
        elif self.tuning == Tuning.scales:
            if self.tuning_teacher == TuningTeacher.sqrt:
                t_head, t_neuron = search_masks(head_imp, neuron_imp, math.sqrt(ctx.constraint), ctx.cost)
            else:
                t_head, t_neuron = ones_masks(model, ctx.device)
            before = (head_mask, neuron_mask)
            head_mask, neuron_mask, reports["tune"] = ctx.timed(
                "tune", tune_masks, model, head_mask, neuron_mask, t_head, t_neuron, fit, damping=self.damping,
                max_scale=self.max_scale, device=ctx.device, progress=ctx.progress, last_layer_tokens=last_tokens)
            head_mask, neuron_mask = guarded("tune", before, (head_mask, neuron_mask))
            ctx.stage("tune", masked_model, head_mask, neuron_mask)
        if guard is not None:
            reports["guard"] = guard.report
        return MethodOutput(masked_model, head_mask, neuron_mask, reports)
