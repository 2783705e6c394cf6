"""One small architecture adapter per model family: the only place that knows module names.

Masks, Fisher, mask tuning, the cost model, physical pruning, loading of pruned checkpoints, the ONNX
wrapper and the tiny random models all reach a model's encoder through ``adapter_for(model_or_config)``.
An adapter owns: the encoder and its layers; per layer the attention q/k/v/output linears, the FFN
in/out linears, the activation and the two LayerNorms (``LayerParts``); the config names of layers /
heads / hidden size / FFN width; whether the model reads token type ids; how a layer's attention or
FFN is resized, or replaced by a bias-only block when it keeps no unit; and a tiny random config.
Families are keyed by ``config.model_type`` in ``ADAPTERS`` (MiniLM checkpoints report ``bert``).
Adding one: docs/method.md, "Model families".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# Keys bertprune adds to a Hugging Face config.json for a physically pruned model (every family).
HEADS_KEY = "bertprune_heads_per_layer"
FFN_KEY = "bertprune_ffn_per_layer"
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")  # the Hugging Face inputs bertprune feeds


@dataclass(frozen=True)
class LayerParts:
    """The modules of one dense encoder layer that pruning and tuning read.

    attention:  ``ln_att(x + W_o · ctx + b_o)`` with ctx ``[.., H·d_h]`` from query/key/value;
    FFN:        ``ln_ffn(a + W_2 · act(W_1 · a + b_1) + b_2)``.
    """

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    ln_att: nn.LayerNorm
    ffn_in: nn.Linear
    act: Callable[[torch.Tensor], torch.Tensor]
    ffn_out: nn.Linear
    ln_ffn: nn.LayerNorm


def _like(t: torch.Tensor) -> dict:
    return {"device": t.device, "dtype": t.dtype}


class AttentionBiasOnly(nn.Module):
    """Replaces a BERT-layout layer's attention block when it keeps 0 heads: only the output bias survives.

    Built on ``device`` / ``dtype`` (those of the layer it replaces: a GPU or float64/float16 model).
    """

    def __init__(self, hidden_size: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype))
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps, device=device, dtype=dtype)

    def forward(self, hidden_states, *args, **kwargs):
        return self.LayerNorm(hidden_states + self.bias), None


class FeedForwardBiasOnly(nn.Module):
    """Replaces a BERT-layout layer's FFN output when it keeps 0 neurons: LayerNorm(input + bias)."""

    def __init__(self, hidden_size: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype))
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps, device=device, dtype=dtype)

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(input_tensor + self.bias)


class BiasOnly(nn.Module):
    """A sub-block that keeps no unit and adds only its output bias ``[d]`` (broadcast to the input's
    ``[b, s, d]``); the layer's own LayerNorm follows it (DistilBERT layout). ``returns_tuple``: attention
    blocks return ``(output, None)``."""

    def __init__(self, hidden_size: int, returns_tuple: bool, device=None, dtype=None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype))
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states, *args, **kwargs):
        out = self.bias.expand_as(hidden_states)
        return (out, None) if self.returns_tuple else out


class _StopForward(Exception):
    pass


