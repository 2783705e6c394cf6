"""Mask search under a cost budget (Kwon et al. §4.1).

MACs (``search_mac``): heads and neurons are ranked globally by Fisher importance. For every number of
kept heads n, the rest of the budget buys ⌊(C·MAC_dense − n·MAC_head) / MAC_neuron⌋ neurons; the split
(top-n heads, top-m neurons) with the largest retained importance wins.

Latency (``search_latency``): the same global ranking, with each unit's cost the increment it adds to
its own layer's piecewise-linear latency. For every number of kept heads n (0 … L·H, each one starting
from the same budget) the top-n heads cost the sum of their layers' MHA latencies, and the rest of the
budget buys the largest number m of top-ranked neurons whose layers' FFN latencies fit. Layers may keep
0 heads or 0 neurons. ``search_masks`` picks the search of the cost model.
"""

from __future__ import annotations

import math

import torch

from bertprune.core.cost import LatencyCost, MacCost


def check_constraint(constraint, cost: MacCost | LatencyCost, num_heads: int, num_neurons: int) -> float:
    """One clear error for a constraint that is not a number in (0, 1) or too small to keep anything."""
    try:
        c = float(constraint)
    except (TypeError, ValueError):
        raise ValueError(f"constraint={constraint!r} is not a number; give the fraction of the dense model's "
                         f"{cost.unit if isinstance(cost, MacCost) else 'predicted latency'} to keep, "
                         "e.g. constraint=0.5") from None
    if not math.isfinite(c) or not 0.0 < c < 1.0:
        what = "encoder MACs" if isinstance(cost, MacCost) else "predicted latency (cost=latency)"
        raise ValueError(f"constraint={c} must be in (0, 1): the fraction of the dense model's {what} that is kept")
    if isinstance(cost, LatencyCost):
        return _check_latency_budget(c, cost)
    budget = c * cost.encoder(num_heads, num_neurons)
    if budget < min(cost.head, cost.neuron):
        raise ValueError(f"constraint={c} leaves {budget:.3g} MACs, less than one FFN neuron ({cost.neuron:.3g}) "
                         "or head: nothing could be kept; raise the constraint")
    return c


def search_mac(head_importance: torch.Tensor, neuron_importance: torch.Tensor, constraint: float,
               cost: MacCost) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary masks ``[L, H]``, ``[L, F]`` maximising retained importance with MACs ≤ C · dense MACs."""
    L, H = head_importance.shape
    F = neuron_importance.shape[1]
    constraint = check_constraint(constraint, cost, L * H, L * F)
    budget = constraint * cost.encoder(L * H, L * F)
    h_sorted, h_order = head_importance.flatten().double().sort(descending=True)
    n_sorted, n_order = neuron_importance.flatten().double().sort(descending=True)
    h_cum = torch.cat([h_sorted.new_zeros(1), h_sorted.cumsum(0)])  # importance of the top-n heads
    n_cum = torch.cat([n_sorted.new_zeros(1), n_sorted.cumsum(0)])
    n_heads = torch.arange(L * H + 1, dtype=torch.float64)
    n_avail = int(torch.isfinite(n_sorted).sum())  # -inf importance: a unit that may not be kept (search_fixed)
    n_neurons = torch.floor((budget - n_heads * cost.head) / cost.neuron).clamp(max=n_avail)
    feasible = n_neurons >= 0
    score = torch.where(feasible, h_cum + n_cum[n_neurons.clamp(min=0).long()], torch.tensor(-math.inf, dtype=torch.float64))
    best = int(score.argmax())
    keep_heads, keep_neurons = best, int(n_neurons[best])
    head_mask = torch.zeros(L * H)
    head_mask[h_order[:keep_heads]] = 1
    neuron_mask = torch.zeros(L * F)
    neuron_mask[n_order[:keep_neurons]] = 1
    return head_mask.view(L, H).to(head_importance.device), neuron_mask.view(L, F).to(neuron_importance.device)


def mac_ratio(head_mask: torch.Tensor, neuron_mask: torch.Tensor, cost: MacCost) -> float:
    """MACs of the masked encoder / MACs of the dense one."""
    kept = cost.encoder(int((head_mask != 0).sum()), int((neuron_mask != 0).sum()))
    return kept / cost.encoder(head_mask.numel(), neuron_mask.numel())


def _check_latency_budget(c: float, cost: LatencyCost) -> float:
    dense = cost.dense_total()
    cheapest = cost.fixed + min(cost.mha(1), cost.ffn(1))
    if c * dense < cheapest:
        raise ValueError(f"constraint={c} leaves {c * dense:.3g} ms of the dense model's {dense:.3g} ms, less than the "
                         f"model with every head and neuron pruned plus one unit ({cheapest:.3g} ms: embeddings, "
                         f"classifier, LayerNorms): nothing could be kept; use constraint > {cheapest / dense:.3f}")
    return c


def _layer_increments(order: torch.Tensor, num_layers: int, width: int, layer_cost) -> torch.Tensor:
    """Cost each unit adds when units are kept in ``order`` (flat indices into ``[L, width]``): the
    increment of its layer's cost from the count before it to the count with it. ``[L·width]``."""
    layer = order // width
    onehot = torch.nn.functional.one_hot(layer, num_layers)
    count = onehot.cumsum(0).gather(1, layer[:, None]).squeeze(1)  # the layer's count once this unit is in
    return layer_cost(count) - layer_cost(count - 1)


