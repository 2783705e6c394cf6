"""One loader for every model bertprune touches: a local folder, a hub name, a tiny random BERT, or
a physically pruned checkpoint (uneven heads / FFN widths per layer, recorded in its config)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

# Keys bertprune adds to a Hugging Face config.json for a physically pruned model.
HEADS_KEY = "bertprune_heads_per_layer"
FFN_KEY = "bertprune_ffn_per_layer"

TASK_HEADS = {"classification": "ForSequenceClassification", "regression": "ForSequenceClassification",
              "qa": "ForQuestionAnswering"}


def _auto_class(kind: str):
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    return AutoModelForQuestionAnswering if kind == "qa" else AutoModelForSequenceClassification


def _is_local(name_or_path: str) -> bool:
    return os.path.sep in name_or_path or name_or_path.startswith(".") or Path(name_or_path).exists()


def check_source(name_or_path: str) -> None:
    """Fail fast for a local folder that is not a Hugging Face checkpoint."""
    if not _is_local(name_or_path):
        return  # a hub name: transformers raises its own error if it cannot be fetched
    p = Path(name_or_path)
    if not p.is_dir():
        raise FileNotFoundError(f"Model folder not found: {p}")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p} is not a Hugging Face checkpoint: no config.json")
    if not any((p / w).is_file() for w in ("model.safetensors", "model.safetensors.index.json")):
        raise FileNotFoundError(
            f"{p} has no model.safetensors; bertprune loads weights only from safetensors "
            "(never pickled .bin files). Convert with `model.save_pretrained(dir)` in a trusted session.")


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def tiny_bert(kind: str, num_labels: int, vocab_size: int, hidden_size: int = 32, num_layers: int = 2,
              num_heads: int = 4, intermediate_size: int = 64, seed: int = 0):
    """A tiny randomly initialised BERT (tests and smoke runs)."""
    from transformers import BertConfig

    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, intermediate_size=intermediate_size,
                        max_position_embeddings=512, num_labels=num_labels,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    torch.manual_seed(seed)
    return _auto_class(kind).from_config(config)


def load_model(name_or_path: str, kind: str = "classification", num_labels: int | None = None,
               require_head: bool = False):
    """Load a model for ``kind`` from a folder or hub name; physically pruned folders included.

    require_head: the checkpoint must already carry a trained head for this task (pruning needs a
    fine-tuned model); a mismatching head raises one clear error.
    """
    from transformers import AutoConfig

    check_source(name_or_path)
    config = AutoConfig.from_pretrained(name_or_path)
    archs = config.architectures or []
    has_head = any(a.endswith(TASK_HEADS[kind]) for a in archs)
    if require_head and not has_head:
        raise ValueError(
            f"{name_or_path} has no {TASK_HEADS[kind]} head (architectures={archs}); it is not fine-tuned for a "
            f"{kind} task. Fine-tune it first (python train.py) or pass a fine-tuned checkpoint.")
    if has_head and num_labels is not None and kind != "qa" and config.num_labels != num_labels:
        raise ValueError(
            f"{name_or_path} was fine-tuned with num_labels={config.num_labels} but the task has "
            f"num_labels={num_labels}: the checkpoint does not fit this task.")
    if getattr(config, HEADS_KEY, None) is not None:
        return _load_pruned(name_or_path, config, kind)
    kwargs = {} if has_head or num_labels is None or kind == "qa" else {"num_labels": num_labels}
    return _auto_class(kind).from_pretrained(name_or_path, **kwargs)


def _load_pruned(path: str, config, kind: str):
    from safetensors.torch import load_file

    model = _auto_class(kind).from_config(config)
    resize_layers(model, getattr(config, HEADS_KEY), getattr(config, FFN_KEY))
    state = load_file(str(Path(path) / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match its pruned config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}); the checkpoint is corrupt.")
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Structure of BERT-family encoders


def encoder_layers(model) -> list[nn.Module]:
    """The transformer layers of a BERT-structured encoder (BERT, RoBERTa, ELECTRA, MiniLM …)."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not hasattr(layers[0], "attention") or not hasattr(layers[0], "intermediate"):
        raise ValueError(
            f"model type {getattr(model.config, 'model_type', '?')!r} does not have a BERT-structured encoder "
            "(encoder.layer[i].attention.self/query, intermediate, output); bertprune prunes BERT, RoBERTa, "
            "ELECTRA and MiniLM-style models.")
    return list(layers)


