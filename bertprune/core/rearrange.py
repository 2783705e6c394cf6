"""Mask rearrangement (Kwon et al. §4.2): per layer, with the number of kept units fixed, choose
*which* units to prune so that the approximate loss increase ‖Σ_{i∈pruned} g_i‖² is small, where
g_i ∈ R^B is unit i's vector of per-batch gradients (block-diagonal Fisher: one block per layer).
Greedy: start from the lowest-importance set; add the next candidate and drop whichever member of
the set lowers ‖Σ g‖² the most. Costs nothing in MACs.
"""

from __future__ import annotations

import torch


def rearrange_layer(mask: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """mask ``[N]`` (0/1), grads ``[B, N]`` -> rearranged mask ``[N]`` with the same number kept."""
    N = mask.numel()
    n_pruned = int((mask == 0).sum())
    if n_pruned in (0, N):
        return mask.clone()
    g = grads.t().double()  # [N, B]
    order = g.pow(2).sum(1).argsort().tolist()  # ascending importance
    pruned = list(order[:n_pruned])
    total = g[pruned].sum(0)
    for cand in order[n_pruned:]:
        members = pruned + [cand]
        total = total + g[cand]
        # ‖total − g_j‖² for every member j: the set's loss if j were kept instead.
        loss = (total[None, :] - g[members]).pow(2).sum(1)
        drop = int(loss.argmin())
        total = total - g[members[drop]]
        del members[drop]
        pruned = members
    new = torch.ones_like(mask)
    new[pruned] = 0
    return new


def rearrange_masks(mask: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """mask ``[L, N]``, per-batch grads ``[B, L, N]`` -> rearranged ``[L, N]`` (each layer independently)."""
    out = mask.detach().cpu().clone()
    grads = grads.detach().cpu()
    for layer in range(mask.shape[0]):
        out[layer] = rearrange_layer(out[layer], grads[:, layer, :])
    return out.to(mask.device)