def search_latency(head_importance: torch.Tensor, neuron_importance: torch.Tensor, constraint: float,
                   cost: LatencyCost) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary masks ``[L, H]``, ``[L, F]`` maximising retained importance with predicted latency ≤ C · dense.

    Every head count n = 0 … L·H is tried against the full budget (the reference code shrank the budget
    inside its loop, so only its first configurations were ever feasible)."""
    L, H = head_importance.shape
    F = neuron_importance.shape[1]
    if (L, H, F) != (cost.num_layers, cost.num_heads, cost.num_neurons):
        raise ValueError(f"importances are [{L}, {H}] / [{L}, {F}] but the latency table is for {cost.num_layers} "
                         f"layers x {cost.num_heads} heads x {cost.num_neurons} neurons; measure it for this model")
    constraint = check_constraint(constraint, cost, L * H, L * F)
    budget = constraint * cost.dense_total()
    h_sorted, h_order = head_importance.flatten().double().cpu().sort(descending=True)
    n_sorted, n_order = neuron_importance.flatten().double().cpu().sort(descending=True)
    zero = h_sorted.new_zeros(1)
    h_cum, n_cum = torch.cat([zero, h_sorted.cumsum(0)]), torch.cat([zero, n_sorted.cumsum(0)])
    mha_cum = torch.cat([zero, _layer_increments(h_order, L, H, cost.mha).cumsum(0)])  # latency of the top-n heads
    ffn_cum = torch.cat([zero, _layer_increments(n_order, L, F, cost.ffn).cumsum(0)])  # non-decreasing: fits are
    ffn_cum = torch.cummax(ffn_cum, 0).values                                      # monotone (guard rounding)
    remaining = budget - cost.fixed - mha_cum  # [L·H + 1]: every head count starts from the same budget
    n_neurons = torch.searchsorted(ffn_cum, remaining, right=True) - 1  # most top-ranked neurons that fit
    n_neurons = n_neurons.clamp(max=int(torch.isfinite(n_sorted).sum()))  # -inf: may not be kept (search_fixed)
    feasible = n_neurons >= 0
    score = torch.where(feasible, h_cum + n_cum[n_neurons.clamp(min=0)], torch.tensor(-math.inf, dtype=torch.float64))
    best = int(score.argmax())
    keep_heads, keep_neurons = best, int(n_neurons[best])
    head_mask, neuron_mask = torch.zeros(L * H), torch.zeros(L * F)
    head_mask[h_order[:keep_heads]] = 1
    neuron_mask[n_order[:keep_neurons]] = 1
    head_mask, neuron_mask = head_mask.view(L, H), neuron_mask.view(L, F)
    while keep_neurons > 0 and _total(head_mask, neuron_mask, cost) > budget:  # float rounding of the cumsums
        keep_neurons -= 1
        neuron_mask.view(-1)[n_order[keep_neurons]] = 0
    return head_mask.to(head_importance.device), neuron_mask.to(neuron_importance.device)


def _total(head_mask: torch.Tensor, neuron_mask: torch.Tensor, cost) -> float:
    return cost.total((head_mask != 0).sum(1).tolist(), (neuron_mask != 0).sum(1).tolist())


def search_masks(head_importance: torch.Tensor, neuron_importance: torch.Tensor, constraint: float,
                 cost: MacCost | LatencyCost) -> tuple[torch.Tensor, torch.Tensor]:
    """The search of ``cost``'s kind: ``search_mac`` (MACs) or ``search_latency``; masks ``[L, H]``, ``[L, F]``."""
    if isinstance(cost, LatencyCost):
        return search_latency(head_importance, neuron_importance, constraint, cost)
    return search_mac(head_importance, neuron_importance, constraint, cost)


def search_fixed(head_importance: torch.Tensor, neuron_importance: torch.Tensor, constraint: float,
                 cost: MacCost | LatencyCost, head_mask: torch.Tensor, neuron_mask: torch.Tensor,
                 head_fixed: torch.Tensor, neuron_fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``search_masks`` with some layers decided: rows of ``head_mask`` / ``neuron_mask`` where ``head_fixed`` /
    ``neuron_fixed`` ``[L]`` is true are kept exactly (their kept units must be kept, their pruned ones may not
    be), the other units are chosen by importance against the full budget. Whenever the fixed rows come from an
    earlier answer of this search, that answer is still feasible, so the result never goes over the budget.
    Binary masks ``[L, H]``, ``[L, F]``."""
    hi, ni = head_importance.double().clone(), neuron_importance.double().clone()
    hf = head_fixed.to(hi.device)[:, None].expand_as(hi)
    nf = neuron_fixed.to(ni.device)[:, None].expand_as(ni)
    free = torch.cat([hi[~hf], ni[~nf]])
    big = 1.0 + 2.0 * float(free.abs().sum())  # more than all free importance: a fixed kept unit always wins
    kept_h, kept_n = hf & (head_mask.to(hi.device) != 0), nf & (neuron_mask.to(ni.device) != 0)
    hi[kept_h], ni[kept_n] = big, big
    hi[hf & ~kept_h], ni[nf & ~kept_n] = -math.inf, -math.inf
    h, n = search_masks(hi, ni, constraint, cost)
    if not (torch.equal(h[hf], (head_mask.to(h.device) != 0).float()[hf])
            and torch.equal(n[nf], (neuron_mask.to(n.device) != 0).float()[nf])):
        raise ValueError("the fixed layers do not fit the budget together; they must come from an earlier search "
                         "at this constraint")
    return h, n


def cost_ratio(head_mask: torch.Tensor, neuron_mask: torch.Tensor, cost: MacCost | LatencyCost) -> float:
    """Cost of the masked model / cost of the dense one (``mac_ratio`` for MACs, predicted latency for latency)."""
    if isinstance(cost, MacCost):
        return mac_ratio(head_mask, neuron_mask, cost)
    L, H = head_mask.shape
    return _total(head_mask, neuron_mask, cost) / cost.total([H] * L, [neuron_mask.shape[1]] * L)
