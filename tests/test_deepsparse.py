"""runtime=deepsparse (bertprune.onnx.deepsparse_runtime + deepsparse_worker): DeepSparse as a worker process
in its own venv, fed static-shape batches, driven by the same SUT and LoadGen runs as ONNX Runtime.

Most tests run the real worker under this venv's python with a stand-in ``deepsparse`` package
(tests/fakes/deepsparse: ONNX Runtime underneath, refusing any shape it was not compiled for). The last test
runs the real DeepSparse when ``make setup-deepsparse`` has made its venv."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_cfg, csv_task, tiny_onnx, write_variant

from bertprune.onnx import deepsparse_runtime as ds
from bertprune.onnx.deepsparse_runtime import DeepSparseSession, check_runtime, compile_batch_sizes, compile_seq_lens

ROOT = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "fakes"


@pytest.fixture
def fake_python(tmp_path) -> Path:
    """A 'venv python' whose deepsparse is the stand-in: this interpreter with the fakes on its path."""
    exe = tmp_path / "fake-venv" / "bin" / "python"
    exe.parent.mkdir(parents=True)
    exe.write_text(f'#!/bin/sh\nPYTHONPATH="{FAKES}" exec "{sys.executable}" "$@"\n')
    exe.chmod(0o755)
    return exe


def feeds(b, seq, seed=0, real=None):
    rng = np.random.default_rng(seed)
    mask = np.ones((b, seq), np.int64)
    if real is not None:
        mask[:, real:] = 0
    return {"input_ids": rng.integers(1000, 2000, (b, seq)), "input_mask": mask,
            "segment_ids": np.zeros((b, seq), np.int64)}


def ort_logits(path, f):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], f)[0]


def test_compile_batch_sizes_per_scenario():
    assert compile_batch_sizes("SingleStream", 8) == [1]
    assert compile_batch_sizes("Offline", 32) == [32]
    assert compile_batch_sizes("MultiStream", 8) == [8]
    assert compile_batch_sizes("Server", 8) == [1, 2, 4, 8]
    assert compile_batch_sizes("Server", 6) == [1, 2, 4, 6]
    assert compile_batch_sizes("Server", 1) == [1]


def test_compile_seq_lens_are_length_buckets_up_to_max_length():
    assert compile_seq_lens(128) == [32, 64, 128]
    assert compile_seq_lens(100) == [32, 64, 100]
    assert compile_seq_lens(384, fixed=True) == [384]  # QA: per-token outputs at the full length
    assert compile_seq_lens(32) == [32] and compile_seq_lens(16) == [16]
    assert compile_seq_lens(512) == [32, 64, 128, 256, 512]
    assert compile_seq_lens(128, requested="auto") == [32, 64, 128]
    assert compile_seq_lens(128, requested="full") == [128]  # deepsparse_seq_lens=full: no buckets
    assert compile_seq_lens(128, requested=[48, 16]) == [16, 48, 128]  # max_length always compiled
    assert compile_seq_lens(384, fixed=True, requested="full") == [384]


@pytest.mark.parametrize("value, kwargs, match", [
    ("half", {}, r"deepsparse_seq_lens='half'; expected null/auto .*, full .* or a list such as \[32,64\]"),
    ([16, "x"], {}, r"deepsparse_seq_lens=\[16, 'x'\]; expected"),
    ([], {}, r"deepsparse_seq_lens=\[\]; expected"),
    ([32.5], {}, r"deepsparse_seq_lens=\[32.5\]; expected"),
    ([32, 256], {}, r"\[256\] outside \[1, 128\] \(task.max_length\)"),
    ([0], {}, r"\[0\] outside \[1, 128\]"),
    ([32], {"fixed": True}, r"this graph runs at its full length 128 only .*deepsparse_seq_lens=full"),
    ("full", {"runtime": "onnxruntime"}, r"deepsparse_seq_lens='full' is set but runtime=onnxruntime.*add runtime=deepsparse"),
])
def test_bad_deepsparse_seq_lens_get_one_error_naming_the_value(value, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ds.check_seq_lens(value, 128, **kwargs)


def test_good_deepsparse_seq_lens_pass_the_check():
    for value in (None, "auto", "full", [32], [128], [16, 64]):
        ds.check_seq_lens(value, 128)
    ds.check_seq_lens(None, 128, runtime="onnxruntime")
    ds.check_seq_lens([128], 128, fixed=True)


def test_sut_cuts_each_batch_to_the_shortest_compiled_length_that_holds_it():
    from bertprune.scenarios import ScenarioSettings
    from bertprune.mlperf.sut import OrtSUT
    from bertprune.tasks.features import Features

    lengths = np.array([5, 40, 64, 9, 33, 120], np.int64)
    mask = (np.arange(128)[None, :] < lengths[:, None]).astype(np.int64)
    f = Features(input_ids=mask * 7, input_mask=mask, segment_ids=np.zeros_like(mask), labels=np.zeros(6, np.int64))

    class Static:
        seq_lens = [32, 64, 128]
        seen: list = []

        def bucket_length(self, n):
            return next(x for x in self.seq_lens if x >= n)

        def run(self, names, feeds):
            self.seen.append(feeds["input_ids"].shape)
            return [np.zeros((feeds["input_ids"].shape[0], 2), np.float32)]

    session = Static()
    sut = OrtSUT(session, f, ScenarioSettings(name="offline", batch_size=2), "classification")
    for idx, want in (([0], 32), ([0, 3], 32), ([1], 64), ([2, 0], 64), ([4, 5], 128)):
        sut.infer(np.array(idx))
        assert session.seen[-1] == (len(idx), want), (idx, session.seen[-1])
    qa = OrtSUT(session, f, ScenarioSettings(name="offline", batch_size=2), "qa")  # per-token outputs: full length
    try:
        qa.infer(np.array([0]))
    except Exception:  # noqa: BLE001 - the stand-in returns classification outputs; only the shape it got matters
        pass
    assert session.seen[-1] == (1, 128)


def test_session_pads_short_batches_and_cuts_long_ones_to_the_compiled_shapes(fake_python, tmp_path, monkeypatch):
    log = tmp_path / "engine.log"
    monkeypatch.setenv("FAKE_DEEPSPARSE_LOG", str(log))
    monkeypatch.setenv("FAKE_DEEPSPARSE_MS", json.dumps({"16": 5}))  # the short engine is the faster: kept
    path = tiny_onnx(tmp_path / "m.onnx")
    with DeepSparseSession(path, 16, [1, 4], python=str(fake_python), num_cores=2, seq_lens=[8, 16]) as s:
        assert s.provider == "DeepSparse 0.0+fake" and s.output_names == ["logits"]
        assert s.info["batch_sizes"] == [1, 4] and s.info["ir"] == 9 and s.info["zeros"] == 0.0
        assert s.info["seq_lens"] == [8, 16] and [s.bucket_length(n) for n in (1, 8, 9, 16)] == [8, 8, 16, 16]
        for b in (1, 3, 4, 5, 9):
            f = feeds(b, 16, seed=b, real=11)
            out = s.run(["logits"], f)[0]
            assert out.shape == (b, 2)
            np.testing.assert_allclose(out, ort_logits(path, f), rtol=1e-5, atol=1e-6)
        # a batch cut to the short bucket: the outputs of the full length (the padding is masked)
        full = feeds(3, 16, seed=7, real=6)
        short = {k: v[:, :8] for k, v in full.items()}
        np.testing.assert_allclose(s.run(["logits"], short)[0], ort_logits(path, full), rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match=r"compiled for \[batch, L\] with L in \[8, 16\] \(static shapes"):
            s.run(["logits"], feeds(2, 12))  # not a compiled length: the SUT never sends one
        stats = s.stats()
        assert stats["calls"] == 6 and 0 < stats["engine_s"] <= stats["roundtrip_s"]
    with pytest.raises(ValueError, match=r"seq_lens=\[8, 32\]: expected positive lengths whose longest is seq_len=16"):
        DeepSparseSession(path, 16, [1], python=str(fake_python), seq_lens=[8, 32])
    entries = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(e["batch_size"], e["input_shapes"][0][1]) for e in entries if e["op"] == "compile"] == [
        (1, 8), (4, 8), (1, 16), (4, 16)]
    entries = [e for e in entries if e["op"] == "run"][16:]  # after the 4 x (1 warm-up + 3 timed) engine timings
    assert all(e["input_shapes"] == [e["input_shapes"][0]] * 3 for e in entries if e["op"] == "compile")
    # b = 1, 3 (padded to 4), 4, 5 (4 + 1), 9 (4 + 4 + 1), then 3 at length 8: every call at a compiled shape
    assert [e["shapes"][0] for e in entries if e["op"] == "run"] == [
        [1, 16], [4, 16], [4, 16], [4, 16], [1, 16], [4, 16], [4, 16], [1, 16], [4, 8]]


def test_a_length_whose_engine_is_slower_runs_at_a_longer_one(fake_python, tmp_path, monkeypatch):
    """A sparse engine can be slower at 32 tokens than at 64 (measured: DeepSparse on the OBS 80 % model,
    batch 32): the worker times its engines and sends such batches, padded with masked columns, to the faster
    longer engine, with the outputs of the short length."""
    log = tmp_path / "engine.log"
    monkeypatch.setenv("FAKE_DEEPSPARSE_LOG", str(log))
    monkeypatch.setenv("FAKE_DEEPSPARSE_MS", json.dumps({"8": 20, "16": 2}))  # length 8 slower than 16
    path = tiny_onnx(tmp_path / "m.onnx")
    with DeepSparseSession(path, 16, [2], python=str(fake_python), seq_lens=[8, 16]) as s:
        assert s.info["routes"] == {"8": {"2": 16}, "16": {"2": 16}}
        assert s.info["bucket_ms"]["8"]["2"] > s.info["bucket_ms"]["16"]["2"]
        full = feeds(2, 16, seed=3, real=5)
        out = s.run(["logits"], {k: v[:, :8] for k, v in full.items()})[0]
        np.testing.assert_allclose(out, ort_logits(path, full), rtol=1e-5, atol=1e-6)
    runs = [json.loads(x)["shapes"][0] for x in log.read_text().splitlines() if json.loads(x)["op"] == "run"]
    assert runs[-1] == [2, 16]  # the 8-token batch ran on the 16-token engine
    monkeypatch.setenv("FAKE_DEEPSPARSE_MS", json.dumps({"8": 2, "16": 20}))
    with DeepSparseSession(path, 16, [2], python=str(fake_python), seq_lens=[8, 16]) as s:
        assert s.info["routes"] == {"8": {"2": 8}, "16": {"2": 16}}  # the short engine is faster: kept
    monkeypatch.setenv("FAKE_DEEPSPARSE_MS", json.dumps({"8": 21, "16": 20}))
    with DeepSparseSession(path, 16, [2], python=str(fake_python), seq_lens=[8, 16]) as s:
        assert s.info["routes"]["8"] == {"2": 8}  # 5 % faster is within timing noise: kept


def test_worker_refuses_a_file_that_changed_after_export(fake_python, tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(RuntimeError, match=r"sha256 .* differs from the 0{64} its export recorded"):
        DeepSparseSession(path, 16, [1], python=str(fake_python), sha256="0" * 64)


def test_runtime_checks_name_the_value_and_the_fix(fake_python, tmp_path):
    assert check_runtime("onnxruntime") is None
    with pytest.raises(ValueError, match=r"deepsparse_python=.* is set but runtime=onnxruntime.*add runtime=deepsparse"):
        check_runtime("onnxruntime", str(fake_python))
    info = check_runtime("deepsparse", str(fake_python))
    assert info["deepsparse"] == "0.0+fake" and info["python"] == str(fake_python)
    with pytest.raises(ValueError, match=r"runtime='tensorrt'; expected one of \('onnxruntime', 'deepsparse'\)"):
        check_runtime("tensorrt")
    with pytest.raises(ValueError, match="CPU only, but hardware.runtime_device=cuda"):
        check_runtime("deepsparse", str(fake_python), device="cuda")
    with pytest.raises(FileNotFoundError, match=r"no Python interpreter at .*nowhere.*make setup-deepsparse"):
        check_runtime("deepsparse", str(tmp_path / "nowhere" / "python"))
    with pytest.raises(RuntimeError, match=r"cannot import deepsparse .*ModuleNotFoundError.*make setup-deepsparse"):
        check_runtime("deepsparse", sys.executable)  # bertprune's own venv has no deepsparse
    assert ds.default_python() == str(ROOT / ".venv-deepsparse" / "bin" / "python")


def test_bench_config_takes_the_runtime_and_refuses_unknown_ones(tmp_path):
    cfg = compose_cfg("bench", ["source=x"], tmp_path)
    assert cfg.runtime == "onnxruntime" and cfg.deepsparse_python is None
    cfg = compose_cfg("bench", ["source=x", "runtime=deepsparse", "deepsparse_python=/opt/ds/bin/python"], tmp_path)
    assert cfg.runtime == "deepsparse" and cfg.deepsparse_python == "/opt/ds/bin/python"
    with pytest.raises(Exception, match="runtime"):
        compose_cfg("bench", ["source=x", "runtime=tensorrt"], tmp_path)
    assert compose_cfg("bench", ["source=x"], tmp_path).deepsparse_seq_lens is None
    assert compose_cfg("bench", ["source=x", "deepsparse_seq_lens=full"], tmp_path).deepsparse_seq_lens == "full"
    assert list(compose_cfg("bench", ["source=x", "deepsparse_seq_lens=[32,64]"], tmp_path).deepsparse_seq_lens) == [32, 64]


def test_bench_refuses_bad_seq_lens_before_any_run(tiny_data, fake_python, tmp_path):
    from bertprune.jobs.bench import run_bench

    variant = write_variant(tmp_path / "v", "dense")
    out = tmp_path / "bench"
    with pytest.raises(ValueError, match=r"\[128\] outside \[1, 64\]"):
        run_bench(variant, csv_task(tiny_data, max_length=64), ["offline"], output_dir=out, runtime="deepsparse",
                  deepsparse_python=str(fake_python), deepsparse_seq_lens=[32, 128], write_back=False)
    with pytest.raises(ValueError, match=r"deepsparse_seq_lens='full' is set but runtime=onnxruntime"):
        run_bench(variant, csv_task(tiny_data, max_length=64), ["offline"], output_dir=out, deepsparse_seq_lens="full",
                  write_back=False)
    assert not out.exists()


def test_prune_checks_deepsparse_lengths_against_the_task_before_any_work(tiny_cfg, fake_python, monkeypatch):
    import bertprune.jobs.train as train
    from bertprune.jobs.prune import prune

    monkeypatch.setattr(train, "ensure_teacher", lambda cfg: pytest.fail("teacher must not be trained"))
    monkeypatch.setattr("bertprune.evaluation.load_task_data", lambda *a: pytest.fail("data must not be loaded"))
    cfg = tiny_cfg("prune", ["bench=true", "bench_options.runtime=deepsparse", "bench_options.deepsparse_seq_lens=[16,64]",
                             f"bench_options.deepsparse_python={fake_python}"])  # task.max_length=32
    with pytest.raises(ValueError, match=r"\[64\] outside \[1, 32\] \(task.max_length\)"):
        prune(cfg)
    assert not (Path(cfg.output_dir) / "results.json").exists()


@pytest.mark.integration
def test_bench_deepsparse_seq_lens_full_runs_every_batch_at_max_length(tiny_data, fake_python, tmp_path, monkeypatch):
    """deepsparse_seq_lens=full from the command line: one engine length, task.max_length, for every call."""
    log = tmp_path / "engine.log"
    variant = write_variant(tmp_path / "v", "dense")
    train, dev = tiny_data
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "bench.py"), f"source={variant}", "task=csv", f"task.train_file={train}",
           f"task.validation_file={dev}", "task.max_length=64", "runtime=deepsparse", "scenario=[offline]",
           "scenario.offline.min_duration_ms=300", "scenario.offline.calibration_s=0.2", "mode=performance",
           f"deepsparse_python={fake_python}", "deepsparse_seq_lens=full", "wandb_write_back=false",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "FAKE_DEEPSPARSE_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(x)["shapes"][0] for x in log.read_text().splitlines() if json.loads(x)["op"] == "run"]
    assert runs and {s[1] for s in runs} == {64}, runs[:10]
    result = json.loads(next(run_dir.rglob("Offline/performance/result.json")).read_text())
    assert result["runtime_info"]["seq_lens"] == [64]


@pytest.mark.integration
def test_bench_cli_refuses_a_missing_deepsparse_venv_before_any_run(tiny_data, tmp_path):
    variant = write_variant(tmp_path / "v", "dense")
    train, dev = tiny_data
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "bench.py"), f"source={variant}", "task=csv", f"task.train_file={train}",
           f"task.validation_file={dev}", "task.max_length=32", "runtime=deepsparse",
           f"deepsparse_python={tmp_path / 'none' / 'python'}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1
    assert "no Python interpreter at" in proc.stderr and "make setup-deepsparse" in proc.stderr
    assert not (run_dir / "summary.json").exists() and not (run_dir / "dense").exists()


@pytest.mark.integration
def test_bench_runs_every_scenario_on_deepsparse_and_says_so(tiny_data, fake_python, tmp_path, monkeypatch):
    """LoadGen over the worker: every scenario VALID, accuracy mode equal to the direct evaluation, the rows,
    summary and submission tree naming DeepSparse, and every engine call at a compiled shape."""
    from bertprune.jobs.bench import run_bench
    from bertprune.scenarios import ScenarioSettings

    log = tmp_path / "engine.log"
    monkeypatch.setenv("FAKE_DEEPSPARSE_LOG", str(log))
    monkeypatch.setenv("FAKE_DEEPSPARSE_MS", json.dumps({"64": 3}))  # the 32-token engines are the faster: kept
    variant = write_variant(tmp_path / "v", "dense")
    fast = dict(min_duration_ms=300, calibration_s=0.2)
    scen = [ScenarioSettings(name="offline", batch_size=8, **fast), ScenarioSettings(name="single_stream", **fast),
            ScenarioSettings(name="server", batch_size=4, workers=2, min_duration_ms=1500, calibration_s=0.2),
            ScenarioSettings(name="multi_stream", batch_size=8, **fast)]
    out = tmp_path / "bench"
    summary = run_bench(variant, csv_task(tiny_data, max_length=64), scen, mode="both", output_dir=out, runtime="deepsparse",
                        deepsparse_python=str(fake_python), system_name="box", write_back=False)
    assert summary.complete, [r.error for r in summary.rows]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["scenario"] for r in rows] == ["Offline", "SingleStream", "Server", "MultiStream"]
    for r in rows:
        assert r["valid"] == "VALID" and r["runtime"] == "DeepSparse 0.0+fake", r
        assert r["metric_value"] == r["direct_metric_value"]
    meta = json.loads((out / "summary.json").read_text())
    assert meta["runtime"] == "deepsparse"
    perf = next(x for x in meta["runs"] if x["scenario"] == "Server" and x["mode"] == "performance")
    assert perf["runtime"] == "deepsparse" and perf["runtime_info"]["batch_sizes"] == [1, 2, 4]
    assert perf["runtime_info"]["calls"] > 0 and perf["runtime_info"]["hop_ms_per_call"] is not None
    sub = out / "submission" / "open" / "bertprune"
    system = json.loads((sub / "systems" / "box.json").read_text())
    assert system["framework"] == "deepsparse 0.0+fake" and "DeepSparse 0.0+fake" in system["sw_notes"]
    assert "run with DeepSparse" in (sub / "src" / "README.md").read_text()
    assert "runtime=deepsparse" in (sub / "results" / "box" / "csv-dense" / "Offline" / "README.md").read_text()
    runs = [json.loads(x)["shapes"][0] for x in log.read_text().splitlines() if json.loads(x)["op"] == "run"]
    # length buckets 32 and 64 (task.max_length): the tiny reviews are short, so most batches run at 32
    assert runs and {s[1] for s in runs} <= {32, 64} and any(s[1] == 32 for s in runs), runs[:20]
    assert perf["runtime_info"]["seq_lens"] == [32, 64]
    assert {s[0] for s in runs} <= {1, 2, 4, 8}


def _real_deepsparse() -> str | None:
    exe = ds.default_python()
    return exe if os.path.isfile(exe) else None


@pytest.mark.integration
@pytest.mark.skipif(_real_deepsparse() is None, reason="no DeepSparse venv: make setup-deepsparse makes it (CI tries; x86-64 wheels only)")
def test_real_deepsparse_agrees_with_onnx_runtime(tmp_path):
    info = check_runtime("deepsparse")
    assert info["deepsparse"] == "1.8.0"
    path = tiny_onnx(tmp_path / "m.onnx")
    import onnx

    model = onnx.load(str(path))
    model.ir_version = 10  # as torch's exporter writes: the worker lowers it
    onnx.save(model, str(path))
    with DeepSparseSession(path, 16, [1, 4], seq_lens=[8, 16]) as s:
        assert s.provider == "DeepSparse 1.8.0" and s.info["ir"] == 10
        for b in (1, 3, 6):
            f = feeds(b, 16, seed=b, real=9)
            np.testing.assert_allclose(s.run(None, f)[0], ort_logits(path, f), rtol=1e-4, atol=1e-5)
            short = feeds(b, 16, seed=b, real=5)  # cut to the 8-token engine: the full length's outputs
            np.testing.assert_allclose(s.run(None, {k: v[:, :8] for k, v in short.items()})[0],
                                       ort_logits(path, short), rtol=1e-4, atol=1e-5)
