"""Studies: W&B runs that hold the stages, the kept structure, the artifacts and LoadGen's results (read back
from the offline run files); ablation grids with a tidy summary and mean ± std over seeds; the notebooks,
executed with papermill on real sweeps; the joblib launcher giving the basic launcher's numbers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bertprune.jobs.sweep as sweep
from bertprune.jobs import study
from bertprune.lightning import hardware, loggers

ROOT = Path(__file__).resolve().parents[1]
FAST = ["scenario.offline.min_duration_ms=500", "scenario.offline.calibration_s=0.3",
        "scenario.single_stream.min_duration_ms=500", "scenario.single_stream.calibration_s=0.3"]


# ---- unit: folder names, tidy summary, aggregates, the offline-run reader, threads

def test_swept_keys_follow_hydra_sweep_grammar():
    assert sweep.swept_keys(["constraint=0.4,0.5", "rearrange=true", "seed=range(0,3)", "+x=choice(1,2)",
                             "model=tiny"]) == ["constraint", "seed", "x"]


def test_job_suffix_names_each_grid_job_apart(monkeypatch):
    monkeypatch.setenv(sweep.SWEPT_ENV, "constraint,rearrange,seed,task.train_file")
    overrides = ["constraint=0.4", "rearrange=False", "seed=1", "model=tiny", "task.train_file=/a b/t.csv"]
    assert sweep.job_suffix(overrides) == "-rearrange=false-seed=1-task.train_file=_a_b_t.csv"
    assert sweep.job_suffix(overrides, ("rearrange",)) == "-seed=1-task.train_file=_a_b_t.csv"  # named already
    monkeypatch.setenv(sweep.SWEPT_ENV, "constraint")
    assert sweep.job_suffix(overrides) == ""  # a plain constraint sweep keeps c<constraint>
    monkeypatch.delenv(sweep.SWEPT_ENV)
    assert sweep.job_suffix(overrides) == ""


def _job(root: Path, name: str, overrides: list[str], results: dict | None, status: str = "ok", error: str = ""):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / ".hydra" / "config.yaml").write_text(f"constraint: {results['constraint'] if results else 0.5}\n")
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))
    (job / "status.json").write_text(json.dumps({"status": status, "error": error}))


def _results(constraint, acc, mac, seconds):
    return {"constraint": constraint, "prune/mac_ratio": mac, "metric": "accuracy", "eval/accuracy_dense": 90.0,
            "eval/accuracy_search": acc - 1, "eval/accuracy_tune": acc, "eval/accuracy": acc, "time/prune_s": seconds}


def test_grid_summary_is_tidy_with_mean_std_over_seeds_and_failed_jobs_marked(tmp_path):
    out = tmp_path / "sweep"
    for seed, acc in ((0, 80.0), (1, 84.0)):
        _job(out, f"c0.5-rearrange=true-seed={seed}", ["constraint=0.5", "rearrange=true", f"seed={seed}"],
             _results(0.5, acc, 0.5, 10.0 + seed))
    _job(out, "c0.5-rearrange=false-seed=0", ["constraint=0.5", "rearrange=false", "seed=0"], _results(0.5, 70.0, 0.5, 5))
    _job(out, "c0.5-rearrange=false-seed=1", ["constraint=0.5", "rearrange=false", "seed=1"], None, "failed",
         "RuntimeError: out of memory")
    md = sweep.write_summary(out)
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4  # the failed job is a row
    assert list(rows[0])[:3] == ["job", "rearrange", "seed"]  # one column per swept key, right after the job
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["rearrange"] == "false" and failed["seed"] == "1" and "out of memory" in failed["error"]
    agg = {r["rearrange"]: r for r in csv.DictReader((out / "aggregate.csv").open())}
    assert float(agg["True"]["eval/accuracy mean"]) == pytest.approx(82.0)
    assert float(agg["True"]["eval/accuracy std"]) == pytest.approx(2 ** 0.5 * 2)  # sample std of 80, 84
    assert (agg["False"]["ok"], agg["False"]["failed"]) == ("1", "1")
    assert "| true | 0.5 | 82.00 ± 2.83 |" in md and "| false | 0.5 | 70.00 |" in md and "| 1 | **1** |" in md
    assert "`rearrange` | `seed` |" in md and "**FAILED**" in md
    # the study view of the same sweep: the tidy frame and the swept columns
    assert study.swept_columns(out) == ["rearrange", "seed"]
    jobs = study.load_jobs(out)
    assert len(jobs) == 4 and study.metric_name(jobs) == "accuracy"
    # no seed swept: no aggregate (and a stale one is removed)
    (out / "c0.5-rearrange=false-seed=1").rename(tmp_path / "gone")
    for j in out.glob("*seed=1"):
        j.rename(tmp_path / j.name)
    md = sweep.write_summary(out)
    assert not (out / "aggregate.csv").exists() and "Over seeds" not in md


def test_pareto_front_keeps_the_variants_nothing_beats():
    import pandas as pd

    df = pd.DataFrame({"cost": [1, 2, 3, 4, 2.5], "q": [70, 80, 79, 85, 81]})
    assert study.pareto_front(df, "cost", "q")["cost"].tolist() == [1, 2, 2.5, 4]
    assert study.pareto_front(df, "cost", "q", lower_is_better=True)["cost"].tolist() == [1]


def test_offline_run_files_read_back(tmp_path):
    """What read_offline_run returns is what the run logged (history, summary, tables, artifacts, exit)."""
    import wandb

    run = wandb.init(project="t", mode="offline", dir=str(tmp_path), job_type="prune", group="g")
    loggers.log_stages(run, [("dense", {"accuracy": 90.0}), ("search", {"accuracy": 85.0}), ("pruned", {"accuracy": 86.0})])
    loggers.log_structure(run, {"prune/heads_per_layer": [2, 0], "prune/ffn_per_layer": [8, 3]})
    art = wandb.Artifact("onnx-x", type="onnx")
    (tmp_path / "model.onnx").write_bytes(b"x")
    art.add_reference((tmp_path / "model.onnx").as_uri(), name="model.onnx")
    run.log_artifact(art)
    run_id = run.id
    run.finish(exit_code=3)
    [r] = loggers.offline_runs(tmp_path, run_id)
    assert (r["id"], r["job_type"], r["group"], r["exit_code"]) == (run_id, "prune", "g", 3)
    series = [(h["stage/index"], h["stage/accuracy"]) for h in r["history"] if "stage/accuracy" in h]
    assert series == [(0, 90.0), (1, 85.0), (2, 86.0)]
    assert any(m.startswith("media/table/structure_") for m in r["media"])
    assert any(m.startswith("media/images/structure_heatmap_") for m in r["media"])
    onnx = next(a for a in r["artifacts"] if a["type"] == "onnx")
    assert onnx["entries"] == [("model.onnx", (tmp_path / "model.onnx").as_uri())]
    with pytest.raises(ValueError, match="not a W&B run file"):
        bad = tmp_path / "offline-run-x-bad"
        bad.mkdir()
        (bad / "run-bad.wandb").write_bytes(b"nope")
        loggers.read_offline_run(bad)


def test_offline_run_log_that_is_torn_late_or_corrupt(tmp_path):
    """W&B's service finishes the log after run.finish() returns: a torn tail is waited for while the file is
    fresh, returned as incomplete when it is old, and a damaged record is one clear error."""
    import os
    import shutil
    import threading
    import time

    import wandb

    run = wandb.init(project="t", mode="offline", dir=str(tmp_path / "src"), job_type="prune")
    loggers.log_stages(run, [("dense", {"accuracy": 90.0}), ("pruned", {"accuracy": 86.0})])
    run.finish(exit_code=0)
    [full] = loggers.offline_runs(tmp_path / "src", run.id)
    assert full["complete"] and full["exit_code"] == 0
    [log] = (tmp_path / "src").rglob(f"offline-run-*/run-{run.id}.wandb")
    data = log.read_bytes()

    def copy(name, content, age_s):
        folder = tmp_path / name / f"offline-run-x-{run.id}"
        shutil.copytree(log.parent, folder)
        target = folder / log.name
        target.write_bytes(content)
        os.utime(target, (time.time() - age_s,) * 2)
        return folder, target

    old, _ = copy("old", data[:-5], age_s=60)  # killed mid-write of its last record (the exit record)
    torn = loggers.read_offline_run(old)
    assert not torn["complete"] and torn["exit_code"] is None
    assert [h["stage/accuracy"] for h in torn["history"] if "stage/accuracy" in h] == [90.0, 86.0]

    fresh, target = copy("fresh", data[:len(data) // 2], age_s=0)  # the service is still writing
    threading.Timer(0.5, target.write_bytes, args=(data,)).start()
    late = loggers.read_offline_run(fresh)
    assert late["complete"] and late["exit_code"] == 0
    assert late["history"] == full["history"]

    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    bad, _ = copy("bad", bytes(damaged), age_s=60)
    with pytest.raises(ValueError, match="corrupt record at byte"):
        loggers.read_offline_run(bad)


def test_jobs_side_by_side_share_the_cores(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(hardware, "parallel_jobs", lambda: 2)
    monkeypatch.setattr(hardware, "usable_cpus", lambda: 8)
    try:
        hardware.check_hardware({"accelerator": "cpu", "devices": 1, "num_threads": None})
        assert torch.get_num_threads() == 4
        hardware.check_hardware({"accelerator": "cpu", "devices": 1, "num_threads": 3})  # an explicit count wins
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_more_than_one_slurm_task_per_job_is_refused(monkeypatch):
    monkeypatch.setattr(hardware, "_launcher_target", lambda: "hydra_plugins.hydra_submitit_launcher.SlurmLauncher")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "2")
    with pytest.raises(RuntimeError, match="tasks_per_node=1"):
        hardware.check_hardware({"accelerator": "cpu", "devices": 1})
    monkeypatch.setenv("SLURM_NTASKS", "1")
    hardware.check_hardware({"accelerator": "cpu", "devices": 1})


def test_obs_grid_with_seeds_gets_a_folder_per_job(monkeypatch):
    """The unstructured groups name their folders after their settings; other swept keys are appended."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    monkeypatch.setenv(sweep.SWEPT_ENV, "unstructured.damp,seed")
    names = set()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for group in ("obs", "magnitude"):
            for damp in ("1e-4", "1e-8"):
                for seed in ("0", "1"):
                    cfg = compose("prune", [f"unstructured={group}", f"unstructured.damp={damp}", f"seed={seed}"],
                                  return_hydra_config=True)
                    names.add(str(cfg.hydra.sweep.subdir))
    assert "c0.5-obs-s0.5-unstructured-m256-d1e-08-B32-k4-seed=1" in names
    assert "c0.5-magnitude-s0.5-unstructured-unstructured.damp=1e-4-seed=0" in names
    assert len(names) == 8


