"""bench.py / bertprune.jobs.bench (+ mlperf.report, mlperf.submission): sweep -> LoadGen runs -> summary
table, plot and MLPerf submission tree; bad inputs fail before anything runs; failed or interrupted runs are
marked, never dropped."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF, compose_cfg, csv_task, minilm_dir, tiny_onnx, write_variant

from bertprune.io import sha256_file
from bertprune.jobs.bench import bench, run_bench
from bertprune.jobs.callbacks import LoadgenCallback
from bertprune import scenarios
from bertprune.mlperf import runs
from bertprune.scenarios import SCENARIOS, ScenarioSettings
from bertprune.onnx import variants

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
    settings = scenarios.resolve_scenarios(dict(cfg.scenario))
    assert [s.loadgen for s in settings] == ["Offline", "SingleStream", "Server", "MultiStream"]
    assert settings[2].batch_size == 4
    for name in SCENARIOS:  # every group file is keyed by its name and has exactly the dataclass keys
        file_cfg = compose_cfg("bench", ["source=x", f"scenario=[{name}]"], tmp_path).scenario[name]
        assert ScenarioSettings.from_config(name, file_cfg).loadgen == SCENARIOS[name]
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="scenario/foo"):
        compose_cfg("bench", ["source=x", "scenario=[offline,foo]"], tmp_path)


@pytest.mark.integration
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
        cores = json.loads((out / "summary.json").read_text())["cores_used"]
        assert float(r["throughput_per_core"]) == pytest.approx(float(r["throughput"]) / cores, rel=1e-6)
        assert r["samples_per_dollar"] == ""  # no system.cost_per_hour given
        assert r["metric_value"] == r["direct_metric_value"] and 0 <= float(r["metric_value"]) <= 100
        assert float(r["file_size_mb"]) > 0
    assert {r["precision"] for r in rows} == {"fp32", "int8"}
    assert all(float(r["latency_p90_ms"]) > 0 for r in rows if r["scenario"] == "SingleStream")
    md = (out / "summary.md").read_text()
    assert "| dense | fp32 | CPUExecutionProvider | 1 | Offline | VALID |" in md and "INCOMPLETE" not in md
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
    readme = (sub / "src" / "README.md").read_text()
    assert "MLPerf Inference v6.1" in readme and "--version v6.1 --submitter lab" in readme  # LoadGen 6.0.17's seeds
    assert meta["mlperf_version"] == "v6.1" and summary.mlperf_version == "v6.1"
    assert all(isinstance(v, str) for v in system.values()) and system["accelerators_per_node"] in ("0", "1")
    for model, precision in (("csv-dense", "fp32"), ("csv-c0.50-int8", "int8")):
        for scen in ("Offline", "SingleStream"):
            d = sub / "results" / "testbox" / model / scen
            perf = d / "performance" / "run_1"
            assert "Result is : VALID" in (perf / "mlperf_log_summary.txt").read_text()
            assert (perf / "mlperf_log_detail.txt").is_file()
            for f in ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json"):
                assert (d / "accuracy" / f).is_file(), f
            lines = (d / "accuracy" / "accuracy.txt").read_text().splitlines()
            assert "accuracy" in json.loads(lines[0])
            full = out / ("dense" if precision == "fp32" else "c0.50-int8") / scen / "accuracy" / "mlperf_log_accuracy.json"
            assert f"hash={sha256_file(full)}" in lines  # the full log's hash, as truncate_accuracy_log.py writes
            assert f"bert.{scen}." in (d / "user.conf").read_text()
            m = json.loads((d / "measurements.json").read_text())
            assert m["input_data_types"] == "int64" and m["weight_data_types"] == precision
            # the sidecar's teacher (/models/teacher) is not on this machine: its fine-tuning is unknown
            assert m["retraining"].startswith("unknown") and m["starting_weights_filename"] == "/models/teacher"
            assert m["onnx_sha256"] == sha256_file(sweep / ("dense/onnx" if precision == "fp32" else "0/onnx_int8")
                                                   / "model.onnx")
            if precision == "int8":
                assert m["weight_transformations"].startswith("pruned (Kwon et al. 2022")
                assert "INT8" in m["weight_transformations"]


def test_bad_inputs_fail_before_anything_runs(tiny_data, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runs, "run_isolated", lambda *a, **k: calls.append(a))
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


@pytest.mark.integration
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
    assert rows["dense"].status == "ok" and rows["dense"].metric_value == rows["dense"].direct_metric_value
    md = (out / "summary.md").read_text()
    assert md.startswith("**INCOMPLETE") and "| c0.40 |" in md and "failed" in md
    assert json.loads((out / "summary.json").read_text())["complete"] is False
    assert "csv-c0.40" not in json.loads((out / "submission" / "open" / "bertprune" / "model_mapping.json").read_text())

    # Ctrl-C during the second run: the summary is written, says incomplete, lists every variant
    real = runs.run_isolated
    n = {"calls": 0}

    def interrupt_second(spec, **kw):
        n["calls"] += 1
        if n["calls"] == 2:
            raise KeyboardInterrupt
        return real(spec, **kw)

    monkeypatch.setattr(runs, "run_isolated", interrupt_second)
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


@pytest.mark.integration
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


@pytest.mark.integration
def test_bench_cli(tiny_data, tmp_path):
    variant = write_variant(tmp_path / "v", "dense")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "bench.py"), f"source={variant}", *task_overrides(tiny_data),
           "scenario=[offline]", "mode=accuracy", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| dense | fp32 | CPUExecutionProvider | 1 | Offline |" in proc.stdout
    meta = json.loads((run_dir / "summary.json").read_text())
    assert meta["complete"] and meta["rows"][0]["metric_value"] == meta["rows"][0]["direct_metric_value"]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert Path(CONF, "bench.yaml").is_file()


# ----------------------------------------------------------------------------------------------
# Exit codes and the device: one clear answer


@pytest.mark.integration
def test_bench_cli_exits_nonzero_when_runs_fail(tiny_data, tmp_path):
    """Every run failing (here: inference breaks inside ONNX Runtime) must not exit 0; the summary is
    still written with the failed rows marked."""
    variant = write_variant(tmp_path / "v", "c0.40", mac_ratio=0.4, constraint=0.4, vocab=100)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "bench.py"), f"source={variant}", *task_overrides(tiny_data),
           "scenario=[offline]", "mode=accuracy", "scenario.offline.calibration_s=0.3", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "bench: 1 of 1 runs failed" in proc.stderr and "inference failed" in proc.stderr
    meta = json.loads((run_dir / "summary.json").read_text())
    assert meta["complete"] is False and [r["status"] for r in meta["rows"]] == ["failed"]


@pytest.mark.integration
def test_device_without_a_gpu_is_one_error_before_any_run(tiny_data, tmp_path, monkeypatch):
    import bertprune.onnx.runtime as runtime

    calls = []
    monkeypatch.setattr(runs, "run_isolated", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(runtime, "cuda_usable", lambda: False)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="hardware.runtime_device=cuda needs a CUDA GPU.*Use hardware=cpu"):
        run_bench(make_sweep(tmp_path / "sweep"), csv_task(tiny_data), ["offline"], device="cuda", output_dir=out)
    with pytest.raises(ValueError, match="hardware.runtime_device='tpu'"):
        run_bench(tmp_path / "sweep", csv_task(tiny_data), ["offline"], device="tpu", output_dir=out)
    assert calls == [] and not out.exists()

    # the command line: one message, non-zero exit, no summary and no run folder (CUDA hidden from torch)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "bench.py"), f"source={tmp_path / 'sweep'}", *task_overrides(tiny_data),
           "scenario=[offline,single_stream]", "hardware.runtime_device=cuda", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode != 0
    assert proc.stderr.count("RuntimeError: hardware.runtime_device=cuda needs a CUDA GPU") == 1, proc.stderr[-2000:]
    assert not any((run_dir / n).exists() for n in ("summary.json", "summary.md", "dense", "submission"))


def test_swapped_onnx_is_refused_before_any_run(tiny_data, tmp_path, monkeypatch):
    """A model.onnx replaced after export (its sha256 no longer the sidecar's) must not be benchmarked and
    reported as the exported variant."""
    calls = []
    monkeypatch.setattr(runs, "run_isolated", lambda *a, **k: calls.append(a))
    sweep = make_sweep(tmp_path / "sweep")
    recorded = json.loads((sweep / "dense" / "onnx" / "model.json").read_text())["sha256"]
    tiny_onnx(sweep / "dense" / "onnx" / "model.onnx", seed=7)  # another model, same interface
    with pytest.raises(ValueError, match=f"has sha256 {sha256_file(sweep / 'dense' / 'onnx' / 'model.onnx')} "
                                         f"but its export recorded {recorded}"):
        run_bench(sweep, csv_task(tiny_data), ["offline"], output_dir=tmp_path / "out")
    assert calls == [] and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# Submission tree: what the official checker reads


def test_system_description_fields_are_strings():
    """The checker reads a number 0 as an empty answer ("accelerators_per_node requires a meaningful
    response"): every field is a non-empty string."""
    from bertprune.mlperf.system import describe

    for providers in ({"CPUExecutionProvider"}, set()):
        d = describe("box", "lab", providers)
        assert d["accelerators_per_node"] == "0" and d["number_of_nodes"] == "1"
        assert all(isinstance(v, str) for v in d.values())
        meaningful = ("division", "submitter", "system_type", "status", "system_name", "number_of_nodes",
                      "host_processor_model_name", "host_processors_per_node", "host_processor_core_count",
                      "host_memory_capacity", "host_memory_configuration", "host_storage_capacity",
                      "host_storage_type", "host_networking", "host_network_card_count", "host_networking_topology",
                      "accelerators_per_node", "accelerator_model_name", "accelerator_memory_capacity",
                      "accelerator_host_interconnect", "accelerator_memory_configuration",
                      "accelerator_interconnect", "cooling", "framework", "operating_system", "other_software_stack")
        assert [k for k in meaningful if not d.get(k)] == []


def test_system_description_comes_from_the_machine_and_marks_what_it_cannot_tell(tmp_path):
    """Detected facts fill the checker's fields (a GPU from the driver when the CUDA provider ran); what no probe
    reads comes from the system config, else it says "not given" and is listed in not_detected; a description
    file (mlperf-sysinfo's system_desc.json) wins over detection."""
    from bertprune.mlperf.system import Machine, SystemConfig, describe, detect

    here = detect(tmp_path)
    assert here.cpu_model and here.usable_cores >= 1 and here.memory_gb > 0 and here.storage_gb > 0
    assert here.threads >= here.usable_cores and here.os
    gpu_box = Machine(cpu_model="AMD EPYC 9575F", sockets=2, cores_per_socket=64, threads=256, usable_threads=256,
                      threads_per_core=2, max_mhz=5000.0, caches="L3: 512 MiB", numa_nodes=2, memory_gb=1536.0,
                      storage_type="NVMe SSD", storage_gb=7680,
                      nics=[{"name": "eth0", "type": "Ethernet", "speed_mbit": 100000}],
                      gpus=[{"name": "NVIDIA H200", "memory_mb": 143771, "max_sm_mhz": 1980, "pcie": "PCIe Gen5 x16"}] * 8,
                      gpu_driver="580.65", os="Ubuntu 24.04")
    d = describe("box", "lab", {"CUDAExecutionProvider"}, machine=gpu_box)
    assert (d["host_processors_per_node"], d["host_processor_core_count"], d["host_processor_vcpu_count"]) == ("2", "64", "256")
    assert d["host_processor_frequency"] == "5000 MHz" and d["host_processor_interconnect"] == "2 NUMA nodes"
    assert (d["accelerators_per_node"], d["accelerator_model_name"], d["accelerator_memory_capacity"]) == (
        "8", "NVIDIA H200", "140 GB")
    assert d["accelerator_host_interconnect"] == "PCIe Gen5 x16" and "NVIDIA driver 580.65" in d["other_software_stack"]
    assert d["host_networking"] == "Ethernet 100000 Mbit/s" and d["host_storage_type"] == "NVMe SSD"
    assert d["cooling"].startswith("not given (set bench.py system.cooling=")
    assert d["not_detected"] == "memory_configuration, cooling, cloud_instance, cost_per_hour"
    assert describe("box", "lab", set(), machine=gpu_box)["accelerators_per_node"] == "0"  # the GPU was not used
    full = describe("box", "lab", set(), SystemConfig(cooling="air", cloud_instance="a3-highgpu-8g", cost_per_hour=2.5,
                                                       memory_configuration="24x 64 GB DDR5-6000"), machine=gpu_box)
    assert (full["cooling"], full["cloud_instance_type"], full["cost_per_hour_usd"]) == ("air", "a3-highgpu-8g", "2.5")
    assert full["not_detected"] == "none" and "a3-highgpu-8g" in full["system_type_detail"]
    sysinfo = tmp_path / "system_desc.json"
    sysinfo.write_text(json.dumps({"cooling": "liquid", "host_memory_configuration": "", "host_storage_type": "SSD"}))
    merged = describe("box", "lab", set(), SystemConfig(description_file=str(sysinfo)), machine=gpu_box)
    assert (merged["cooling"], merged["host_storage_type"]) == ("liquid", "SSD")
    assert merged["not_detected"] == "memory_configuration, cloud_instance, cost_per_hour"  # its empty answer does not count
    for bad, match in (({"cost_per_hour": 0}, "cost_per_hour=0 must be > 0"), ({"status": "soon"}, "system.status='soon'"),
                       ({"description_file": str(tmp_path / "none.json")}, "description_file=.*is not a file")):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            SystemConfig(**bad)


def test_rows_carry_throughput_per_core_and_samples_per_dollar():
    from types import SimpleNamespace

    from bertprune.mlperf.report import build_rows

    plan = SimpleNamespace(variant=SimpleNamespace(name="c0.5", precision="fp32", mac_ratio=0.5, file_size=2**20))
    scen = [SimpleNamespace(loadgen="Offline")]
    runs = {("c0.5", "Offline", "performance"): {"status": "ok", "summary": {"valid": True, "throughput": 90.0}}}
    (row,) = build_rows([plan], scen, ["performance"], runs, "classification", cores=2, cost_per_hour=0.36)
    assert row.throughput_per_core == 45.0 and row.samples_per_dollar == pytest.approx(90 * 3600 / 0.36)
    (row,) = build_rows([plan], scen, ["performance"], runs, "classification", cores=2)
    assert row.samples_per_dollar is None  # no cost given: no column value, never a made-up one


def _detail_log(folder: Path, seeds: dict) -> Path:
    folder.mkdir(parents=True)
    lines = [f':::MLLOG {{"key": "effective_{k}", "value": {v}, "time_ms": 0.0, "namespace": "mlperf::logging", '
             f'"event_type": "POINT_IN_TIME", "metadata": {{"is_error": false, "is_warning": false}}}}'
             for k, v in seeds.items()]
    (folder / "mlperf_log_detail.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_tree_is_labelled_with_the_round_of_loadgens_seeds(tmp_path):
    from bertprune.mlperf.submission import MLPERF_SEEDS, mlperf_version

    v61 = {"qsl_rng_seed": 2085463073848966840, "sample_index_rng_seed": 2747215439041700203,
           "schedule_rng_seed": 16159082839903944936}
    assert MLPERF_SEEDS["v6.1"] == v61  # mlperf.conf of MLPerf Inference v6.1, as LoadGen 6.0.17 logs them
    ok = {"status": "ok", "log_dir": str(_detail_log(tmp_path / "a", {**v61, "accuracy_log_rng_seed": 0}))}
    assert mlperf_version([ok, {"status": "failed", "log_dir": str(tmp_path / "none")}]) == "v6.1"
    v60 = {"qsl_rng_seed": 2465351861681999779, "sample_index_rng_seed": 14276810075590677512,
           "schedule_rng_seed": 3936089224930324775}
    other = {"status": "ok", "log_dir": str(_detail_log(tmp_path / "b", v60))}
    assert mlperf_version([ok, other]) == "unknown" and mlperf_version([]) is None


def test_accuracy_log_truncated_and_hashed_like_mlcommons(tmp_path):
    """truncate_accuracy_log.py: accuracy.txt gets ``hash=<sha256 of the full log>``; a log of 4096 bytes or
    more keeps its first and last 4096 bytes around a "..." line (the checker wants <= 10 KiB)."""
    import hashlib

    from bertprune.mlperf.submission import truncate_accuracy_log

    entries = [{"seq_id": i, "qsl_idx": i, "data": f"{i:08X}" * 4} for i in range(400)]
    full = json.dumps(entries, indent=0).encode()
    assert len(full) > 3 * 4096
    (tmp_path / "full.json").write_bytes(full)
    digest = truncate_accuracy_log(tmp_path / "full.json", tmp_path / "cut.json")
    assert digest == hashlib.sha256(full).hexdigest()
    cut = (tmp_path / "cut.json").read_bytes()
    assert cut == full[:4096] + b"\n\n...\n\n" + full[-4096:] and len(cut) <= 10 * 1024
    small = b'[\n{"seq_id": 0, "qsl_idx": 0, "data": "00"}\n]\n'
    (tmp_path / "small.json").write_bytes(small)
    assert truncate_accuracy_log(tmp_path / "small.json", tmp_path / "small_cut.json") == hashlib.sha256(small).hexdigest()
    assert (tmp_path / "small_cut.json").read_bytes() == small  # under 4096 bytes: left whole


def _bertprune_teacher(folder: Path, name_or_path: str) -> Path:
    """A teacher folder as train.py caches it: config.yaml (the composed config) + COMPLETE.json."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        f"model:\n  name: m\n  name_or_path: {name_or_path}\ntask:\n  name: rotten_tomatoes\n"
        "training:\n  seed: 42\n  epochs: 2\n  batch_size: 32\n  lr: 5.0e-05\n")
    (folder / "COMPLETE.json").write_text('{"sha256": "x"}')
    return folder


def test_measurements_disclose_starting_weights_and_fine_tuning(tmp_path):
    from bertprune.mlperf.submission import measurements
    from bertprune.tasks.data import Task

    task = Task(name="rotten_tomatoes", kind="classification", num_labels=2, source="rotten_tomatoes")
    teacher = _bertprune_teacher(tmp_path / "teachers" / "rt-minilm", minilm_dir())
    v = variants.load_variant(write_variant(tmp_path / "v", "c0.50", mac_ratio=0.5, constraint=0.5))
    v.meta["teacher"] = str(teacher)
    m = measurements(v, task)
    assert m["starting_weights_filename"] == "sentence-transformers/all-MiniLM-L6-v2"  # the packaged MiniLM
    assert m["retraining"].startswith("yes: the dense teacher was fine-tuned from sentence-transformers/all-MiniLM")
    assert m["weight_transformations"].startswith("fine-tuned by bertprune (train.py) from sentence-transformers/"
                                                  "all-MiniLM-L6-v2 on task rotten_tomatoes (2 epochs, lr 5e-05")
    assert "pruned (Kwon et al. 2022" in m["weight_transformations"]
    v.meta["teacher"] = str(_bertprune_teacher(tmp_path / "teachers" / "bb", "bert-base-uncased"))
    assert measurements(v, task)["starting_weights_filename"] == "bert-base-uncased"  # the model config's hub name
    own = tmp_path / "my-finetuned-bert"  # a fine-tuned checkpoint given to prune.py: bertprune did not train it
    own.mkdir()
    v.meta["teacher"] = str(own)
    m = measurements(v, task)
    assert m["starting_weights_filename"] == str(own) and m["retraining"].startswith("no: bertprune pruned")
    assert "fine-tuned by bertprune" not in m["weight_transformations"]
    # the export's record (model.json "starting_weights") wins over the folder, which may be gone by now
    v.meta["starting_weights"] = {"starting_weights": "bert-large-uncased", "fine_tuned_by_bertprune": True,
                                  "fine_tuning": {"task": "sst2", "epochs": 3, "lr": 2e-5, "batch_size": 16, "seed": 1}}
    assert measurements(v, task)["starting_weights_filename"] == "bert-large-uncased"


# ----------------------------------------------------------------------------------------------
# Sidecar paths: a copied or moved sweep still benchmarks


@pytest.mark.integration
def test_moved_sweep_benchmarks_and_the_tokenizer_override_wins(tiny_data, tmp_path):
    import shutil

    from bertprune.jobs.bench import plan_bench
    from bertprune.models import load_tokenizer, save_checkpoint, tiny_bert
    from bertprune.onnx.export import export_variant

    task = csv_task(tiny_data)
    sweep = tmp_path / "sweep"
    ckpt = save_checkpoint(tiny_bert("classification", 2, 30522), load_tokenizer(minilm_dir()), sweep / "0" / "pruned")
    export_variant(ckpt, sweep / "0" / "onnx", task, device="cpu", max_eval_samples=16)
    side = json.loads((sweep / "0" / "onnx" / "model.json").read_text())
    assert side["tokenizer"] == "../pruned"  # relative to the variant folder
    assert side["starting_weights"]["starting_weights"] == str(ckpt.resolve())
    moved = tmp_path / "elsewhere" / "sweep-copy"
    shutil.copytree(sweep, moved)
    shutil.rmtree(sweep)
    summary = run_bench(moved, task, [ScenarioSettings(name="offline", min_duration_ms=500, calibration_s=0.3)],
                        mode="accuracy", output_dir=tmp_path / "bench")
    assert summary.complete and summary.rows[0].metric_value == summary.rows[0].direct_metric_value
    plans, _, _ = plan_bench(moved, task, ["offline"], "accuracy")
    assert Path(plans[0].tokenizer) == moved / "0" / "onnx" / ".." / "pruned"
    other = tmp_path / "other-tokenizer"
    shutil.copytree(minilm_dir(), other)
    plans, _, _ = plan_bench(moved, task, ["offline"], "accuracy", tokenizer=str(other))
    assert plans[0].tokenizer == str(other)  # tokenizer= wins over the sidecar
    with pytest.raises(FileNotFoundError, match="tokenizer=.*folder not found"):
        plan_bench(moved, task, ["offline"], "accuracy", tokenizer=str(tmp_path / "nope"))
    shutil.rmtree(moved / "0" / "pruned")
    with pytest.raises(FileNotFoundError, match=r"tokenizer folder is gone \(tried .*pruned, .*\).*tokenizer="):
        plan_bench(moved, task, ["offline"], "accuracy")


# ----------------------------------------------------------------------------------------------
# bench.png


def test_plot_never_mixes_scenarios_and_marks_failed_runs(tmp_path, monkeypatch):
    """A variant whose Offline run failed must not appear on the Offline axis at its SingleStream
    throughput; every panel holds one scenario, names its failed runs and labels its units."""
    import matplotlib.figure

    from bertprune.mlperf.report import BenchRow, plot

    figures = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: (figures.append(self), real_savefig(self, *a, **k))[1])
    rows = [BenchRow("dense", "fp32", 1.0, "Offline", valid="VALID", throughput=900.0, metric_value=83.0, metric="accuracy"),
            BenchRow("dense", "fp32", 1.0, "SingleStream", valid="VALID", throughput=200.0, latency_p90_ms=5.0,
                     metric_value=83.0, metric="accuracy"),
            BenchRow("c0.40", "fp32", 0.4, "Offline", status="failed", valid="failed", metric="accuracy",
                     error="performance: boom"),
            BenchRow("c0.40", "fp32", 0.4, "SingleStream", valid="VALID", throughput=350.0, latency_p90_ms=2.9,
                     metric_value=80.0, metric="accuracy"),
            BenchRow("c0.50", "int8", 0.5, "Server", valid="INVALID", throughput=120.0, latency_p90_ms=40.0,
                     latency_p99_ms=90.0, metric_value=82.0, metric="accuracy")]
    assert plot(rows, tmp_path / "bench.png") == str(tmp_path / "bench.png")

    def xs(ax):
        return sorted(float(x) for c in ax.collections for x, _ in c.get_offsets())

    offline = next(ax for ax in figures[-1].axes if "Offline" in ax.get_xlabel())
    assert xs(offline) == [900.0]  # not c0.40's SingleStream 350 samples/s, nor the Server run's 120
    axes = {ax.get_title(): ax for ax in figures[-1].axes}
    assert set(axes) == {"Offline", "SingleStream", "Server"}  # one panel per scenario
    assert xs(axes["SingleStream"]) == [2.9, 5.0] and xs(axes["Server"]) == [120.0]
    assert any("failed: c0.40" in t.get_text() for t in axes["Offline"].texts)
    assert any("INVALID" in t.get_text() for t in axes["Server"].texts)
    assert axes["Offline"].get_xlabel() == "Offline throughput (samples/s)"
    assert axes["SingleStream"].get_xlabel() == "SingleStream p90 latency (ms)"
    assert all(ax.get_ylabel() == "accuracy (%)" for ax in axes.values())


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_scenario_named_alone_runs_as_its_config_file_says(name, tmp_path):
    """prune.py's bench_options.scenarios, run_bench's default and the callback take names: each must run as
    bench.py's `scenario=[<name>]` composes it (an earlier version ran Offline at batch 1 and, without the
    file's min_query_count 1, at mlperf.conf's 10,833 samples)."""
    composed = compose_cfg("bench", ["source=x", f"scenario=[{name}]"], tmp_path).scenario[name]
    from omegaconf import OmegaConf

    expected = ScenarioSettings.from_config(name, OmegaConf.to_container(composed))
    assert scenarios.resolve_scenarios([name]) == [expected]
    assert LoadgenCallback(scenarios=[name]).scenarios == [expected]
    if name == "offline":
        assert expected.batch_size == 32 and expected.min_query_count == 1
    assert ScenarioSettings.named(name, batch_size=4).batch_size == 4
