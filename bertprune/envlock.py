"""The locked environment: ``requirements.lock`` pins every package (name==version) of the environment the
README's figures were produced with; ``make setup`` installs with it as pip constraints.

    python -m bertprune.envlock check            # this environment == the lock (CI runs it); exit 1 and the list
    python -m bertprune.envlock write <venv>     # the lock from a fresh venv's packages (``make lock`` builds one)

The two ONNX Runtime wheels (extras ``cpu`` / ``gpu``) are both locked; an environment holds exactly one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import date
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"
ORT_WHEELS = ("onnxruntime", "onnxruntime-gpu")
# not part of what the lock pins: the project itself and the installer's own tools
UNLOCKED = {"bertprune", "pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path | None = None) -> dict[str, str]:
    """``{canonical name: version}`` of a lock file (default ``LOCK``; ``name==version`` lines; # comments)."""
    path = path or LOCK
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the locked environment is missing; write it with `make lock`")
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if not m:
            raise ValueError(f"{path}, line {n}: {line!r} is not name==version")
        pins[canonical(m.group(1))] = m.group(2)
    return pins


def installed() -> dict[str, str]:
    """``{canonical name: version}`` of the distributions this interpreter sees."""
    from importlib.metadata import distributions

    return {canonical(d.metadata["Name"]): d.version for d in distributions() if d.metadata["Name"]}


def differences(pins: dict[str, str], have: dict[str, str]) -> list[str]:
    """What differs between the lock and an environment: other versions, locked packages missing, packages the
    lock does not name (the ONNX Runtime wheel not installed is not missing: the other one is)."""
    out = []
    ort = [w for w in ORT_WHEELS if w in have]
    for name, version in sorted(pins.items()):
        if name in have:
            if have[name] != version:
                out.append(f"{name}: installed {have[name]}, locked {version}")
        elif not (name in ORT_WHEELS and ort):
            out.append(f"{name}: locked {version}, not installed")
    for name in sorted(set(have) - set(pins) - UNLOCKED):
        out.append(f"{name} {have[name]}: installed, not in the lock")
    if len(ort) > 1:
        out.append("onnxruntime and onnxruntime-gpu are both installed: they overwrite each other; keep one")
    return out


def write(venv: Path, path: Path | None = None) -> Path:
    """Write the lock from the packages of the (fresh) virtual env ``venv``; the other ONNX Runtime wheel's pin
    (not installed there) is kept from the previous lock, or resolved to the newest release on the index."""
    path = path or LOCK
    python = venv / "bin" / "python"
    code = "from bertprune.envlock import installed; import json; print(json.dumps(installed()))"
    import json

    have = json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout)
    pins = {k: v for k, v in have.items() if k not in UNLOCKED}
    previous = read_lock(path) if path.is_file() else {}
    for wheel in ORT_WHEELS:
        if wheel not in pins:
            pins[wheel] = previous.get(wheel) or _newest(python, wheel)
    py = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"], check=True,
                        capture_output=True, text=True).stdout.strip()
    lines = [f"# The locked environment (bertprune/envlock.py): every package of `make setup` (ORT=cpu), written by",
             f"# `make lock` on {date.today()} with Python {py}. `make setup` installs with it as constraints;",
             "# CI fails when the tested environment differs (`python -m bertprune.envlock check`).",
             *(f"{name}=={version}" for name, version in sorted(pins.items()))]
    path.write_text("\n".join(lines) + "\n")
    return path


def _newest(python: Path, name: str) -> str:
    out = subprocess.run([str(python), "-m", "pip", "index", "versions", name], capture_output=True, text=True).stdout
    m = re.search(rf"^{re.escape(name)} \(([^)]+)\)", out, re.M)
    if not m:
        raise RuntimeError(f"could not resolve the newest {name} on the package index for the lock")
    return m.group(1)


def main(argv: list[str]) -> int:
    if argv[:1] == ["write"] and len(argv) == 2:
        print(f"wrote {write(Path(argv[1]))}")
        return 0
    if argv == ["check"]:
        diff = differences(read_lock(), installed())
        if diff:
            print(f"this environment ({sys.prefix}) differs from {LOCK}:\n  " + "\n  ".join(diff) +
                  "\nreinstall it with `rm -rf .venv && make setup`, or refresh the lock with `make lock`",
                  file=sys.stderr)
            return 1
        print(f"environment matches {LOCK.name} ({len(read_lock())} pins)")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
