"""The pruning pipeline as one plain-PyTorch function: Fisher -> search -> rearrange -> tune -> physical.

``prune_model`` needs no Hydra, no Lightning and no files: a fine-tuned model, a list of padded
calibration batches, the task kind, a cost model and the constraint. It is what ``prune.py`` runs
(``bertprune.jobs.prune`` adds the checks, the teacher, the data, the multi-process Fisher, the files
and the callbacks around it) and what a notebook calls::

    from bertprune.core.cost import LatencyCost, MacCost, mac_model
    from bertprune.core.pipeline import PruneOptions, prune_model

    result = prune_model(model, batches, "classification", MacCost.for_model(model, seq_len=40.0), 0.5)
    result.model        # the physically smaller model; result.mac_ratio <= 0.5

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
from bertprune.core.guard import Guard, GuardReport, split_held_out
from bertprune.core.iterative import IterativeReport, prune_iterative
from bertprune.core.masks import mask_shapes, ones_masks
from bertprune.core.physical import prune_physically
from bertprune.core.rearrange import rearrange_masks
from bertprune.core.reconstruct import ReconstructionReport, reconstruct
from bertprune.core.search import check_constraint, cost_ratio, mac_ratio, search_masks
from bertprune.core.tuning import LAST_LAYER_TOKENS, TuneReport, tune_masks
from bertprune.models import model_shape
from bertprune.tasks.kinds import TaskKind, get_kind

log = logging.getLogger(__name__)

# The steps prune_model times; with the job's "save" they are the pruning time (evaluations are apart).
STEPS = ("fisher", "search", "rearrange", "tune", "iterative", "physical")
GUARD_STEPS = ("guard_rearrange", "guard_tune")  # with options.guard: part of the pruning time too
TUNING_TEACHERS = ("sqrt", "dense")
METHODS = ("kwon", "iterative")  # one-shot search -> rearrange -> tune | sub-layer by sub-layer (core/iterative.py)
TUNING_METHODS = ("scales", "projection")  # per-unit scales (the paper) | whole output projections refitted
FISHER_KEYS = ("head_importance", "neuron_importance", "head_grads", "neuron_grads")


@dataclass(frozen=True)
class IterativeOptions:
    """``method="iterative"``'s own options (``conf/prune.yaml``'s ``iterative:``)."""

    importance_samples: int = 512  # calibration samples of each re-measured importance (a prefix of the fit ones)
    damping: float = 1e-3  # ridge of the refits toward the dense weights (relative to the mean diagonal of xᵀx)
    last_layer_tokens: str = "cls"  # cls: the last FFN fitted on the token the classifier reads (kinds that read it)
    rearrange: bool = False  # rearrange each step's sub-layer (which units, count fixed) on that step's gradients

    def __post_init__(self) -> None:
        if self.last_layer_tokens not in LAST_LAYER_TOKENS:
            raise ValueError(f"iterative.last_layer_tokens={self.last_layer_tokens!r}; expected one of {LAST_LAYER_TOKENS}")


@dataclass(frozen=True)
class PruneOptions:
    """How the pipeline runs (the defaults are ``conf/prune.yaml``'s; ``method="kwon"`` with the rest at their
    defaults is the paper's pipeline)."""

    method: str = "iterative"  # iterative: core/iterative.py; kwon: Fisher -> search -> rearrange -> tune (the paper)
    rearrange: bool = True
    tune: bool = True
    tuning_method: str = "scales"  # scales: mask tuning (the paper); projection: core/reconstruct.py
    refit_damping: float = 1e-2  # tuning_method=projection: ridge toward the dense weights (relative to mean xᵀx)
    iterative: IterativeOptions = IterativeOptions()
    tuning_teacher: str = "sqrt"  # sqrt: the search mask at constraint √C; dense: the unpruned model
    tune_samples: int = 512  # calibration samples (a prefix of the calibration batches) for the fits
    damping: float = 1e-2
    max_scale: float = 10.0
    last_layer_tokens: str = "all"  # cls: the last layer's FFN fitted on [CLS] (kinds that read it)
    guard: bool = False  # keep each stage after the search per layer only where it lowers a held-out loss
    guard_samples: int = 256  # calibration samples held out for the guard (the last batches; used for nothing else)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}; expected one of {METHODS}")
        if self.tuning_method not in TUNING_METHODS:
            raise ValueError(f"tuning_method={self.tuning_method!r}; expected one of {TUNING_METHODS}")
        if self.tuning_teacher not in TUNING_TEACHERS:
            raise ValueError(f"tuning_teacher={self.tuning_teacher!r}; expected one of {TUNING_TEACHERS}")
        if self.last_layer_tokens not in LAST_LAYER_TOKENS:
            raise ValueError(f"last_layer_tokens={self.last_layer_tokens!r}; expected one of {LAST_LAYER_TOKENS}")


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
    reconstruction_report: ReconstructionReport | None = None  # tuning_method=projection / method=iterative
    iterative_report: IterativeReport | None = None  # method=iterative: each sub-layer's step
    # the model the masks apply to: the input model, or a copy with refitted output projections
    masked_model: torch.nn.Module | None = None
    guard_report: GuardReport | None = None  # options.guard: held-out losses and per-layer rollbacks
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


def _tune_prefix(batches: list[dict], num_samples: int) -> list[dict]:
    """The shortest prefix of ``batches`` holding ``num_samples`` samples (all of them if fewer)."""
    out, n = [], 0
    for b in batches:
        if n >= num_samples:
            break
        out.append(b)
        n += len(b["input_ids"])
    return out


def prune_model(model, calibration_batches: list[dict], kind: str | TaskKind, cost: MacCost | LatencyCost,
                constraint: float,
                options: PruneOptions = PruneOptions(), fisher: FisherSource = None,
                evaluate: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, str], float] | None = None,
                device=None) -> PruneResult:
    """Prune a dense fine-tuned ``model`` of a supported family (``bertprune.models.adapters``) to
    ``constraint`` of its encoder's cost.

    calibration_batches: padded batches (``input_ids`` / ``attention_mask`` [/ ``token_type_ids``] ``[B, T]``
    and the kind's labels, e.g. ``labels [B]``), on any device; ``options.tune_samples`` of them (a prefix)
    also feed the tuning. cost: the cost model the search budgets (``MacCost``: MACs of the encoder;
    ``LatencyCost``: predicted latency of the whole model, its ``mac`` model gives the MAC figures).
    fisher: None = computed here, in-process (``collect_fisher``); else the mask gradients already computed
    (a mapping with ``FISHER_KEYS``, e.g. the multi-process Lightning run), or a callable returning them
    (called and timed as the ``fisher`` step). evaluate: ``(masked_model, head_mask [L, H], neuron_mask [L, F],
    stage) -> metric``, called after search, rearrangement and tuning, or after ``iterative`` (timed as
    ``eval_<stage>``); ``masked_model`` is ``model`` or, once output projections are refitted
    (``tuning_method="projection"``, ``method="iterative"``), the refitted copy the masks apply to.
    options.method: ``"kwon"`` (the paper's one-shot pipeline) or ``"iterative"`` (``bertprune.core.iterative``:
    sub-layer by sub-layer, importance re-measured, projections refitted; the last ``guard_samples`` calibration
    samples held out to check each refit).
    options.guard: the last ``guard_samples`` calibration samples are held out of everything (given Fisher
    gradients of all batches are cut to the others) and each stage after the search is rolled back per layer
    where it raises their loss (``bertprune.core.guard``; ``PruneResult.guard_report``).
    The model is frozen (weights need no gradient, eval mode) and left unpruned; the pruned one is a copy.
    """
    kind = get_kind(kind)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    freeze(model)
    (L, H), (_, F) = mask_shapes(model)
    constraint = check_constraint(constraint, cost, L * H, L * F)
    timings: dict[str, float] = {}
    stage_metrics: dict[str, float] = {}

    masked_model = model  # what the masks apply to (a refit replaces it by a copy with new projections)

    def stage(name: str, head_mask, neuron_mask) -> None:
        if evaluate is not None:
            stage_metrics[name] = timed(timings, f"eval_{name}", evaluate, masked_model, head_mask, neuron_mask, name)

    guard = None
    refits = options.method == "iterative" or (options.tune and options.tuning_method == "projection")
    if options.guard or refits:  # refits are checked on held-out calibration batches too
        fit_batches, held_out = split_held_out(calibration_batches, options.guard_samples)
        if options.guard:
            guard = Guard(model, kind, held_out, device)
    else:
        fit_batches, held_out = calibration_batches, []

    # ---- 1. Fisher
    if fisher is None:
        grads = timed(timings, "fisher", collect_fisher, model, fit_batches, kind, device,
                      progress=options.progress)
        fisher = {"head_importance": grads.head_importance, "neuron_importance": grads.neuron_importance,
                  "head_grads": grads.head_grads, "neuron_grads": grads.neuron_grads}
    elif callable(fisher):
        fisher = timed(timings, "fisher", fisher)
    fisher = dict(fisher)
    missing = [k for k in FISHER_KEYS if k not in fisher]
    if missing:
        raise ValueError(f"fisher lacks {missing}; give {FISHER_KEYS} (bertprune.lightning.fisher.load_fisher)")
    if held_out and len(fisher["head_grads"]) != len(fit_batches):  # held-out batches: out of Fisher too
        if len(fisher["head_grads"]) != len(calibration_batches):
            raise ValueError(f"fisher holds {len(fisher['head_grads'])} batches' gradients; expected one per "
                             f"calibration batch ({len(calibration_batches)})")
        n = len(fit_batches)
        fisher.update(head_grads=fisher["head_grads"][:n], neuron_grads=fisher["neuron_grads"][:n])
        fisher.update(head_importance=fisher["head_grads"].pow(2).sum(0),
                      neuron_importance=fisher["neuron_grads"].pow(2).sum(0))
    head_imp, neuron_imp = fisher["head_importance"].to(device), fisher["neuron_importance"].to(device)
    check_importance(head_imp, neuron_imp)
    last_tokens = options.last_layer_tokens if kind.reads_cls else "all"

    if options.method == "iterative":  # ---- 2'. sub-layer by sub-layer: search, prune, refit (core/iterative.py)
        it = options.iterative
        masked_model, head_mask, neuron_mask, it_report = timed(
            timings, "iterative", prune_iterative, model, fit_batches, held_out, kind, cost, constraint, head_imp,
            neuron_imp, len(_tune_prefix(fit_batches, it.importance_samples)), damping=it.damping,
            last_layer_tokens=it.last_layer_tokens if kind.reads_cls else "all", device=device,
            progress=options.progress,
            **({"head_grads": fisher["head_grads"], "neuron_grads": fisher["neuron_grads"]} if it.rearrange else {}))
        stage("iterative", head_mask, neuron_mask)
        return _result(model, masked_model, head_mask, neuron_mask, cost, fisher, timings, stage_metrics,
                       iterative_report=it_report, reconstruction_report=it_report.reconstruction,
                       guard_report=guard.report if guard is not None else None)

    # ---- 2. search
    head_mask, neuron_mask = timed(timings, "search", search_masks, head_imp, neuron_imp, constraint, cost)
    if guard is not None:
        guard.baseline("search", head_mask, neuron_mask)
    stage("search", head_mask, neuron_mask)

    def guarded(name: str, before, after):
        if guard is None:
            return after
        return timed(timings, f"guard_{name}", guard.check, name, before, after)

    # ---- 3. rearrangement
    if options.rearrange:
        before = (head_mask, neuron_mask)
        head_mask, neuron_mask = timed(timings, "rearrange", lambda: (
            rearrange_masks(head_mask, fisher["head_grads"]), rearrange_masks(neuron_mask, fisher["neuron_grads"])))
        head_mask, neuron_mask = guarded("rearrange", before, (head_mask, neuron_mask))
        stage("rearrange", head_mask, neuron_mask)

    # ---- 4. tuning
    report = reconstruction = None
    if options.tune and options.tuning_method == "projection":  # whole output projections refitted
        before = (head_mask, neuron_mask)
        work, head_mask, neuron_mask, reconstruction = timed(
            timings, "tune", reconstruct, model, head_mask, neuron_mask,
            _tune_prefix(fit_batches, options.tune_samples), held_out, damping=options.refit_damping,
            last_layer_tokens=last_tokens, device=device, progress=options.progress)
        if guard is not None:  # the refit is weights, not masks: kept or rolled back as a whole
            kept = timed(timings, "guard_tune", guard.check_model, "tune", work, (head_mask, neuron_mask), before)
            if kept:
                masked_model = work
            else:
                head_mask, neuron_mask = before
        else:
            masked_model = work
        stage("tune", head_mask, neuron_mask)
    elif options.tune:
        if options.tuning_teacher == "sqrt":
            t_head, t_neuron = search_masks(head_imp, neuron_imp, math.sqrt(constraint), cost)
        else:
            t_head, t_neuron = ones_masks(model, device)
        before = (head_mask, neuron_mask)
        head_mask, neuron_mask, report = timed(
            timings, "tune", tune_masks, model, head_mask, neuron_mask, t_head, t_neuron,
            _tune_prefix(fit_batches, options.tune_samples), damping=options.damping,
            max_scale=options.max_scale, device=device, progress=options.progress,
            last_layer_tokens=last_tokens)
        head_mask, neuron_mask = guarded("tune", before, (head_mask, neuron_mask))
        stage("tune", head_mask, neuron_mask)

    return _result(model, masked_model, head_mask, neuron_mask, cost, fisher, timings, stage_metrics,
                   tune_report=report, reconstruction_report=reconstruction,
                   guard_report=guard.report if guard is not None else None)


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
