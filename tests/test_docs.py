"""The project documents itself: every docs/ file that code, configs or the README cite exists, and
nothing cites notes that live outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE_NOTES = "DESIGN" + ".md"  # developer notes kept outside the repository (spelled apart: this file is tracked too)


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.splitlines() if (ROOT / f).is_file()]


def test_no_file_cites_notes_outside_the_repository():
    offenders = [str(p.relative_to(ROOT)) for p in _tracked()
                 if p.suffix in (".py", ".yaml", ".md", ".ipynb", ".toml", "") and OUTSIDE_NOTES in p.read_text(errors="ignore")]
    assert not offenders, f"cite docs/ instead of {OUTSIDE_NOTES}: {offenders}"


def test_cited_docs_exist():
    cited = set()
    for p in _tracked():
        if p.suffix in (".py", ".yaml", ".md"):
            cited |= set(re.findall(r"docs/[\w-]+\.md", p.read_text(errors="ignore")))
    assert {"docs/method.md", "docs/mlperf.md"} <= cited
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, missing


def test_cited_modules_exist():
    """The README's package map and the docs name real files: every ``bertprune/<...>.py`` and every
    ``<subpackage>/<module>.py`` they cite exists (a moved module must take its citations with it)."""
    sub = r"(?:core|tasks|models|lightning|onnx|mlperf|jobs)"
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for path in set(re.findall(r"bertprune/[\w/]+\.py", text)):
            if not (ROOT / path).is_file():
                missing.append(f"{doc.name}: {path}")
        for path in set(re.findall(rf"(?<![\w/]){sub}/\w+\.py", text)):
            if not (ROOT / "bertprune" / path).is_file():
                missing.append(f"{doc.name}: {path}")
        # the folder table's `files` column: each `x.py` in a row that names a bertprune/ folder
        for folder, files in re.findall(r"^\| `(bertprune/\w+/)` \| ([^|]+) \|", text, flags=re.M):
            for name in re.findall(r"`(\w+\.py)`", files):
                if not (ROOT / folder / name).is_file():
                    missing.append(f"{doc.name}: {folder}{name}")
    assert not missing, missing
