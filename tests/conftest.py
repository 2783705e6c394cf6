"""Shared fixtures: a tiny sentiment dataset written as CSV, a composed tiny config, an isolated cache, and
``make_realistic`` (weights that make parity tests able to fail)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from bertprune.config import register
from bertprune.resources import CONF_DIR

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
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:
                p.copy_(std * noise)
    return model


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(cfg)
