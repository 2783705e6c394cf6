"""``method=weight_norm``: a data-free baseline. A head's importance is the norm of its columns of the attention
output projection, a neuron's the norm of its column of the FFN output projection (each scaled by the units'
count in its layer's block, so heads and neurons compare per unit of output); the budget's search
(``core/search.py``) keeps the largest. No Fisher, no fits: what a method that reads the weights alone keeps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bertprune.core.method import MethodOutput, PruneContext, PruneMethod, check_number
from bertprune.core.search import search_masks
from bertprune.models.adapters import adapter_for


@dataclass(frozen=True)
class WeightNorm(PruneMethod):
    name = "weight_norm"
    power: float = 2.0  # importance = ||columns||_2 ** power

    def __post_init__(self) -> None:
        check_number("power", self.power, 0.0, why=" (the exponent of the column norms)")

    def prune(self, ctx: PruneContext) -> MethodOutput:
        adapter = adapter_for(ctx.model)
        d_head = adapter.head_size(ctx.model.config)
        heads, neurons = [], []
        for layer in adapter.layers(ctx.model):
            attn = adapter.attn_out(layer).weight.detach()  # [d, H * d_head]
            heads.append(attn.reshape(attn.shape[0], -1, d_head).norm(dim=(0, 2)) ** self.power)  # [H]
            neurons.append(adapter.ffn_out(layer).weight.detach().norm(dim=0) ** self.power)  # [F]
        head_imp, neuron_imp = torch.stack(heads).to(ctx.device), torch.stack(neurons).to(ctx.device)
        head_mask, neuron_mask = ctx.timed("search", search_masks, head_imp, neuron_imp, ctx.constraint, ctx.cost)
        ctx.stage("search", ctx.model, head_mask, neuron_mask)
        return MethodOutput(ctx.model, head_mask, neuron_mask)
