"""bench.py / bertprune.bench: sweep -> LoadGen runs -> summary table, plot and MLPerf submission tree;
bad inputs fail before anything runs; failed or interrupted runs are marked, never dropped."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF, compose_cfg
from test_harness import csv_task, minilm_dir, tiny_onnx, write_variant

from bertprune import harness
from bertprune.bench import bench, run_bench
from bertprune.bench_callback import LoadgenCallback
from bertprune.harness import SCENARIOS, ScenarioSettings

ROOT = Path(__file__).resolve().parents[1]
FAST = ["scenario.offline.min_duration_ms=500", "scenario.offline.calibration_s=0.3",
        "scenario.single_stream.min_duration_ms=500", "scenario.single_stream.calibration_s=0.3"]


def task_overrides(tiny_data) -> list[str]:
    train, dev = tiny_data
    return ["task=csv", f"task.train_file={train}", f"task.validation_file={dev}", "task.max_length=32"]


def make_sweep(root: Path) -> Path:
    """A prune sweep as the export stage leaves it: dense reference + one job with FP32 and INT8."""
    write_variant(root / "dense" / "onnx", "dense", mac_ratio=1.0)
    write_variant(root / "0" / "onnx_int8", "c0.50-int8", precision="int8", mac_ratio=0.5, constraint=0.5, seed=1)
    return root


def test_bench_config_composes_scenarios_as_a_group(tmp_path):
    cfg = compose_cfg("bench", ["source=x"], tmp_path)
    assert list(cfg.scenario) == ["offline", "single_stream"]  # the defaults
    assert cfg.mode == "both" and cfg.submission is False and cfg.task.name == "rotten_tomatoes"
    cfg = compose_cfg("bench", ["source=x", "scenario=[offline,single_stream,server,multi_stream]",
                                "scenario.server.batch_size=4"], tmp_path)
    settings = harness.resolve_scenarios(dict(cfg.scenario))
    assert [s.loadgen for s in settings] == ["Offline", "SingleStream", "Server", "MultiStream"]
    assert settings[2].batch_size == 4
    for name in SCENARIOS:  # every group file is keyed by its name and has exactly the dataclass keys
        file_cfg = compose_cfg("bench", ["source=x", f"scenario=[{name}]"], tmp_path).scenario[name]
        assert ScenarioSettings.from_config(name, file_cfg).loadgen == SCENARIOS[name]
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="scenario/foo"):
        compose_cfg("bench", ["source=x", "scenario=[offline,foo]"], tmp_path)


def test_bench_sweep_end_to_end(tiny_data, tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    out = tmp_path / "bench"
    cfg = compose_cfg("bench", [f"source={sweep}", *task_overrides(tiny_data), "scenario=[offline,single_stream]",
                                *FAST, "mode=both", "system_name=testbox", "submitter=lab"], out)
    summary = bench(cfg)
    assert summary.complete
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["variant"], r["scenario"]) for r in rows] == [
        ("dense", "Offline"), ("dense", "SingleStream"), ("c0.50-int8", "Offline"), ("c0.50-int8", "SingleStream")]
    for r in rows:
        assert r["status"] == "ok" and r["valid"] == "VALID", r["error"]
        assert float(r["throughput"]) > 0
        assert r["accuracy"] == r["direct_accuracy"] and 0 <= float(r["accuracy"]) <= 100
        assert float(r["file_size_mb"]) > 0
    assert {r["precision"] for r in rows} == {"fp32", "int8"}
    assert all(float(r["latency_p90_ms"]) > 0 for r in rows if r["scenario"] == "SingleStream")
    md = (out / "summary.md").read_text()
    assert "| dense | fp32 | 1 | Offline | VALID |" in md and "INCOMPLETE" not in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "summary.json").read_text())
    assert meta["complete"] is True and len(meta["runs"]) == 8
    assert (out / "dense" / "Offline" / "performance" / "mlperf_log_summary.txt").is_file()

    # MLPerf open-division tree (v6.0 layout)
    sub = out / "submission" / "open" / "lab"
    system = json.loads((sub / "systems" / "testbox.json").read_text())
    for key in ("division", "submitter", "status", "system_name", "host_processor_model_name",
                "host_processor_core_count", "host_memory_capacity", "framework", "operating_system",
                "accelerators_per_node", "accelerator_model_name", "other_software_stack", "system_type"):
        assert system[key] not in (None, ""), key
    assert system["division"] == "open" and system["submitter"] == "lab"
    assert system["framework"].startswith("onnxruntime ")
    assert json.loads((sub / "model_mapping.json").read_text()) == {"csv-dense": "bert-99",
                                                                      "csv-c0.50-int8": "bert-99"}
    assert (sub / "src" / "README.md").is_file()
    for model, precision in (("csv-dense", "fp32"), ("csv-c0.50-int8", "int8")):
        for scen in ("Offline", "SingleStream"):
            d = sub / "results" / "testbox" / model / scen
            perf = d / "performance" / "run_1"
            assert "Result is : VALID" in (perf / "mlperf_log_summary.txt").read_text()
            assert (perf / "mlperf_log_detail.txt").is_file()
            for f in ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json"):
                assert (d / "accuracy" / f).is_file(), f
            assert "accuracy" in json.loads((d / "accuracy" / "accuracy.txt").read_text())
            assert f"bert.{scen}." in (d / "user.conf").read_text()
            m = json.loads((d / "measurements.json").read_text())
            assert m["input_data_types"] == "int64" and m["weight_data_types"] == precision
            assert m["retraining"] == "no" and m["starting_weights_filename"] == "/models/teacher"
            if precision == "int8":
                assert m["weight_transformations"].startswith("pruned (Kwon et al. 2022")
                assert "INT8" in m["weight_transformations"]


def test_bad_inputs_fail_before_anything_runs(tiny_data, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(harness, "run_isolated", lambda *a, **k: calls.append(a))
    task = csv_task(tiny_data)
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="bench source not found"):
        run_bench(tmp_path / "missing", task, ["offline"], output_dir=out)
    sweep = make_sweep(tmp_path / "sweep")
    with pytest.raises(ValueError, match="unknown scenario 'offlin'"):
        run_bench(sweep, task, ["offlin"], output_dir=out)
    with pytest.raises(ValueError, match="mode='perf'"):
        run_bench(sweep, task, ["offline"], mode="perf", output_dir=out)
    bad = sweep / "1" / "onnx"
    bad.mkdir(parents=True)
    (bad / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    (bad / "model.json").write_text(json.dumps({"variant": "c0.40"}))
    with pytest.raises(ValueError, match=r"1/onnx/model.onnx is not a readable ONNX model"):
        run_bench(sweep, task, ["offline"], output_dir=out)
    tiny_onnx(bad / "model.onnx", names=("input_ids", "attention_mask", "segment_ids"))
    with pytest.raises(ValueError, match="do not match the MLPerf BERT interface"):
        run_bench(sweep, task, ["offline"], output_dir=out)
    tiny_onnx(bad / "model.onnx", kind="qa", seq=32)
    with pytest.raises(ValueError, match="must output 'logits'"):
        run_bench(sweep, task, ["offline"], output_dir=out)
    bare = tiny_onnx(tmp_path / "bare.onnx")
    with pytest.raises(ValueError, match="names no tokenizer.*tokenizer="):
        run_bench(bare, task, ["offline"], output_dir=out)
    assert calls == [] and not out.exists()


def test_failed_and_interrupted_runs_are_marked_not_dropped(tiny_data, tmp_path, monkeypatch):
    """A variant whose inference breaks at run time is a failed row; Ctrl-C leaves an incomplete summary."""
    task = csv_task(tiny_data)
    sweep = make_sweep(tmp_path / "sweep")
    # passes the interface check, fails inside ONNX Runtime: token ids beyond its 100-row embedding
    write_variant(sweep / "1" / "onnx", "c0.40", mac_ratio=0.4, constraint=0.4, vocab=100)
    out = tmp_path / "bench"
    summary = run_bench(sweep, task, [ScenarioSettings(name="offline", min_duration_ms=500, calibration_s=0.3)],
                        mode="accuracy", output_dir=out)
    assert not summary.complete
    rows = {r.variant: r for r in summary.rows}
    assert set(rows) == {"dense", "c0.40", "c0.50-int8"}
    assert rows["c0.40"].status == "failed" and "inference failed" in rows["c0.40"].error
    assert rows["dense"].status == "ok" and rows["dense"].accuracy == rows["dense"].direct_accuracy
    md = (out / "summary.md").read_text()
    assert md.startswith("**INCOMPLETE") and "| c0.40 |" in md and "failed" in md
    assert json.loads((out / "summary.json").read_text())["complete"] is False
    assert "csv-c0.40" not in json.loads((out / "submission" / "open" / "bertprune" / "model_mapping.json").read_text())

    # Ctrl-C during the second run: the summary is written, says incomplete, lists every variant
    real = harness.run_isolated
    n = {"calls": 0}

    def interrupt_second(spec, **kw):
        n["calls"] += 1
        if n["calls"] == 2:
            raise KeyboardInterrupt
        return real(spec, **kw)

    monkeypatch.setattr(harness, "run_isolated", interrupt_second)
    out2 = tmp_path / "bench2"
    (out2).mkdir()
    (out2 / "summary.json").write_text('{"complete": true}')  # stale, from an earlier run
    with pytest.raises(KeyboardInterrupt):
        run_bench(sweep, task, [ScenarioSettings(name="offline", min_duration_ms=500, calibration_s=0.3)],
                  mode="accuracy", output_dir=out2)
    meta = json.loads((out2 / "summary.json").read_text())
    assert meta["complete"] is False and meta["interrupted"] is True
    statuses = {r["variant"]: r["status"] for r in meta["rows"]}
    assert list(statuses.values()).count("interrupted") == 2 and len(statuses) == 3


def test_loadgen_callback_benchmarks_the_exported_folders(tiny_data, tmp_path):
    run_dir = tmp_path / "job"
    write_variant(run_dir / "onnx", "c0.50", mac_ratio=0.5, constraint=0.5, tokenizer="/nonexistent")
    meta = json.loads((run_dir / "onnx" / "model.json").read_text())
    del meta["tokenizer"]  # fall back to the checkpoint's tokenizer
    (run_dir / "onnx" / "model.json").write_text(json.dumps(meta))
    cb = LoadgenCallback(scenarios=["offline"], mode="performance", min_duration_ms=500)
    cb.scenarios[0].calibration_s = 0.3
    out = cb.on_variant_saved(run_dir, minilm_dir(), csv_task(tiny_data), {})
    assert out["bench/offline/valid"] is True and out["bench/offline/throughput"] > 0
    assert out["bench/complete"] is True and Path(out["bench/summary"]).is_file()
    assert (run_dir / "bench" / "c0.50" / "Offline" / "performance" / "mlperf_log_summary.txt").is_file()
    assert LoadgenCallback().on_variant_saved(tmp_path / "empty", minilm_dir(), csv_task(tiny_data), {}) == {}


def test_bench_cli(tiny_data, tmp_path):
    variant = write_variant(tmp_path / "v", "dense")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "bench.py"), f"source={variant}", *task_overrides(tiny_data),
           "scenario=[offline]", "mode=accuracy", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| dense | fp32 | 1 | Offline |" in proc.stdout
    meta = json.loads((run_dir / "summary.json").read_text())
    assert meta["complete"] and meta["rows"][0]["accuracy"] == meta["rows"][0]["direct_accuracy"]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert Path(CONF, "bench.yaml").is_file()