def test_launchers_are_config_choices():
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        joblib = compose("prune", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], return_hydra_config=True)
        slurm = compose("prune", ["hydra/launcher=slurm", "hardware=multi_gpu", "hydra.launcher.gpus_per_node=4"],
                        return_hydra_config=True)
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher") and joblib.hydra.launcher.n_jobs == 2
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.tasks_per_node == 1
    assert slurm.hardware.strategy == "ddp_spawn" and slurm.hydra.launcher.gpus_per_node == 4


# ---- integration: real sweeps on the tiny model

def _task(tmp: Path) -> list[str]:
    from conftest import make_sentiment_csv

    train, dev = make_sentiment_csv(tmp / "train.csv", 192, 0), make_sentiment_csv(tmp / "dev.csv", 64, 1)
    return ["task=csv", f"task.train_file={train}", f"task.validation_file={dev}", "task.max_length=32"]


def _tiny(tmp: Path) -> list[str]:
    return ["model=tiny", *_task(tmp), "training=fast", "training.max_train_samples=null", "training.epochs=3"]


def _run(script: str, args: list[str], tmp: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "BERTPRUNE_CACHE_DIR": str(tmp / "cache"), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _notebook(name: str, sweep_dir: Path, tmp: Path) -> None:
    import papermill

    papermill.execute_notebook(str(ROOT / "notebooks" / name), str(tmp / f"{name}.out.ipynb"),
                               parameters={"sweep": str(sweep_dir)}, kernel_name="python3", progress_bar=False,
                               cwd=str(ROOT / "notebooks"))


@pytest.fixture(scope="module")
def demo_sweep(tmp_path_factory):
    """What make demo does, on the tiny model: a W&B-logged sweep with FP32 + INT8 exports, then bench.py."""
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "sweep"
    prune = _run("prune.py", ["-m", *_tiny(tmp), "logger=wandb", "num_samples=64", "export=true", "quantize=int8",
                              "hardware.runtime_device=cpu", "constraint=0.4,0.6", f"hydra.sweep.dir={out}"], tmp)
    assert prune.returncode == 0, prune.stderr[-3000:]
    bench = _run("bench.py", [f"source={out}", *_task(tmp), f"output_dir={out / 'bench'}", "mode=both", *FAST], tmp)
    assert bench.returncode == 0, bench.stderr[-3000:]
    return out, tmp


@pytest.mark.integration
def test_each_variant_run_holds_stages_structure_artifact_and_loadgen(demo_sweep):
    out, _ = demo_sweep
    for job in ("c0.4", "c0.6"):
        results = json.loads((out / job / "results.json").read_text())
        parts = loggers.offline_runs(out / job / "wandb", results["wandb/run_id"])
        assert [p["job_type"] for p in parts] == ["", "bench"]  # the job's run, then LoadGen's session on it
        prune_run, bench_run = parts
        assert prune_run["config"]["constraint"] == float(job[1:]) and prune_run["group"] == "prune-sweep"
        stages = [h for h in prune_run["history"] if "stage/accuracy" in h]
        assert [h["stage/index"] for h in stages] == list(range(len(stages)))
        assert stages[0]["stage/accuracy"] == results["eval/accuracy_dense"]
        assert len(stages) == 5  # dense, iterative, pruned, onnx, onnx_int8
        assert any(m.startswith("media/table/structure_") for m in prune_run["media"])
        assert any(m.startswith("media/images/structure_heatmap_") for m in prune_run["media"])
        onnx = next(a for a in prune_run["artifacts"] if a["name"].startswith("onnx-"))
        refs = dict(onnx["entries"])
        assert refs["model.onnx"] == (out / job / "onnx" / "model.onnx").resolve().as_uri()  # by reference
        assert refs["model.json"] == ""  # the sidecar is stored
        assert onnx["metadata"]["derived_from"]["pruned"].startswith("pruned-")
        s = bench_run["summary"]
        for prefix in ("bench", "bench_int8"):
            for scenario in ("offline", "single_stream"):
                assert s[f"{prefix}/{scenario}/valid"] is True and s[f"{prefix}/{scenario}/throughput"] > 0
                assert s[f"{prefix}/{scenario}/accuracy"] == pytest.approx(results["export/onnx_accuracy"]
                                                                         if prefix == "bench" else
                                                                         results["export/int8_accuracy"], abs=1e-6)
        assert s["bench/single_stream/latency_p90_ms"] > 0
        assert any(a["type"] == "bench" for a in bench_run["artifacts"])
    summary_runs = [r for r in loggers.offline_runs(out / "wandb") if r["job_type"] == "sweep-summary"]
    assert len(summary_runs) == 1 and any(m.startswith("media/table/sweep_summary") for m in summary_runs[0]["media"])
    subs = study.wandb_summaries(out)
    assert sorted(subs["job"]) == ["c0.4", "c0.6"] and subs["bench/offline/valid"].all()


@pytest.mark.integration
def test_pareto_and_structure_notebooks_run_on_the_sweep(demo_sweep):
    out, tmp = demo_sweep
    for name in ("pareto.ipynb", "structure_and_latency.ipynb"):  # compare_variants: test_sweep runs it
        _notebook(name, out, tmp)
    for png in ("pareto.png", "structure.png", "latency.png"):
        assert (out / "figures" / png).stat().st_size > 10_000
    lat = study.load_latencies(out)
    # Offline is one LoadGen query (no per-query distribution); SingleStream has one per variant (4 + dense x 2)
    assert set(lat["scenario"]) == {"SingleStream"} and len(set(lat["variant"])) == 6
    assert (lat.groupby("variant")["latency_ms"].apply(lambda v: v.is_monotonic_increasing)).all()


GRID = ["constraint=0.4,0.6", "method.rearrange=true,false", "method.tuning=scales,none", "num_samples=64,100000",
        "seed=0,1"]


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """An ablation grid typed as users type it: 32 jobs, the 16 with num_samples=100000 fail (more than the
    training split)."""
    tmp = tmp_path_factory.mktemp("grid")
    out = tmp / "grid"
    proc = _run("prune.py", ["-m", *_tiny(tmp), "logger=csv", "method=kwon", "export=false", "batch_size=16", *GRID,
                             f"hydra.sweep.dir={out}"], tmp, timeout=1800)
    return proc, out, tmp


@pytest.mark.integration
def test_ablation_grid_runs_as_typed_into_a_tidy_summary(grid_sweep):
    proc, out, tmp = grid_sweep
    assert proc.returncode != 0  # failed jobs: the exit code says so, the summary keeps them
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 32 and len({r["job"] for r in rows}) == 32  # one folder per job
    assert list(rows[0])[:5] == ["job", "method.rearrange", "method.tuning", "num_samples", "seed"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 16 and all(r["num_samples"] == "100000" for r in failed)
    assert all("larger than the training split" in r["error"] for r in failed)
    agg = list(csv.DictReader((out / "aggregate.csv").open()))
    assert len(agg) == 16  # constraint x rearrange x tuning x num_samples
    for r in agg:
        assert (r["ok"], r["failed"]) == (("2", "0") if r["num_samples"] == "64" else ("0", "2"))
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(float(r["eval/accuracy_tune"]) >= 0 for r in ok if r["method.tuning"] == "scales")
    assert all(r["eval/accuracy_tune"] == "" for r in ok if r["method.tuning"] == "none")
    _notebook("ablation.ipynb", out, tmp)
    assert (out / "figures" / "ablation.png").stat().st_size > 10_000


@pytest.mark.integration
def test_joblib_launcher_gives_the_basic_launchers_numbers(grid_sweep):
    _, grid, tmp = grid_sweep
    out = tmp / "joblib"
    proc = _run("prune.py", ["-m", *_tiny(tmp), "logger=csv", "method=kwon", "export=false", "batch_size=16",
                             "constraint=0.4,0.6", "method.rearrange=true,false", "method.tuning=scales", "num_samples=64",
                             "seed=0", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={out}"],
                tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cpus = hardware.usable_cpus()
    numbers = ("prune/mac_ratio", "eval/accuracy_dense", "eval/accuracy_search", "eval/accuracy_rearrange",
               "eval/accuracy_tune", "prune/kept_heads", "prune/kept_neurons", "model/parameters")
    for job in sorted(p for p in out.iterdir() if (p / "results.json").is_file()):
        mine = json.loads((job / "results.json").read_text())
        assert mine["hardware/torch_threads"] == max(1, cpus // 2)  # 2 jobs side by side share the cores
        basic_name = f"{job.name.split('-')[0]}-{job.name.split('-', 1)[1]}-method.tuning=scales-num_samples=64-seed=0"
        basic = json.loads((grid / basic_name / "results.json").read_text())
        assert {k: mine.get(k) for k in numbers} == {k: basic.get(k) for k in numbers}, job.name
    assert len(list(out.glob("*/results.json"))) == 4


@pytest.mark.integration
def test_ablation_notebook_plots_a_structured_false_seed_sweep_against_its_sparsity(tmp_path):
    """An OBS-only grid (`prune.py -m structured=false unstructured=obs unstructured.sparsity=0.5,0.8 seed=0,1`)
    has no constraint: the aggregate has none, and the notebook plots against the sparsity instead."""
    out = tmp_path / "obs-grid"
    for s in (0.5, 0.8):
        for seed in (0, 1):
            job = out / f"dense-obs-unstructured.sparsity={s}-seed={seed}"
            (job / ".hydra").mkdir(parents=True)
            (job / ".hydra" / "overrides.yaml").write_text(
                f"- structured=false\n- unstructured=obs\n- unstructured.sparsity={s}\n- seed={seed}\n")
            acc = 85.0 - 10 * s + seed
            (job / "results.json").write_text(json.dumps({
                "constraint": None, "structured": False, "prune/mac_ratio": 1.0, "metric": "accuracy",
                "eval/accuracy_dense": 86.0, "eval/accuracy_unstructured": acc, "eval/accuracy": acc,
                "unstructured/method": "obs", "unstructured/sparsity": s, "time/prune_s": 1.0}))
    md = sweep.write_summary(out)
    assert "constraint" not in md
    agg = list(csv.DictReader((out / "aggregate.csv").open()))
    assert [(r["unstructured.sparsity"], r["ok"], r["eval/accuracy mean"]) for r in agg] == [
        ("0.5", "2", "80.5"), ("0.8", "2", "77.5")]
    _notebook("ablation.ipynb", out, tmp_path)
    assert (out / "figures" / "ablation.png").stat().st_size > 10_000
