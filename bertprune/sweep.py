"""Summary of a prune sweep: one CSV + Markdown table of all its finished jobs.

Runs as a Hydra callback at the end of ``python prune.py -m ...`` and stand-alone as
``python -m bertprune.sweep <sweep_dir>``. Only complete jobs (an atomically written results.json)
are listed; jobs without one are reported as missing, never silently dropped.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

COLUMNS = [
    ("constraint", "constraint", "{:.2f}"),
    ("prune/mac_ratio", "MAC ratio", "{:.3f}"),
    ("eval/accuracy_dense", "dense acc", "{:.2f}"),
    ("eval/accuracy_search", "search", "{:.2f}"),
    ("eval/accuracy_rearrange", "rearrange", "{:.2f}"),
    ("eval/accuracy_tune", "tune", "{:.2f}"),
    ("prune/kept_heads", "heads", "{}"),
    ("prune/kept_neurons", "neurons", "{}"),
    ("model/parameters", "params", "{:,}"),
    ("time/prune_s", "prune s", "{:.1f}"),
    ("export/onnx_accuracy", "ONNX acc", "{:.2f}"),
]


def collect(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    rows, missing = [], []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        f = job / "results.json"
        if f.is_file():
            r = json.loads(f.read_text())
            r["job"] = job.name
            rows.append(r)
        elif (job / ".hydra").is_dir():
            missing.append(job.name)
    rows.sort(key=lambda r: r.get("constraint", 0))
    return rows, missing


def write_summary(sweep_dir: str | Path) -> str:
    sweep_dir = Path(sweep_dir)
    rows, missing = collect(sweep_dir)
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    with open(sweep_dir / "summary.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job"] + [k for k, _, _ in cols])
        for r in rows:
            w.writerow([r["job"]] + [r.get(k, "") for k, _, _ in cols])
    (sweep_dir / "summary.csv.tmp").replace(sweep_dir / "summary.csv")
    lines = ["| job | " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        cells = [fmt.format(r[k]) if r.get(k) is not None and k in r else "" for k, _, fmt in cols]
        lines.append(f"| {r['job']} | " + " | ".join(cells) + " |")
    if missing:
        lines.append(f"\nJobs without results (failed or interrupted): {', '.join(missing)}")
    md = "\n".join(lines) + "\n"
    (sweep_dir / "summary.md.tmp").write_text(md)
    (sweep_dir / "summary.md.tmp").replace(sweep_dir / "summary.md")
    return md


class SweepSummary(Callback):
    """Hydra callback: write summary.csv / summary.md into the sweep folder when the sweep ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            md = write_summary(sweep_dir)
            print(f"\nSweep summary ({sweep_dir}/summary.md):\n{md}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bertprune.sweep <sweep_dir>")
    print(write_summary(sys.argv[1]))
