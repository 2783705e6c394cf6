"""``make demo``: the whole spine on the embedded default, through the real command lines.

teacher (cached) -> ``prune.py -m constraint=0.4,0.5,0.6`` (each job exports its ONNX variant; the
first one also exports the dense teacher to ``<sweep>/dense/<teacher key>/onnx``) -> ``bench.py``
(LoadGen on every variant) -> summary tables. Every step runs even when an earlier one partly failed
(the variants that exist are benchmarked); the demo exits non-zero and says what failed when any
prune job or LoadGen run did not finish, or a command failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: the demo runs its root entry points


def run(args: list[str]) -> int:
    print(f"\n$ python {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ}).returncode


def prune_problems(sweep: Path, returncode: int) -> list[str]:
    """What went wrong in the prune sweep: its unfinished jobs (from its summary), or a failed command."""
    from bertprune.jobs.sweep import incomplete_jobs

    if not (sweep / "summary.csv").is_file():
        return [f"prune.py -m exited with {returncode} and wrote no summary in {sweep}"]
    problems = [f"prune job {r['job']}: {r['status']}" + (f" ({r['error']})" if r["error"] else "")
                for r in incomplete_jobs(sweep)]
    if returncode != 0 and not problems:
        problems.append(f"prune.py -m exited with {returncode}")
    return problems


def bench_problems(bench_dir: Path, returncode: int) -> list[str]:
    """What went wrong in bench.py: its failed / interrupted runs (summary.json), or a failed command."""
    try:
        summary = json.loads((bench_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return [f"bench.py exited with {returncode} and wrote no readable summary.json in {bench_dir}"]
    problems = [f"LoadGen {r['variant']} {r['scenario']}: {r['status']}" + (f" ({r['error']})" if r.get("error") else "")
                for r in summary.get("rows", []) if r.get("status") != "ok"]
    if not summary.get("complete") and not problems:
        problems.append(f"bench summary {bench_dir / 'summary.json'} says incomplete")
    if returncode != 0 and not problems:
        problems.append(f"bench.py exited with {returncode}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code (0 only when every job and run finished)."""
    argv = list(sys.argv[1:] if argv is None else argv)  # extra prune.py overrides, e.g. quantize=int8
    out = ROOT / "multirun" / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    start = time.perf_counter()
    if (rc := run(["train.py"])) != 0:
        print(f"\ndemo FAILED: train.py exited with {rc}; nothing to prune without the teacher", file=sys.stderr)
        return 1
    rc = run(["prune.py", "-m", "constraint=0.4,0.5,0.6", f"hydra.sweep.dir={out}", *argv])
    problems = prune_problems(out, rc)
    if (out / "summary.md").is_file():
        print(f"\nPrune sweep ({out}/summary.md):\n{(out / 'summary.md').read_text()}")
    if any(out.glob("*/onnx/model.json")):
        bench_dir = out / "bench"
        problems += bench_problems(bench_dir, run(["bench.py", f"source={out}", f"output_dir={bench_dir}"]))
        if (bench_dir / "summary.md").is_file():
            print(f"MLPerf LoadGen ({bench_dir / 'summary.md'}):\n{(bench_dir / 'summary.md').read_text()}")
    else:
        problems.append(f"no exported variant under {out}: nothing to benchmark")
    minutes = (time.perf_counter() - start) / 60
    if problems:
        print(f"\ndemo INCOMPLETE after {minutes:.1f} min ({out}):\n" + "\n".join(f"  - {p}" for p in problems),
              file=sys.stderr)
        return 1
    print(f"demo finished in {minutes:.1f} min; everything is in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
