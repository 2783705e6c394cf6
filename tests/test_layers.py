"""The layer order (pyproject's ``[tool.importlinter]``, ``make lint-imports``): the package keeps it, and the
contract is not a formality: an import planted to run back up (onnx -> mlperf, tasks -> models) breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "bertprune", tree / "bertprune", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_package_keeps_the_layer_order(tmp_path):
    out = _lint(_copy(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


@pytest.mark.parametrize("module, planted, names", [
    ("onnx/latency.py", "from bertprune.mlperf.report import plot", "bertprune.onnx is not allowed to import bertprune.mlperf"),
    ("tasks/data.py", "from bertprune.models import model_inputs", "bertprune.tasks is not allowed to import bertprune.models"),
    ("lightning/loggers.py", "from bertprune.jobs.sweep import swept_keys", "bertprune.lightning is not allowed to import bertprune.jobs"),
    ("io.py", "from bertprune.hub import hub_errors", "bertprune.io is not allowed to import bertprune.hub"),
])
def test_an_import_that_runs_back_up_breaks_the_contract(tmp_path, module, planted, names):
    tree = _copy(tmp_path)
    path = tree / "bertprune" / module
    path.write_text(path.read_text().replace("from __future__ import annotations\n",
                                             f"from __future__ import annotations\n\n{planted}  # planted\n", 1))
    out = _lint(tree)
    assert out.returncode != 0 and names in out.stdout, out.stdout[-3000:]
