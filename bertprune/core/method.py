"""What a pruning method is: a dataclass of its options with one ``prune(context)`` step.

A method is a component: ``conf/method/<name>.yaml`` names its class (``_target_``) and its option values;
the class's fields are the options' schema (types, defaults) and ``__post_init__`` checks their values, so
each option is defined and validated once, here in plain PyTorch code (no Hydra, no Lightning).
``bertprune.core.pipeline.prune_model`` runs any method: it computes what every method may ask for (the
held-out split of the calibration batches, the Fisher of the masks on demand), calls ``method.prune`` and
makes the physically smaller model from the masks it returns.

Adding a method = one module in ``bertprune/core/`` with a ``PruneMethod`` subclass, one
``conf/method/<name>.yaml`` naming it, one test (``bertprune/core/weight_norm.py`` is the smallest one).
"""

from __future__ import annotations

import dataclasses
import time
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable, ClassVar, Mapping

import torch

from bertprune.tasks.kinds import TaskKind

log = logging.getLogger(__name__)

HELD_OUT_SAMPLES = 256  # held_out_samples=null: at most this many calibration samples held out, and 1/8 of them


class LastLayerTokens(StrEnum):
    """Which tokens the last layer's FFN is fitted on (kinds whose head reads [CLS] only; others: all)."""
    cls = "cls"  # the token the classifier reads
    all = "all"  # every token


def held_out_samples(num_samples: int, samples: int | None) -> int:
    """The calibration samples held out to check the fits: ``samples``, or when it is null ``min(256, num_samples
    // 8)`` (at least 1): 256 of the default 2,048, and a small calibration sample keeps 7/8 of its samples."""
    return int(samples) if samples is not None else max(1, min(HELD_OUT_SAMPLES, int(num_samples) // 8))


def check_choice(name: str, value, choices) -> None:
    """One error naming ``method.<name>`` when ``value`` is not one of ``choices`` (strings or a StrEnum)."""
    allowed = [str(c) for c in choices]
    if str(value) not in allowed:
        raise ValueError(f"method.{name}={value!r}; expected one of {', '.join(allowed)}")


def check_number(name: str, value, minimum: float, kind=float, why: str = "") -> None:
    """One error naming ``method.<name>`` when ``value`` is not a finite ``kind`` >= ``minimum``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)
    if not ok or value != value or value in (float("inf"), float("-inf")) or value < minimum:
        raise ValueError(f"method.{name}={value!r} must be {'an integer' if kind is int else 'a number'} >= "
                         f"{minimum}{why}")


@dataclass
class PruneContext:
    """What ``prune_model`` hands a method: the frozen dense model, the calibration batches split into the ones
    it may fit on and the held-out ones (the last ``method.held_out(num_samples)`` samples; they feed nothing
    else), the task kind, the cost model and the budget, the Fisher of the masks (computed on the fit batches
    the first time ``fisher()`` is called), and ``stage()`` to report an intermediate masked model."""

    model: torch.nn.Module
    fit_batches: list[dict]
    held_out: list[dict]
    kind: TaskKind
    cost: Any  # MacCost | LatencyCost
    constraint: float
    device: torch.device
    progress: bool
    timings: dict[str, float]
    fisher_source: Callable[[], Mapping[str, torch.Tensor]]
    stage_fn: Callable[[str, torch.nn.Module, torch.Tensor, torch.Tensor], None]
    _fisher: dict | None = None

    def timed(self, name: str, fn, *args, **kwargs):
        """Run one step with a log line at its start and end; its wall time goes into ``timings[name]``."""
        log.info("%s ...", name)
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = time.perf_counter() - t
        log.info("%s done in %.1f s", name, self.timings[name])
        return out

    def fisher(self) -> dict[str, torch.Tensor]:
        """``head_importance [L, H]``, ``neuron_importance [L, F]``, ``head_grads [N, L, H]``, ``neuron_grads
        [N, L, F]`` of the fit batches (once; timed as the ``fisher`` step)."""
        if self._fisher is None:
            self._fisher = self.fisher_source()
        return self._fisher

    def stage(self, name: str, masked_model, head_mask: torch.Tensor, neuron_mask: torch.Tensor) -> None:
        """Report a stage's masks (evaluated by the caller's ``evaluate``, when given)."""
        self.stage_fn(name, masked_model, head_mask, neuron_mask)


@dataclass
class MethodOutput:
    """A method's answer: the masks (``[L, H]`` / ``[L, F]``: 0 = pruned, else the kept unit's scale) over
    ``masked_model`` (the input model, or a copy whose weights the method refitted), and its reports by name
    (``tune``, ``reconstruction``, ``iterative``, ``guard``: read by the job's record step)."""

    masked_model: torch.nn.Module
    head_mask: torch.Tensor
    neuron_mask: torch.Tensor
    reports: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PruneMethod:
    """Base of every pruning method: subclasses are frozen dataclasses whose fields are their options."""

    name: ClassVar[str] = "method"

    def held_out(self, num_samples: int) -> int:
        """How many of ``num_samples`` calibration samples this method holds out of everything else (0: none)."""
        return 0

    def prune(self, ctx: PruneContext) -> MethodOutput:
        raise NotImplementedError

    def options(self) -> dict:
        """The options as plain values (``method/<key>`` in results.json)."""
        return {f.name: (str(v) if isinstance(v := getattr(self, f.name), StrEnum) else v)
                for f in dataclasses.fields(self)}