class Adapter:
    """The BERT module layout (BERT, MiniLM): ``base_model.encoder.layer[i]`` with ``attention.self.
    query/key/value``, ``attention.output.dense/LayerNorm``, ``intermediate.dense``, ``output.dense/LayerNorm``."""

    family = "bert"
    model_types: tuple[str, ...] = ("bert",)
    takes_token_types = True
    # config attribute names: layers, heads, hidden size, FFN width
    layers_key, heads_key = "num_hidden_layers", "num_attention_heads"
    hidden_key, ffn_key = "hidden_size", "intermediate_size"

    # ---- shapes from a config
    def num_layers(self, config) -> int:
        return int(getattr(config, self.layers_key))

    def num_heads(self, config) -> int:
        return int(getattr(config, self.heads_key))

    def hidden_size(self, config) -> int:
        return int(getattr(config, self.hidden_key))

    def ffn_width(self, config) -> int:
        return int(getattr(config, self.ffn_key))

    def head_size(self, config) -> int:
        return self.hidden_size(config) // self.num_heads(config)

    def layer_norm_eps(self, config) -> float:
        return float(config.layer_norm_eps)

    def dense_shape(self, config) -> tuple[int, int, int]:
        """``(L, H, F)`` of the dense architecture."""
        return self.num_layers(config), self.num_heads(config), self.ffn_width(config)

    # ---- modules
    def encoder(self, model) -> nn.Module:
        """The module whose forward receives ``(hidden_states [b, s, d], attention_mask)`` after the embeddings."""
        return getattr(model, "base_model", model).encoder

    def layers(self, model) -> list[nn.Module]:
        try:
            layers = list(self.encoder(model).layer)
        except (AttributeError, TypeError):
            layers = []
        if not layers or not all(hasattr(layers[0], a) for a in self.layer_attrs):
            raise ValueError(f"model type {getattr(model.config, 'model_type', '?')!r} does not have the {self.family} "
                             f"module layout its adapter expects ({self.layout})") from None
        return layers

    layer_attrs = ("attention", "intermediate", "output")  # what every layer, dense or pruned, has
    layout = "encoder.layer[i].attention.self.query/key/value, attention.output.dense, intermediate.dense, output.dense"

    def parts(self, layer) -> LayerParts:
        sa, ao = layer.attention.self, layer.attention.output
        return LayerParts(sa.query, sa.key, sa.value, ao.dense, ao.LayerNorm, layer.intermediate.dense,
                          layer.intermediate.intermediate_act_fn, layer.output.dense, layer.output.LayerNorm)

    def attn_out(self, layer) -> nn.Linear:
        """The attention output projection (its input is the context ``[b, s, H·d_h]``)."""
        return layer.attention.output.dense

    def ffn_out(self, layer) -> nn.Linear:
        """The FFN output projection (its input is the post-activation ``[b, s, F]``)."""
        return layer.output.dense

    def context(self, layer, hidden: torch.Tensor, mask) -> torch.Tensor:
        """The attention context ``[b, s, H·d_h]`` (before the output projection) of a dense layer."""
        return layer.attention.self(hidden, attention_mask=mask)[0]

    def layer_shape(self, layer, d_head: int) -> tuple[int, int]:
        """(heads, ffn width) of one (possibly pruned) layer."""
        att = layer.attention
        heads = 0 if isinstance(att, AttentionBiasOnly) else att.self.query.out_features // d_head
        ffn = 0 if isinstance(layer.output, FeedForwardBiasOnly) else layer.intermediate.dense.out_features
        return heads, ffn

    # ---- resizing: new linears (pruned weights) or bias-only blocks
    def set_attention(self, layer, query: nn.Linear, key: nn.Linear, value: nn.Linear, out: nn.Linear,
                      n_heads: int) -> None:
        sa = layer.attention.self
        sa.query, sa.key, sa.value = query, key, value
        sa.num_attention_heads, sa.all_head_size = n_heads, query.out_features
        layer.attention.output.dense = out

    def set_ffn(self, layer, ffn_in: nn.Linear, ffn_out: nn.Linear) -> None:
        layer.intermediate.dense, layer.output.dense = ffn_in, ffn_out

    def empty_attention(self, layer, config) -> None:
        """Replace the attention block by its output bias (+ its LayerNorm), copied from the layer."""
        ao = layer.attention.output
        new = AttentionBiasOnly(self.hidden_size(config), self.layer_norm_eps(config), **_like(ao.dense.bias))
        new.bias.data = ao.dense.bias.data.clone()
        new.LayerNorm.load_state_dict(ao.LayerNorm.state_dict())
        layer.attention = new

    def empty_ffn(self, layer, config) -> None:
        out = layer.output
        new = FeedForwardBiasOnly(self.hidden_size(config), self.layer_norm_eps(config), **_like(out.dense.bias))
        new.bias.data = out.dense.bias.data.clone()
        new.LayerNorm.load_state_dict(out.LayerNorm.state_dict())
        layer.intermediate, layer.output = nn.Identity(), new

    # ---- inputs
    def model_inputs(self, batch: dict) -> dict:
        """The Hugging Face inputs this family reads, from a batch (labels and the rest left out)."""
        keys = INPUT_KEYS if self.takes_token_types else INPUT_KEYS[:2]
        return {k: v for k, v in batch.items() if k in keys}

    # ---- tiny random models
    def tiny_config(self, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int,
                    num_labels: int):
        from transformers import BertConfig

        return BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                          num_attention_heads=num_heads, intermediate_size=intermediate_size,
                          max_position_embeddings=512, num_labels=num_labels,
                          hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


class RobertaAdapter(Adapter):
    """RoBERTa: the BERT module layout under ``roberta.encoder``. No segment ids in use (type_vocab_size 1:
    token_type_ids are not fed, the model's all-zero default is used); position ids start at
    ``pad_token_id + 1`` and skip padding tokens (Hugging Face computes them from ``input_ids``)."""

    family = "roberta"
    model_types = ("roberta",)
    takes_token_types = False

    def tiny_config(self, vocab_size, hidden_size, num_layers, num_heads, intermediate_size, num_labels):
        from transformers import RobertaConfig

        return RobertaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                             num_attention_heads=num_heads, intermediate_size=intermediate_size,
                             max_position_embeddings=514, type_vocab_size=1, num_labels=num_labels,
                             hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


