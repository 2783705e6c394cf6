"""The pruning pipeline as one plain-PyTorch function: Fisher -> a pruning method -> physically smaller model.

``prune_model`` needs no Hydra, no Lightning and no files: a fine-tuned model, a list of padded
calibration batches, the task kind, a cost model, the constraint and a method (``bertprune.core.method``:
``Iterative``, the default, sub-layer by sub-layer with refits; ``Kwon``, the paper's search -> rearrange ->
tune). It is what ``prune.py`` runs (``bertprune.jobs.prune`` adds the checks, the teacher, the data, the
multi-process Fisher, the files and the callbacks around it) and what a notebook calls::

    from bertprune.core.cost import MacCost
    from bertprune.core.kwon import Kwon
    from bertprune.core.pipeline import prune_model

    result = prune_model(model, batches, "classification", MacCost.for_model(model, seq_len=40.0), 0.5)
    result.model        # the physically smaller model; result.mac_ratio <= 0.5
    paper = prune_model(model, batches, "classification", cost, 0.5, Kwon(tuning_samples=512))

Every step is logged when it starts and when it ends (``"<step> ..."`` / ``"<step> done in X s"``) and
timed into ``PruneResult.timings``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from bertprune.core.cost import LatencyCost, MacCost, mac_model
from bertprune.core.fisher import check_importance, collect_fisher, freeze
from bertprune.core.guard import GuardReport, split_held_out
from bertprune.core.iterative import Iterative, IterativeReport
from bertprune.core.masks import mask_shapes, ones_masks
from bertprune.core.method import PruneContext, PruneMethod
from bertprune.core.physical import prune_physically
from bertprune.core.reconstruct import ReconstructionReport
from bertprune.core.search import check_constraint, cost_ratio, mac_ratio
from bertprune.core.tuning import TuneReport
from bertprune.models import model_shape
from bertprune.tasks.kinds import TaskKind, get_kind

log = logging.getLogger(__name__)

FISHER_KEYS = ("head_importance", "neuron_importance", "head_grads", "neuron_grads")
# Timed steps that are not pruning work: evaluation passes and the masked-vs-pruned parity check.
NOT_PRUNING = ("eval_", "parity")


def pruning_time(timings: Mapping[str, float]) -> float:
    """Seconds of pruning proper: every timed step but the evaluation passes and the parity check."""
    return sum(v for k, v in timings.items() if not k.startswith(NOT_PRUNING))


@dataclass
class PruneResult:
    """What ``prune_model`` made: the physically pruned model and how it got there."""

    model: torch.nn.Module  # physically smaller, eval mode
    head_mask: torch.Tensor  # [L, H]: 0 = pruned, else the (tuned) scale of a kept head
    neuron_mask: torch.Tensor  # [L, F]
    heads_per_layer: list[int]
    ffn_per_layer: list[int]
    mac_ratio: float  # MACs of the pruned encoder / MACs of the dense one (<= constraint for cost=mac)
    macs: float
    dense_macs: float
    fisher: dict[str, torch.Tensor]  # head/neuron_importance [L, H]/[L, F], head/neuron_grads [N, L, H]/[N, L, F]
    timings: dict[str, float] = field(default_factory=dict)  # step -> wall seconds, in run order
    stage_metrics: dict[str, float] = field(default_factory=dict)  # stage -> evaluate(...) (when given)
    tune_report: TuneReport | None = None
    reconstruction_report: ReconstructionReport | None = None  # refitted projections (iterative, kwon projection)
    iterative_report: IterativeReport | None = None  # method=iterative: each sub-layer's step
    # the model the masks apply to: the input model, or a copy with refitted output projections
    masked_model: torch.nn.Module | None = None
    guard_report: GuardReport | None = None  # Kwon(guard=True): held-out losses and per-layer rollbacks
    method: str = "iterative"
    held_out_samples: int = 0  # calibration samples the method asked to hold out of everything else
    # the search's own cost model (for MACs the same as mac_ratio / macs / dense_macs; for latency, ms)
    cost_name: str = "mac"
    cost_ratio: float = math.nan
    cost_total: float = math.nan
    dense_cost_total: float = math.nan


FisherSource = Mapping[str, torch.Tensor] | Callable[[], Mapping[str, torch.Tensor]] | None


def timed(timings: dict[str, float], name: str, fn, *args, **kwargs):
    """Run one step with a log line at its start and at its end (with its wall time, kept in ``timings``)."""
    log.info("%s ...", name)
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    timings[name] = time.perf_counter() - t
    log.info("%s done in %.1f s", name, timings[name])
    return out


def prune_model(model, calibration_batches: list[dict], kind: str | TaskKind, cost: MacCost | LatencyCost,
                constraint: float, method: PruneMethod | None = None, fisher: FisherSource = None,
                evaluate: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, str], float] | None = None,
                device=None, progress: bool = True) -> PruneResult:
    """Prune a dense fine-tuned ``model`` of a supported family (``bertprune.models.adapters``) to
    ``constraint`` of its encoder's cost with ``method`` (default ``Iterative()``).

    calibration_batches: padded batches (``input_ids`` / ``attention_mask`` [/ ``token_type_ids``] ``[B, T]``
    and the kind's labels, e.g. ``labels [B]``), on any device; the last ``method.held_out(num_samples)``
    samples are held out of everything else (Fisher included) to check the method's fits. cost: the cost
    model the search budgets (``MacCost``: MACs of the encoder; ``LatencyCost``: predicted latency of the
    whole model, its ``mac`` model gives the MAC figures).
    fisher: None = computed here, in-process (``collect_fisher``), when the method asks for it; else the mask
    gradients already computed for every calibration batch (a mapping with ``FISHER_KEYS``, e.g. the
    multi-process Lightning run: cut to the fit batches here), or a callable returning them (called and timed
    as the ``fisher`` step). evaluate: ``(masked_model, head_mask [L, H], neuron_mask [L, F], stage) -> metric``,
    called at each stage the method reports (timed as ``eval_<stage>``); ``masked_model`` is ``model`` or the
    method's refitted copy the masks apply to.
    The model is frozen (weights need no gradient, eval mode) and left unpruned; the pruned one is a copy.
    """
    method = Iterative() if method is None else method
    if not isinstance(method, PruneMethod):
        raise TypeError(f"method={method!r} is not a bertprune.core.method.PruneMethod (e.g. Iterative(), Kwon())")
    kind = get_kind(kind)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    freeze(model)
    (L, H), (_, F) = mask_shapes(model)
    constraint = check_constraint(constraint, cost, L * H, L * F)
    timings: dict[str, float] = {}
    stage_metrics: dict[str, float] = {}
    num_samples = sum(len(b["input_ids"]) for b in calibration_batches)
    held = method.held_out(num_samples)
    fit_batches, held_out = split_held_out(calibration_batches, held) if held else (calibration_batches, [])

    def stage(name: str, masked_model, head_mask, neuron_mask) -> None:
        if evaluate is not None:
            stage_metrics[name] = timed(timings, f"eval_{name}", evaluate, masked_model, head_mask, neuron_mask, name)

    def fisher_source() -> dict:
        if fisher is None:
            grads = timed(timings, "fisher", collect_fisher, model, fit_batches, kind, device, progress=progress)
            out = {"head_importance": grads.head_importance, "neuron_importance": grads.neuron_importance,
                   "head_grads": grads.head_grads, "neuron_grads": grads.neuron_grads}
        else:
            out = dict(timed(timings, "fisher", fisher) if callable(fisher) else fisher)
        missing = [k for k in FISHER_KEYS if k not in out]
        if missing:
            raise ValueError(f"fisher lacks {missing}; give {FISHER_KEYS} (bertprune.lightning.fisher.load_fisher)")
        if held_out and len(out["head_grads"]) != len(fit_batches):  # held-out batches: out of Fisher too
            if len(out["head_grads"]) != len(calibration_batches):
                raise ValueError(f"fisher holds {len(out['head_grads'])} batches' gradients; expected one per "
                                 f"calibration batch ({len(calibration_batches)})")
            n = len(fit_batches)
            out.update(head_grads=out["head_grads"][:n], neuron_grads=out["neuron_grads"][:n])
            out.update(head_importance=out["head_grads"].pow(2).sum(0),
                       neuron_importance=out["neuron_grads"].pow(2).sum(0))
        check_importance(out["head_importance"], out["neuron_importance"])
        return out

    ctx = PruneContext(model=model, fit_batches=fit_batches, held_out=held_out, kind=kind, cost=cost,
                       constraint=constraint, device=device, progress=progress, timings=timings,
                       fisher_source=fisher_source, stage_fn=stage)
    out = method.prune(ctx)
    r = out.reports
    return _result(model, out.masked_model, out.head_mask, out.neuron_mask, cost, ctx._fisher or {}, timings,
                   stage_metrics, tune_report=r.get("tune"), reconstruction_report=r.get("reconstruction"),
                   iterative_report=r.get("iterative"), guard_report=r.get("guard"), method=method.name,
                   held_out_samples=held)


def _result(model, masked_model, head_mask, neuron_mask, cost, fisher, timings, stage_metrics, **reports) -> PruneResult:
    """---- 5. the physically smaller model (a copy of ``masked_model`` with the masks made permanent)."""
    (L, H), (_, F) = mask_shapes(model)
    pruned = timed(timings, "physical",
                   lambda: prune_physically(copy.deepcopy(masked_model), head_mask, neuron_mask).eval())
    heads, ffn = model_shape(pruned)
    mac = mac_model(cost)
    macs = (mac_ratio(head_mask, neuron_mask, mac), mac.encoder(sum(heads), sum(ffn)), mac.encoder(L * H, L * F)) \
        if mac is not None else (math.nan,) * 3
    return PruneResult(model=pruned, head_mask=head_mask, neuron_mask=neuron_mask, heads_per_layer=heads,
                       ffn_per_layer=ffn, mac_ratio=macs[0], macs=macs[1], dense_macs=macs[2],
                       fisher=fisher, timings=timings, stage_metrics=stage_metrics, cost_name=cost.name,
                       cost_ratio=cost_ratio(head_mask, neuron_mask, cost), cost_total=cost.total(heads, ffn),
                       dense_cost_total=cost.total([H] * L, [F] * L), masked_model=masked_model, **reports)


def unpruned_result(model, cost: MacCost) -> PruneResult:
    """The ``PruneResult`` of no structured pruning: a frozen copy of ``model``, all-ones masks, MAC ratio 1
    (what an unstructured-only run, ``structured=false``, starts from)."""
    freeze(model)
    head_mask, neuron_mask = ones_masks(model)
    (L, H), (_, F) = mask_shapes(model)
    heads, ffn = model_shape(model)
    dense = cost.encoder(L * H, L * F)
    return PruneResult(model=copy.deepcopy(model).eval(), head_mask=head_mask, neuron_mask=neuron_mask,
                       heads_per_layer=heads, ffn_per_layer=ffn, mac_ratio=1.0, macs=dense, dense_macs=dense,
                       fisher={}, masked_model=model)
