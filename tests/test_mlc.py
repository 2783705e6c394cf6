"""The MLC (MLCFlow) script repository in mlc/: registered from its local path into a temporary MLC home (no
network, no clone of MLCommons' scripts), its pruning script run on the tiny model through ``mlcr`` and through the
Python API (``mlc.access``), the benchmark script on the result, and bad inputs failing ``mlcr`` with
bertprune's own message."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_sentiment_csv

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # mlcflow (the test extra) installs mlc / mlcr beside the project's Python


@pytest.fixture(scope="module")
def mlc_home(tmp_path_factory):
    """A temporary MLC home (HOME, MLC_REPOS) holding only bertprune's repository, a cache and the tiny CSV task."""
    tmp = tmp_path_factory.mktemp("mlc")
    env = {**os.environ, "HOME": str(tmp), "MLC_REPOS": str(tmp / "MLC" / "repos"), "WANDB_MODE": "offline",
           "BERTPRUNE_CACHE_DIR": str(tmp / "cache")}
    proc = subprocess.run([str(BIN / "mlc"), "add", "repo", str(ROOT / "mlc")], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    repos = json.loads((tmp / "MLC" / "repos" / "repos.json").read_text())
    assert str(ROOT / "mlc") in repos and len(repos) == 2, repos  # ours + the local cache, nothing pulled
    train, dev = make_sentiment_csv(tmp / "train.csv", 192, 0), make_sentiment_csv(tmp / "dev.csv", 64, 1)
    task = f"task=csv task.train_file={train} task.validation_file={dev} task.max_length=32"
    overrides = (f"model=tiny {task} training=fast training.max_train_samples=null training.epochs=3 logger=csv "
                 "num_samples=128")
    return {"tmp": tmp, "env": env, "task": task, "overrides": overrides}


def mlcr(home: dict, *args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``mlcr`` and read the env it hands back (``--mlc_output=yes`` writes it to tmp-run-env.out in cwd)."""
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(BIN / "mlcr"), *args, "--mlc_output=yes"], cwd=cwd, env=home["env"],
                          capture_output=True, text=True, timeout=900)
    env_file = cwd / "tmp-run-env.out"
    new_env = {}
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            new_env[key] = value.strip('"')
    return proc, new_env


@pytest.fixture(scope="module")
def pruned_by_mlcr(mlc_home):
    """``mlcr prune,bert,kwon,bertprune --sweep=0.4,0.6`` on the tiny model."""
    sweep = mlc_home["tmp"] / "sweep"
    proc, env = mlcr(mlc_home, "prune,bert,kwon,bertprune", "--sweep=0.4,0.6", f"--output_dir={sweep}",
                     f"--overrides={mlc_home['overrides']}", cwd=mlc_home["tmp"] / "run-prune")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, env, sweep


@pytest.mark.integration
def test_mlcr_prunes_with_the_projects_python_and_returns_the_variants(pruned_by_mlcr):
    proc, env, sweep = pruned_by_mlcr
    # the project's interpreter (the one running mlcr: python or python3 of this venv) ran this checkout's prune.py
    command = re.search(rf"^{re.escape(str(BIN))}/python[\d.]* (.*)$", proc.stdout, flags=re.M)
    assert command and command.group(1).startswith(f"{ROOT / 'prune.py'} -m constraint=0.4,0.6 hydra.sweep.dir={sweep}")
    assert env["BERTPRUNE_SWEEP_DIR"] == str(sweep)
    variants = env["BERTPRUNE_VARIANT_DIRS"].split(os.pathsep)
    assert variants == [str(sweep / "c0.4"), str(sweep / "c0.6")]  # the order given; the last is the model file's
    for folder, constraint in zip(variants, (0.4, 0.6)):
        results = json.loads((Path(folder) / "results.json").read_text())
        assert results["constraint"] == constraint and results["model"] == "tiny"
    onnx = env["BERTPRUNE_ONNX_PATHS"].split(os.pathsep)
    assert onnx == [str(sweep / c / "onnx" / "model.onnx") for c in ("c0.4", "c0.6")] and all(map(os.path.isfile, onnx))
    assert env["MLC_ML_MODEL_FILE_WITH_PATH"] == env["BERTPRUNE_ONNX_PATH"] == onnx[-1]
    assert env["BERTPRUNE_VARIANT_DIR"] == variants[-1]
    assert env["BERTPRUNE_PRUNED_DIR"] == str(sweep / "c0.6" / "pruned")
    assert (Path(env["BERTPRUNE_PRUNED_DIR"]) / "config.json").is_file()
    assert Path(env["BERTPRUNE_SUMMARY_CSV"]).read_text().count("\n") == 3  # header + 2 jobs


@pytest.mark.integration
def test_mlcr_bench_runs_loadgen_on_the_sweep_and_returns_the_summary(mlc_home, pruned_by_mlcr):
    _, prune_env, sweep = pruned_by_mlcr
    proc, env = mlcr(mlc_home, "bench,loadgen,bertprune", f"--source={sweep}", "--scenario=offline", "--mode=accuracy",
                     f"--overrides={mlc_home['task']}", cwd=mlc_home["tmp"] / "run-bench")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert env["BERTPRUNE_BENCH_DIR"] == str(sweep / "bench")  # beside the sweep, as make demo puts it
    summary = json.loads(Path(env["BERTPRUNE_BENCH_SUMMARY"]).read_text())
    assert summary["complete"] and summary["modes"] == ["accuracy"] and summary["scenarios"] == ["Offline"]
    by_variant = {r["variant"]: r for r in summary["rows"]}
    assert set(by_variant) == {"dense", "c0.40", "c0.60"}
    for name, job in (("c0.40", "c0.4"), ("c0.60", "c0.6")):  # LoadGen's accuracy = the export's
        results = json.loads((sweep / job / "results.json").read_text())
        assert by_variant[name]["metric_value"] == pytest.approx(results["export/onnx_accuracy"])
    assert Path(env["BERTPRUNE_BENCH_SUMMARY_MD"]).is_file()
    assert list(Path(env["BERTPRUNE_SUBMISSION_DIR"]).glob("systems/*.json"))


@pytest.mark.integration
def test_python_api_runs_the_pruning_script(mlc_home, monkeypatch):
    """``mlc.access`` in this process (its MLC home is read when mlc is first imported: set it before)."""
    tmp = mlc_home["tmp"]
    for key in ("HOME", "MLC_REPOS", "BERTPRUNE_CACHE_DIR"):  # the module's cache: the tiny teacher is reused
        monkeypatch.setenv(key, mlc_home["env"][key])
    workdir = tmp / "run-api"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    import mlc
    import mlc.action

    assert mlc.action.default_parent.repos_path == mlc_home["env"]["MLC_REPOS"]  # not the user's MLC home
    out = tmp / "api-sweep"
    r = mlc.access({"action": "run", "automation": "script", "tags": "prune,bert,kwon,bertprune", "constraint": "0.5",
                    "output_dir": str(out), "overrides": mlc_home["overrides"], "quiet": True})
    assert r["return"] == 0, r
    env = r["new_env"]
    assert env["MLC_ML_MODEL_FILE_WITH_PATH"] == str(out / "c0.5" / "onnx" / "model.onnx")
    assert env["BERTPRUNE_VARIANT_DIRS"] == str(out / "c0.5")
    sidecar = json.loads((out / "c0.5" / "onnx" / "model.json").read_text())
    assert sidecar["constraint"] == 0.5 and sidecar["variant"] == "c0.50"


@pytest.mark.integration
def test_bad_inputs_fail_mlcr_with_bertprunes_own_message(mlc_home):
    tmp = mlc_home["tmp"]
    proc, env = mlcr(mlc_home, "prune,bert,kwon", "--constraint=1.5", f"--output_dir={tmp / 'bad'}",
                     f"--overrides={mlc_home['overrides']}", cwd=tmp / "run-bad")
    assert proc.returncode != 0 and "MLC_ML_MODEL_FILE_WITH_PATH" not in env
    assert "constraint=1.5 must be in (0, 1)" in proc.stdout + proc.stderr  # prune.py's check, before any work
    assert not list((tmp / "bad").glob("*/results.json"))
    proc, _ = mlcr(mlc_home, "prune,bert,kwon", "--constraint=0.5", "--sweep=0.4,0.6", cwd=tmp / "run-bad2")
    assert proc.returncode != 0 and "--constraint=0.5 and --sweep=0.4,0.6 both given" in proc.stdout + proc.stderr
    proc, _ = mlcr(mlc_home, "bench,loadgen,bertprune", f"--source={tmp / 'nowhere'}", cwd=tmp / "run-bad3")
    assert proc.returncode != 0 and "no such file or folder" in proc.stdout + proc.stderr


def _customize(script: str):
    """A script's customize.py, loaded as MLC loads it (a file, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"customize_{script}", ROOT / "mlc" / "script" / script / "customize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pruning_inputs_map_to_prune_py_overrides(tmp_path):
    env = {"BERTPRUNE_CONSTRAINT": "0.5", "BERTPRUNE_MODEL": "bert_base", "BERTPRUNE_TASK": "squad",
           "BERTPRUNE_CHECKPOINT": "/models/bert squad", "BERTPRUNE_COST": "mac", "BERTPRUNE_OUTPUT_DIR": str(tmp_path),
           "BERTPRUNE_OVERRIDES": "num_samples=512 'task.data_file=/data/dev v1.1.json'", "BERTPRUNE_PYTHON": sys.executable}
    assert _customize("prune-bertprune").preprocess({"env": env}) == {"return": 0}
    assert shlex.split(env["MLC_RUN_CMD"]) == [
        sys.executable, str(ROOT / "prune.py"), "-m", "constraint=0.5", "model=bert_base", "task=squad",
        "teacher=/models/bert squad", "cost=mac", f"hydra.sweep.dir={tmp_path}", "num_samples=512",
        "task.data_file=/data/dev v1.1.json"]
    sweep = {"BERTPRUNE_SWEEP": ["0.4", "0.5"], "BERTPRUNE_OUTPUT_DIR": str(tmp_path)}  # mlcr may pass a list
    _customize("prune-bertprune").preprocess({"env": sweep})
    assert shlex.split(sweep["MLC_RUN_CMD"])[3] == "constraint=0.4,0.5"
    r = _customize("prune-bertprune").preprocess({"env": {"BERTPRUNE_PYTHON": str(tmp_path / "no-python")}})
    assert r["return"] == 1 and "is not an executable interpreter" in r["error"]


def test_bench_inputs_map_to_bench_py_overrides(tmp_path):
    env = {"BERTPRUNE_BENCH_SOURCE": str(tmp_path), "BERTPRUNE_SCENARIO": "offline,server", "BERTPRUNE_MODE": "accuracy",
           "BERTPRUNE_SUBMISSION": "yes", "BERTPRUNE_TASK": "squad"}
    assert _customize("bench-bertprune").preprocess({"env": env}) == {"return": 0}
    assert shlex.split(env["MLC_RUN_CMD"])[1:] == [
        str(ROOT / "bench.py"), f"source={tmp_path}", "scenario=[offline,server]", "mode=accuracy", "submission=true",
        "task=squad", f"output_dir={tmp_path / 'bench'}"]
    r = _customize("bench-bertprune").preprocess({"env": {"BERTPRUNE_SWEEP_DIR": str(tmp_path), "BERTPRUNE_SUBMISSION": "maybe"}})
    assert r["return"] == 1 and "--submission=maybe: expected yes or no" in r["error"]