def head_size(model) -> int:
    return model.config.hidden_size // model.config.num_attention_heads


def layer_shape(layer, d_head: int) -> tuple[int, int]:
    """(heads, ffn width) of one (possibly pruned) layer."""
    att = layer.attention
    heads = 0 if isinstance(att, AttentionBiasOnly) else att.self.query.out_features // d_head
    ffn = 0 if isinstance(layer.output, FeedForwardBiasOnly) else layer.intermediate.dense.out_features
    return heads, ffn


def model_shape(model) -> tuple[list[int], list[int]]:
    d_head = head_size(model)
    shapes = [layer_shape(layer, d_head) for layer in encoder_layers(model)]
    return [h for h, _ in shapes], [f for _, f in shapes]


class AttentionBiasOnly(nn.Module):
    """Replaces a layer's attention block when it keeps 0 heads: only the output bias survives.

    Built on ``device`` / ``dtype`` (those of the layer it replaces: a GPU or float64/float16 model).
    """

    def __init__(self, hidden_size: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype))
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps, device=device, dtype=dtype)

    def forward(self, hidden_states, *args, **kwargs):
        return self.LayerNorm(hidden_states + self.bias), None


class FeedForwardBiasOnly(nn.Module):
    """Replaces a layer's FFN output when it keeps 0 neurons: LayerNorm(input + bias)."""

    def __init__(self, hidden_size: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype))
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps, device=device, dtype=dtype)

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(input_tensor + self.bias)


def resize_layers(model, heads_per_layer: list[int], ffn_per_layer: list[int]) -> None:
    """Give every layer the shapes of a pruned checkpoint (weights are loaded afterwards).

    New modules are built on each layer's own device and dtype.
    """
    layers = encoder_layers(model)
    if len(heads_per_layer) != len(layers) or len(ffn_per_layer) != len(layers):
        raise ValueError(f"pruned config lists {len(heads_per_layer)} head counts / {len(ffn_per_layer)} FFN widths "
                         f"for {len(layers)} layers")
    d, d_head, eps = model.config.hidden_size, head_size(model), model.config.layer_norm_eps
    for layer, n_heads, width in zip(layers, heads_per_layer, ffn_per_layer):
        ref = next(layer.parameters())
        like = {"device": ref.device, "dtype": ref.dtype}
        if n_heads == 0:
            layer.attention = AttentionBiasOnly(d, eps, **like)
        else:
            sa = layer.attention.self
            for name in ("query", "key", "value"):
                setattr(sa, name, nn.Linear(d, n_heads * d_head, **like))
            sa.num_attention_heads, sa.all_head_size = n_heads, n_heads * d_head
            layer.attention.output.dense = nn.Linear(n_heads * d_head, d, **like)
        if width == 0:
            layer.intermediate = nn.Identity()
            layer.output = FeedForwardBiasOnly(d, eps, **like)
        else:
            layer.intermediate.dense = nn.Linear(d, width, **like)
            layer.output.dense = nn.Linear(width, d, **like)


# ----------------------------------------------------------------------------------------------
# Saving


def atomic_dir(final: str | Path):
    """Context manager: write into a temporary sibling folder, move it into place only on success."""
    import contextlib

    final = Path(final)

    @contextlib.contextmanager
    def _ctx():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)

    return _ctx()


def write_checkpoint(model, tokenizer, folder: str | Path, metadata: dict | None = None) -> None:
    """Hugging Face folder: config.json, model.safetensors, tokenizer files [, bertprune.json]."""
    folder = Path(folder)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if metadata is not None:
        (folder / "bertprune.json").write_text(json.dumps(metadata, indent=2, default=str))


def save_checkpoint(model, tokenizer, out_dir: str | Path, metadata: dict | None = None) -> Path:
    """``write_checkpoint`` atomically: nothing half-written is ever left at ``out_dir``."""
    with atomic_dir(out_dir) as tmp:
        write_checkpoint(model, tokenizer, tmp, metadata)
    return Path(out_dir)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def folder_size(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
