"""One loader for every model bertprune touches: a local folder, a hub name, a tiny random model of a
supported family, or a physically pruned checkpoint (uneven heads / FFN widths per layer, recorded in
its config). Everything family-specific goes through ``bertprune.models.adapters``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bertprune.hub import hub_errors
from bertprune.io import atomic_dir, atomic_write_text
from bertprune.models.adapters import FAMILIES, FFN_KEY, HEADS_KEY, adapter_for
from bertprune.tasks.kinds import TaskKind, get_kind

def _is_local(name_or_path: str) -> bool:
    """A folder (existing, or written as a path) rather than a hub name ("bert-base-uncased", "org/name")."""
    return (Path(name_or_path).exists() or name_or_path.startswith((".", "/", "~"))
            or name_or_path.count("/") > 1 or (os.path.sep != "/" and os.path.sep in name_or_path))


def check_safetensors(path: str | Path) -> None:
    """Cheap integrity check of a .safetensors file (its header only, no tensor is read): the header
    parses and the file is exactly as long as the header says. A truncated or corrupt file raises one
    clear error naming it."""
    path = Path(path)
    size = path.stat().st_size

    def bad(detail: str):
        return ValueError(f"{path} is truncated or corrupt ({detail}); re-copy it or re-save the checkpoint "
                          "(model.save_pretrained)")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > 100 << 20:
            raise bad(f"header length {n} does not fit a file of {size} bytes")
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise bad("its header is not valid safetensors JSON") from None
    if 8 + n + end != size:
        raise bad(f"its header describes {8 + n + end} bytes, the file has {size}")


def check_source(name_or_path: str) -> None:
    """Fail fast for a local folder that is not a Hugging Face checkpoint, or whose weights are truncated."""
    if not _is_local(name_or_path):
        return  # a hub name: load_model / load_tokenizer turn a missing network into one clear error
    p = Path(name_or_path)
    if not p.is_dir():
        raise FileNotFoundError(f"Model folder not found: {p}")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p} is not a Hugging Face checkpoint: no config.json")
    if (p / "model.safetensors").is_file():
        check_safetensors(p / "model.safetensors")
    elif (p / "model.safetensors.index.json").is_file():
        try:
            shards = sorted(set(json.loads((p / "model.safetensors.index.json").read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError):
            raise ValueError(f"{p / 'model.safetensors.index.json'} is corrupt: no weight_map") from None
        for shard in shards:
            if not (p / shard).is_file():
                raise FileNotFoundError(f"{p} lacks the weight shard {shard} listed in model.safetensors.index.json")
            check_safetensors(p / shard)
    else:
        raise FileNotFoundError(
            f"{p} has no model.safetensors; bertprune loads weights only from safetensors "
            "(never pickled .bin files). Convert with `model.save_pretrained(dir)` in a trusted session.")


def load_config(name_or_path: str):
    """The Hugging Face config of a checkpoint folder or hub name (a missing network: one clear error)."""
    from transformers import AutoConfig

    check_source(name_or_path)
    with hub_errors(name_or_path):
        return AutoConfig.from_pretrained(name_or_path)


def check_prunable(name_or_path: str, kind: str | TaskKind = "classification", num_labels: int | None = None,
                   require_head: bool = False) -> None:
    """Refuse a model of a family without an adapter (``bertprune.models.adapters``) or whose modules do
    not have its family's layout (or, with ``require_head``, a checkpoint without a fitting fine-tuned
    head), from its config alone: the architecture is built on the meta device (no weights read, no
    memory), before any teacher is fine-tuned."""
    config = load_config(name_or_path)
    adapter = adapter_for(config, where=name_or_path)
    _check_head(name_or_path, config, kind, num_labels, require_head)
    with torch.device("meta"):
        model = get_kind(kind).auto_model_class().from_config(config)
    try:
        adapter.layers(model)
    except ValueError as e:
        raise ValueError(f"{name_or_path}: {e}. Give a checkpoint saved by transformers for this family "
                         "(e.g. model=minilm or model=bert_base, or teacher=<a fine-tuned folder>).") from None


def _check_head(name_or_path: str, config, kind: str | TaskKind, num_labels: int | None, require_head: bool) -> bool:
    """Whether the checkpoint carries a head for ``kind``; one clear error if it is missing but
    required, or was fine-tuned for another number of labels."""
    kind = get_kind(kind)
    archs = config.architectures or []
    has_head = any(a.endswith(kind.head) for a in archs)
    if require_head and not has_head:
        raise ValueError(
            f"{name_or_path} has no {kind.head} head (architectures={archs}); it is not fine-tuned for a "
            f"{kind.name} task. Fine-tune it first (python train.py) or pass a fine-tuned checkpoint.")
    if has_head and num_labels is not None and kind.sized_head and config.num_labels != num_labels:
        raise ValueError(
            f"{name_or_path} was fine-tuned with num_labels={config.num_labels} but the task has "
            f"num_labels={num_labels}: the checkpoint does not fit this task.")
    return has_head


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    with hub_errors(name_or_path, "tokenizer", "model.tokenizer=/path/to/a/local/folder"):
        return AutoTokenizer.from_pretrained(name_or_path)


def tiny_bert(kind: str | TaskKind, num_labels: int, vocab_size: int, hidden_size: int = 32, num_layers: int = 2,
              num_heads: int = 4, intermediate_size: int = 64, seed: int = 0, family: str = "bert"):
    """A tiny randomly initialised model of ``family`` (bert, distilbert, roberta; tests and smoke runs)."""
    config = _family(family).tiny_config(vocab_size, hidden_size, num_layers, num_heads, intermediate_size, num_labels)
    torch.manual_seed(seed)
    return get_kind(kind).auto_model_class().from_config(config)


def _family(family: str):
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[family]


@dataclass(frozen=True)
class TinyBert:
    """The architecture of a tiny randomly initialised model (``conf/model/tiny.yaml``'s ``random_init``);
    ``family``: bert (default), distilbert or roberta."""

    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 64
    family: str = "bert"

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key}={value!r} must be an integer >= 1")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        _family(self.family)

    def build(self, kind: str | TaskKind, num_labels: int, vocab_size: int, seed: int = 0):
        return tiny_bert(kind, num_labels, vocab_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
                         num_heads=self.num_heads, intermediate_size=self.intermediate_size, seed=seed,
                         family=self.family)


def load_model(name_or_path: str, kind: str | TaskKind = "classification", num_labels: int | None = None,
               require_head: bool = False):
    """Load a model for ``kind`` from a folder or hub name; physically pruned folders included.

    require_head: the checkpoint must already carry a trained head for this task (pruning needs a
    fine-tuned model); a mismatching head raises one clear error.
    """
    kind = get_kind(kind)
    config = load_config(name_or_path)
    has_head = _check_head(name_or_path, config, kind, num_labels, require_head)
    if getattr(config, HEADS_KEY, None) is not None:
        return _load_pruned(name_or_path, config, kind)
    kwargs = {} if has_head or num_labels is None or not kind.sized_head else {"num_labels": num_labels}
    with hub_errors(name_or_path):
        return kind.auto_model_class().from_pretrained(name_or_path, **kwargs)


def _load_pruned(path: str, config, kind: TaskKind):
    from safetensors.torch import load_file

    model = kind.auto_model_class().from_config(config)
    resize_layers(model, getattr(config, HEADS_KEY), getattr(config, FFN_KEY))
    state = load_file(str(Path(path) / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match its pruned config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}); the checkpoint is corrupt.")
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Structure of an encoder (through its family's adapter)


def encoder_layers(model) -> list[nn.Module]:
    """The transformer layers of a model of a supported family."""
    return adapter_for(model).layers(model)


def head_size(model) -> int:
    return adapter_for(model).head_size(model.config)


def model_inputs(model, batch: dict) -> dict:
    """The Hugging Face inputs ``model``'s family reads (``input_ids``, ``attention_mask`` [, ``token_type_ids``]
    ``[b, s]``) out of a batch."""
    return adapter_for(model).model_inputs(batch)


def model_shape(model) -> tuple[list[int], list[int]]:
    """(heads per layer, FFN width per layer) of a dense or pruned model."""
    adapter = adapter_for(model)
    d_head = adapter.head_size(model.config)
    shapes = [adapter.layer_shape(layer, d_head) for layer in adapter.layers(model)]
    return [h for h, _ in shapes], [f for _, f in shapes]


def resize_layers(model, heads_per_layer: list[int], ffn_per_layer: list[int]) -> None:
    """Give every layer the shapes of a pruned checkpoint (weights are loaded afterwards).

    New modules are built on each layer's own device and dtype.
    """
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    if len(heads_per_layer) != len(layers) or len(ffn_per_layer) != len(layers):
        raise ValueError(f"pruned config lists {len(heads_per_layer)} head counts / {len(ffn_per_layer)} FFN widths "
                         f"for {len(layers)} layers")
    d, d_head = adapter.hidden_size(model.config), adapter.head_size(model.config)
    for layer, n_heads, width in zip(layers, heads_per_layer, ffn_per_layer):
        ref = next(layer.parameters())
        like = {"device": ref.device, "dtype": ref.dtype}
        if n_heads == 0:
            adapter.empty_attention(layer, model.config)
        else:
            adapter.set_attention(layer, *(nn.Linear(d, n_heads * d_head, **like) for _ in range(3)),
                                  nn.Linear(n_heads * d_head, d, **like), n_heads)
        if width == 0:
            adapter.empty_ffn(layer, model.config)
        else:
            adapter.set_ffn(layer, nn.Linear(d, width, **like), nn.Linear(width, d, **like))


# ----------------------------------------------------------------------------------------------
# Saving


def write_checkpoint(model, tokenizer, folder: str | Path, metadata: dict | None = None) -> None:
    """Hugging Face folder: config.json, model.safetensors, tokenizer files [, bertprune.json]."""
    folder = Path(folder)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if metadata is not None:
        atomic_write_text(folder / "bertprune.json", json.dumps(metadata, indent=2, default=str))


def save_checkpoint(model, tokenizer, out_dir: str | Path, metadata: dict | None = None) -> Path:
    """``write_checkpoint`` atomically: nothing half-written is ever left at ``out_dir``."""
    with atomic_dir(out_dir) as tmp:
        write_checkpoint(model, tokenizer, tmp, metadata)
    return Path(out_dir)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def folder_size(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
