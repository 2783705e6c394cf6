"""Iterative, knowledge-preserving pruning (``method=iterative``): one sub-layer at a time, bottom-up.

For each sub-layer in order (layer 0's attention, layer 0's FFN, layer 1's attention, …):
  1. importance of every head and neuron not yet decided, measured on the *partly pruned and refitted*
     model (the Fisher of the masks, Σ_batches g², as the one-shot search; the first step reuses the
     pipeline's Fisher of the dense model);
  2. the global search of the cost model (``search_masks``: MACs or latency) over the whole model, with every
     sub-layer already decided held fixed, against the full budget: what is left of the budget is carried to
     the layers above, and the search never goes over it (the previous step's answer stays feasible);
  3. only the current sub-layer's part of that answer is kept (0 heads / 0 neurons allowed); with the dense
     per-batch gradients given (``rearrange``), which of its units are kept is rearranged, its count fixed;
  4. its output projection is refitted by ridge least squares so that it reproduces the dense model's
     sub-layer output on the pruned model's own inputs (``bertprune.core.reconstruct``), kept only where it
     lowers the held-out reconstruction error.
Units pruned in a lower layer change what the layers above receive, so their importance is re-measured
after every step: the knowledge lost below is what the upper sub-layers are chosen (and refitted) to keep.
Plain PyTorch; the cost models, calibration batches and physical pruning are the one-shot pipeline's.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from tqdm.auto import tqdm

from bertprune.core.fisher import freeze
from bertprune.core.kwon import tune_prefix
from bertprune.core.masks import MaskHooks, mask_shapes
from bertprune.core.method import (LastLayerTokens, MethodOutput, PruneContext, PruneMethod, check_choice,
                                   check_number, held_out_samples)
from bertprune.core.rearrange import rearrange_layer
from bertprune.core.reconstruct import LayerwiseReconstructor, ReconstructionReport
from bertprune.core.search import search_fixed
from bertprune.models import model_inputs
from bertprune.models.adapters import adapter_for
from bertprune.tasks.kinds import TaskKind

log = logging.getLogger(__name__)


class FromLayer:
    """Within the block, ``model``'s forward runs its encoder from layer ``start`` on ``hidden`` ``[b, s, d]`` (the
    layers below and their input are skipped; the embeddings still run and are discarded). The layers' outputs,
    the head and the loss are those of the whole model whenever ``hidden`` is what the lower layers give."""

    def __init__(self, model, start: int, hidden: torch.Tensor):
        self.encoder = adapter_for(model).encoder(model)
        self.start, self.hidden = start, hidden

    def __enter__(self):
        self.saved = self.encoder.layer
        self.encoder.layer = torch.nn.ModuleList(list(self.saved)[self.start:])

        def hook(_module, args, kwargs):
            if args:
                return (self.hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": self.hidden}

        self.handle = self.encoder.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        self.encoder.layer = self.saved


def mask_importance(model, head_mask: torch.Tensor, neuron_mask: torch.Tensor, batches: list[dict], kind: TaskKind,
                    device, start: int = 0, hidden: list[torch.Tensor] | None = None, per_batch_row: int | None = None):
    """``(head [L, H], neuron [L, F])``: Σ_batches (∂ loss / ∂ mask)² at the given masks (a masked model's Fisher).
    With ``hidden`` (each batch's input to layer ``start``) only layers ``start``… run: rows below stay 0.
    With ``per_batch_row``, also that layer's per-batch gradients ``([N, H], [N, F])`` (for rearrangement)."""
    hm = head_mask.detach().clone().float().to(device).requires_grad_(True)
    nm = neuron_mask.detach().clone().float().to(device).requires_grad_(True)
    acc_h, acc_n = torch.zeros_like(hm), torch.zeros_like(nm)
    rows_h, rows_n = [], []
    with torch.enable_grad(), MaskHooks(model, hm, nm):
        for i, batch in enumerate(batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            with FromLayer(model, start, hidden[i]) if hidden is not None else contextlib.nullcontext():
                loss = kind.loss(model(**model_inputs(model, batch)), batch)
            gh, gn = torch.autograd.grad(loss, (hm, nm), allow_unused=True)
            gh = torch.zeros_like(hm) if gh is None else gh.detach()
            gn = torch.zeros_like(nm) if gn is None else gn.detach()
            acc_h += gh.pow(2)
            acc_n += gn.pow(2)
            if per_batch_row is not None:
                rows_h.append(gh[per_batch_row])
                rows_n.append(gn[per_batch_row])
    if per_batch_row is not None:
        return acc_h, acc_n, (torch.stack(rows_h), torch.stack(rows_n))
    return acc_h, acc_n


@dataclass
class IterativeReport:
    """Per step (sub-layer): the units it kept, the budget left, the importance pass's time; the refits."""

    steps: list[dict] = field(default_factory=list)
    reconstruction: ReconstructionReport = field(default_factory=ReconstructionReport)


def prune_iterative(model, fit_batches: list[dict], held_out: list[dict], kind: TaskKind, cost, constraint: float,
                    head_importance: torch.Tensor, neuron_importance: torch.Tensor, importance_batches: int,
                    damping: float = 1e-2, last_layer_tokens: str = "all", device="cpu", progress: bool = True,
                    head_grads: torch.Tensor | None = None, neuron_grads: torch.Tensor | None = None):
    """``(work, head_mask [L, H], neuron_mask [L, F], IterativeReport)``: binary masks within ``constraint`` of
    ``cost`` and ``work``, a copy of the dense frozen ``model`` with the refitted output projections the masks
    apply to. head/neuron_importance: the dense model's Fisher (the first step's importance);
    importance_batches: how many of the first fit batches the later importance passes use (they run from the
    current layer up, on the pruned model's own hidden states there). head/neuron_grads: the dense model's
    per-batch mask gradients ``[N, L, H]`` / ``[N, L, F]``; given, each step's kept count is rearranged (which
    units of the sub-layer, ``rearrange_layer`` on that step's per-batch gradients), as the one-shot pipeline's
    rearrangement does for every layer at once."""
    freeze(model)
    work = freeze(copy.deepcopy(model))
    (L, H), (_, F) = mask_shapes(model)
    head_mask = torch.ones(L, H, device=device)
    neuron_mask = torch.ones(L, F, device=device)
    head_fixed = torch.zeros(L, dtype=torch.bool)
    neuron_fixed = torch.zeros(L, dtype=torch.bool)
    rec = LayerwiseReconstructor(model, work, fit_batches, held_out, damping, last_layer_tokens, device)
    report = IterativeReport(reconstruction=rec.report)
    h_imp, n_imp = head_importance.to(device), neuron_importance.to(device)
    bar = tqdm(total=2 * L, desc="iterative", disable=not progress)
    for li in range(L):
        for part in ("heads", "neurons"):
            t = time.perf_counter()
            rearrange = head_grads is not None and neuron_grads is not None
            if li or part == "neurons":  # the first step reads the given (dense) Fisher
                k = max(1, min(importance_batches, len(fit_batches)))
                out = mask_importance(work, head_mask, neuron_mask, fit_batches[:k], kind, device, start=li,
                                      hidden=[st["s"] for st in rec.fit[:k]], per_batch_row=li if rearrange else None)
                h_imp, n_imp = out[:2]
                row_grads = out[2] if rearrange else None
            elif rearrange:
                row_grads = (head_grads[:, li].to(device), neuron_grads[:, li].to(device))
            t_imp = time.perf_counter() - t
            h_new, n_new = search_fixed(h_imp, n_imp, constraint, cost, head_mask, neuron_mask, head_fixed, neuron_fixed)
            if rearrange:  # which units of this sub-layer, its count fixed (cost unchanged)
                if part == "heads":
                    h_new[li] = rearrange_layer(h_new[li].cpu(), row_grads[0].cpu()).to(h_new.device)
                else:
                    n_new[li] = rearrange_layer(n_new[li].cpu(), row_grads[1].cpu()).to(n_new.device)
            if part == "heads":
                head_mask[li] = h_new[li]
                head_fixed[li] = True
                entry = rec.attention(li, head_mask[li])
            else:
                neuron_mask[li] = n_new[li]
                neuron_fixed[li] = True
                entry = rec.ffn(li, neuron_mask[li])
            report.steps.append({"layer": li, "part": part, "kept": int(entry["kept"]),
                                 "planned_heads": int((h_new != 0).sum()), "planned_neurons": int((n_new != 0).sum()),
                                 "importance_s": t_imp, "refit": entry["status"]})
            bar.update(1)
            bar.set_postfix(layer=li, part=part, kept=int(entry["kept"]))
    bar.close()
    return work, head_mask, neuron_mask, report


@dataclass(frozen=True)
class Iterative(PruneMethod):
    """The default method (``method=iterative``); its options are ``method.<field>``."""

    name = "iterative"
    importance_samples: int = 512  # calibration samples of each re-measured importance (a prefix of the fit ones)
    damping: float = 1e-3  # ridge of each refit toward the dense weights (relative to the mean diagonal of xᵀx)
    last_layer_tokens: LastLayerTokens = LastLayerTokens.cls  # the last FFN refitted on the token the head reads
    rearrange: bool = False  # rearrange each step's sub-layer (which units, count fixed); measured no better
    held_out_samples: Optional[int] = None  # samples held out to check each refit; null: min(256, num_samples // 8)

    def __post_init__(self) -> None:
        check_choice("last_layer_tokens", self.last_layer_tokens, LastLayerTokens)
        check_number("importance_samples", self.importance_samples, 1, int,
                     " (each re-measured importance needs calibration samples)")
        check_number("damping", self.damping, 0.0, why=" (a ridge toward the dense weights; negative is meaningless)")
        if self.held_out_samples is not None:
            check_number("held_out_samples", self.held_out_samples, 1, int, " (or null: min(256, num_samples // 8))")

    def held_out(self, num_samples: int) -> int:
        return held_out_samples(num_samples, self.held_out_samples)

    def prune(self, ctx: PruneContext) -> MethodOutput:
        fisher = ctx.fisher()
        grads = {"head_grads": fisher["head_grads"], "neuron_grads": fisher["neuron_grads"]} if self.rearrange else {}
        work, head_mask, neuron_mask, report = ctx.timed(
            "iterative", prune_iterative, ctx.model, ctx.fit_batches, ctx.held_out, ctx.kind, ctx.cost,
            ctx.constraint, fisher["head_importance"].to(ctx.device), fisher["neuron_importance"].to(ctx.device),
            len(tune_prefix(ctx.fit_batches, self.importance_samples)), damping=self.damping,
            last_layer_tokens=str(self.last_layer_tokens) if ctx.kind.reads_cls else "all", device=ctx.device,
            progress=ctx.progress, **grads)
        ctx.stage("iterative", work, head_mask, neuron_mask)
        return MethodOutput(work, head_mask, neuron_mask,
                            {"iterative": report, "reconstruction": report.reconstruction})
