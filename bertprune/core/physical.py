"""Physically prune a masked model (any family with an adapter, ``bertprune.models.adapters``): drop
pruned heads/neurons, fold tuned scales into the weights.

The result is a genuinely smaller dense model whose config records each layer's head count and
FFN width (``bertprune_heads_per_layer`` / ``bertprune_ffn_per_layer``); ``bertprune.models.load_model``
loads it back. Its outputs equal the masked model's (up to float rounding).
"""

from __future__ import annotations

import torch
from torch import nn

from bertprune.models.adapters import FFN_KEY, HEADS_KEY, adapter_for


def _like(t: torch.Tensor) -> dict:
    return {"device": t.device, "dtype": t.dtype}


def _take_rows(linear: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, len(idx), bias=linear.bias is not None, **_like(linear.weight))
    idx = idx.to(linear.weight.device)
    new.weight.data = linear.weight.data[idx].clone()
    if linear.bias is not None:
        new.bias.data = linear.bias.data[idx].clone()
    return new


def _take_cols(linear: nn.Linear, idx: torch.Tensor, col_scale: torch.Tensor | None) -> nn.Linear:
    new = nn.Linear(len(idx), linear.out_features, bias=linear.bias is not None, **_like(linear.weight))
    w = linear.weight.data[:, idx.to(linear.weight.device)].clone()
    if col_scale is not None:
        w = w * col_scale.to(w)[None, :]
    new.weight.data = w
    if linear.bias is not None:
        new.bias.data = linear.bias.data.clone()
    return new


@torch.no_grad()
def prune_physically(model, head_mask: torch.Tensor, neuron_mask: torch.Tensor):
    """Shrink ``model`` in place to the units whose mask is non-zero.

    head_mask: ``[L, H]``, neuron_mask: ``[L, F]``; a value of 0 removes the unit, any other value is
    a (tuned) scale folded into the output-projection columns of that head / neuron.
    Returns the model (now with uneven per-layer shapes and the pruned config keys set).
    """
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    L = len(layers)
    H, F = adapter.num_heads(model.config), adapter.ffn_width(model.config)
    if tuple(head_mask.shape) != (L, H) or tuple(neuron_mask.shape) != (L, F):
        raise ValueError(f"masks must be [{L}, {H}] and [{L}, {F}], got {list(head_mask.shape)} and "
                         f"{list(neuron_mask.shape)}")
    d_head = adapter.head_size(model.config)
    heads_per_layer, ffn_per_layer = [], []
    for layer, hm, nm in zip(layers, head_mask.float().cpu(), neuron_mask.float().cpu()):
        kept_heads = torch.nonzero(hm != 0).flatten()
        parts = adapter.parts(layer)
        if len(kept_heads) == 0:
            # No head left: the block adds only the output bias before its LayerNorm.
            adapter.empty_attention(layer, model.config)
        else:
            rows = (kept_heads[:, None] * d_head + torch.arange(d_head)[None, :]).flatten()
            adapter.set_attention(layer, _take_rows(parts.query, rows), _take_rows(parts.key, rows),
                                  _take_rows(parts.value, rows),
                                  _take_cols(parts.attn_out, rows, hm[kept_heads].repeat_interleave(d_head)),
                                  len(kept_heads))
        kept = torch.nonzero(nm != 0).flatten()
        if len(kept) == 0:
            adapter.empty_ffn(layer, model.config)
        else:
            adapter.set_ffn(layer, _take_rows(parts.ffn_in, kept), _take_cols(parts.ffn_out, kept, nm[kept]))
        heads_per_layer.append(len(kept_heads))
        ffn_per_layer.append(len(kept))
    setattr(model.config, HEADS_KEY, heads_per_layer)
    setattr(model.config, FFN_KEY, ffn_per_layer)
    return model