class DistilBertAdapter(Adapter):
    """DistilBERT: ``distilbert.transformer.layer[i]`` with ``attention.q_lin/k_lin/v_lin/out_lin``,
    ``sa_layer_norm``, ``ffn.lin1/lin2``, ``output_layer_norm``; config ``n_layers/n_heads/dim/hidden_dim``;
    no token types. Its LayerNorms sit outside the sub-blocks, so an emptied sub-block is a ``BiasOnly``."""

    family = "distilbert"
    model_types = ("distilbert",)
    takes_token_types = False
    layers_key, heads_key, hidden_key, ffn_key = "n_layers", "n_heads", "dim", "hidden_dim"
    layer_attrs = ("attention", "sa_layer_norm", "ffn", "output_layer_norm")
    layout = "transformer.layer[i].attention.q_lin/k_lin/v_lin/out_lin, sa_layer_norm, ffn.lin1/lin2, output_layer_norm"

    def layer_norm_eps(self, config) -> float:
        return 1e-12  # hard-coded in transformers' DistilBERT

    def encoder(self, model) -> nn.Module:
        return getattr(model, "base_model", model).transformer

    def parts(self, layer) -> LayerParts:
        att, ffn = layer.attention, layer.ffn
        return LayerParts(att.q_lin, att.k_lin, att.v_lin, att.out_lin, layer.sa_layer_norm, ffn.lin1, ffn.activation,
                          ffn.lin2, layer.output_layer_norm)

    def attn_out(self, layer) -> nn.Linear:
        return layer.attention.out_lin

    def ffn_out(self, layer) -> nn.Linear:
        return layer.ffn.lin2

    def context(self, layer, hidden, mask):
        captured = {}

        def hook(_module, args):
            captured["ctx"] = args[0]
            raise _StopForward

        handle = layer.attention.out_lin.register_forward_pre_hook(hook)
        try:
            layer.attention(hidden, attention_mask=mask)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured["ctx"]

    def layer_shape(self, layer, d_head):
        heads = 0 if isinstance(layer.attention, BiasOnly) else layer.attention.q_lin.out_features // d_head
        ffn = 0 if isinstance(layer.ffn, BiasOnly) else layer.ffn.lin1.out_features
        return heads, ffn

    def set_attention(self, layer, query, key, value, out, n_heads):
        att = layer.attention  # heads are read from the projections' width (view(..., -1, d_h))
        att.q_lin, att.k_lin, att.v_lin, att.out_lin = query, key, value, out
        att.n_heads = n_heads

    def set_ffn(self, layer, ffn_in, ffn_out):
        layer.ffn.lin1, layer.ffn.lin2 = ffn_in, ffn_out

    def empty_attention(self, layer, config):
        b = layer.attention.out_lin.bias
        new = BiasOnly(self.hidden_size(config), returns_tuple=True, **_like(b))
        new.bias.data = b.data.clone()
        layer.attention = new

    def empty_ffn(self, layer, config):
        b = layer.ffn.lin2.bias
        new = BiasOnly(self.hidden_size(config), returns_tuple=False, **_like(b))
        new.bias.data = b.data.clone()
        layer.ffn = new

    def tiny_config(self, vocab_size, hidden_size, num_layers, num_heads, intermediate_size, num_labels):
        from transformers import DistilBertConfig

        return DistilBertConfig(vocab_size=vocab_size, dim=hidden_size, n_layers=num_layers, n_heads=num_heads,
                                hidden_dim=intermediate_size, max_position_embeddings=512, num_labels=num_labels,
                                dropout=0.1, attention_dropout=0.1)


ADAPTERS: dict[str, Adapter] = {t: a for a in (Adapter(), DistilBertAdapter(), RobertaAdapter()) for t in a.model_types}
FAMILIES = {a.family: a for a in ADAPTERS.values()}


class UnsupportedFamilyError(ValueError):
    """A model family bertprune has no adapter for."""


def adapter_for(model_or_config, where: str | None = None) -> Adapter:
    """The adapter of a model, its config, or a family name (``bert``, ``distilbert``, ``roberta``)."""
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(config, "model_type", None)
    adapter = ADAPTERS.get(model_type)
    if adapter is None:
        raise UnsupportedFamilyError(
            f"{where + ': ' if where else ''}model family {model_type!r} is not supported; bertprune prunes "
            f"{', '.join(sorted(ADAPTERS))} (MiniLM checkpoints are bert). Give a checkpoint of a supported family "
            "(model=minilm, model=bert_base, model=distilbert_base, model=roberta_base, or teacher=<such a folder>), "
            f"or add an adapter for {model_type!r} to bertprune/models/adapters.py "
            "(docs/method.md, \"Model families\").")
    return adapter
