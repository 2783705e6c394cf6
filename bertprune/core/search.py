"""Mask search under a MAC budget (Kwon et al. §4.1).

Heads and neurons are ranked globally by Fisher importance. For every number of kept heads n, the
rest of the budget buys ⌊(C·MAC_dense − n·MAC_head) / MAC_neuron⌋ neurons; the split (top-n heads,
top-m neurons) with the largest retained importance wins.
"""

from __future__ import annotations

import math

import torch

from bertprune.core.cost import MacCost


def check_constraint(constraint, cost: MacCost, num_heads: int, num_neurons: int) -> float:
    """One clear error for a constraint that is not a number in (0, 1) or too small to keep anything."""
    try:
        c = float(constraint)
    except (TypeError, ValueError):
        raise ValueError(f"constraint={constraint!r} is not a number; give the fraction of MACs to keep, "
                         "e.g. constraint=0.5") from None
    if not math.isfinite(c) or not 0.0 < c < 1.0:
        raise ValueError(f"constraint={c} must be in (0, 1): the fraction of the dense encoder's MACs that is kept")
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
    n_neurons = torch.floor((budget - n_heads * cost.head) / cost.neuron).clamp(max=L * F)
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
