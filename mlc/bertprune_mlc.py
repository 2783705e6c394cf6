"""What the scripts of bertprune's MLC repository share (loaded by each script's customize.py; standard library
only: it runs inside mlc's own interpreter, which need not have bertprune installed)."""

import os
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]  # <checkout>/mlc/bertprune_mlc.py


def checkout_and_python(env: dict, entry: str) -> tuple[Path, str]:
    """The checkout whose entry point runs (BERTPRUNE_ROOT, else the one holding this repository) and the
    interpreter (--python / BERTPRUNE_PYTHON, else the one running mlc); errors name the fix."""
    root = Path(env.get("BERTPRUNE_ROOT") or CHECKOUT).resolve()
    if not (root / entry).is_file():
        raise ValueError(f"BERTPRUNE_ROOT={root} holds no {entry}; set --env.BERTPRUNE_ROOT=<bertprune checkout>")
    python = env.get("BERTPRUNE_PYTHON") or sys.executable
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ValueError(f"--python={python} is not an executable interpreter; give the Python that has "
                         "bertprune installed, e.g. --python=$PWD/.venv/bin/python")
    return root, python


def text(value) -> str:
    """An input as text: mlcr may hand a comma list over as a Python list."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value or "").strip()
