"""Physically prune a masked BERT: drop pruned heads/neurons, fold tuned scales into the weights.

The result is a genuinely smaller dense model whose config records each layer's head count and
FFN width (``bertprune_heads_per_layer`` / ``bertprune_ffn_per_layer``); ``bertprune.models.load_model``
loads it back. Its outputs equal the masked model's (up to float rounding).
"""

from __future__ import annotations

import torch
from torch import nn

from bertprune.models import (FFN_KEY, HEADS_KEY, AttentionBiasOnly, FeedForwardBiasOnly, encoder_layers,
                              head_size)


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
    layers = encoder_layers(model)
    L = len(layers)
    H, F = model.config.num_attention_heads, model.config.intermediate_size
    if tuple(head_mask.shape) != (L, H) or tuple(neuron_mask.shape) != (L, F):
        raise ValueError(f"masks must be [{L}, {H}] and [{L}, {F}], got {list(head_mask.shape)} and "
                         f"{list(neuron_mask.shape)}")
    d_head, d, eps = head_size(model), model.config.hidden_size, model.config.layer_norm_eps
    heads_per_layer, ffn_per_layer = [], []
    for layer, hm, nm in zip(layers, head_mask.float().cpu(), neuron_mask.float().cpu()):
        kept_heads = torch.nonzero(hm != 0).flatten()
        att = layer.attention
        if len(kept_heads) == 0:
            # No head left: the block adds only the output bias before its LayerNorm.
            new = AttentionBiasOnly(d, eps, **_like(att.output.dense.bias))
            new.bias.data = att.output.dense.bias.data.clone()
            new.LayerNorm.load_state_dict(att.output.LayerNorm.state_dict())
            layer.attention = new
        else:
            rows = (kept_heads[:, None] * d_head + torch.arange(d_head)[None, :]).flatten()
            sa = att.self
            sa.query, sa.key, sa.value = (_take_rows(sa.query, rows), _take_rows(sa.key, rows),
                                          _take_rows(sa.value, rows))
            sa.num_attention_heads, sa.all_head_size = len(kept_heads), len(rows)
            att.output.dense = _take_cols(att.output.dense, rows, hm[kept_heads].repeat_interleave(d_head))
        kept = torch.nonzero(nm != 0).flatten()
        if len(kept) == 0:
            new = FeedForwardBiasOnly(d, eps, **_like(layer.output.dense.bias))
            new.bias.data = layer.output.dense.bias.data.clone()
            new.LayerNorm.load_state_dict(layer.output.LayerNorm.state_dict())
            layer.intermediate, layer.output = nn.Identity(), new
        else:
            layer.intermediate.dense = _take_rows(layer.intermediate.dense, kept)
            layer.output.dense = _take_cols(layer.output.dense, kept, nm[kept])
        heads_per_layer.append(len(kept_heads))
        ffn_per_layer.append(len(kept))
    setattr(model.config, HEADS_KEY, heads_per_layer)
    setattr(model.config, FFN_KEY, ffn_per_layer)
    return model
