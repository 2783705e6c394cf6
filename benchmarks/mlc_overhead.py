"""What MLC adds over plain prune.py: ``mlcr prune,bert,kwon,bertprune`` vs ``python prune.py -m``, same job, one run.

    python -m benchmarks.mlc_overhead [--repeats 3] [--fixed-repeats 10] [--constraint 0.5]

Both sides run the same one-job sweep on the tiny random model and a tiny CSV task (prune + ONNX export), each into
a fresh folder, interleaved (plain, mlcr, plain, mlcr ...) so that machine drift hits both alike; the tiny
teacher is fine-tuned once in a warm-up run first (a temporary cache). mlcr runs from a temporary MLC home
(HOME, MLC_REPOS) that holds only this checkout's mlc/ repository. Reports the median wall time of each side and
the median of the paired differences. MLC's own cost per call (start-up, index, customize.py, the run.sh shell)
is small next to a job's run-to-run spread on a busy machine, so it is also measured alone, with more repeats: the
same call with constraint=1.5, which both sides refuse at prune.py's config check (after the same imports).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(args: list[str], cwd: Path, env: dict, fails: bool = False) -> float:
    """Wall time of one command; it must succeed (or, ``fails``, exit non-zero with prune.py's constraint error)."""
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if fails and proc.returncode != 0 and "must be in (0, 1)" in proc.stdout + proc.stderr:
        return wall
    if proc.returncode != 0 or fails:
        raise RuntimeError(f"{' '.join(args[:3])} ... exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_sentiment_csv  # the tests' tiny sentiment task (192 train / 64 dev rows)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fixed-repeats", type=int, default=10)
    parser.add_argument("--constraint", type=float, default=0.5)
    a = parser.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="mlc-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "HOME": str(tmp), "MLC_REPOS": str(tmp / "MLC" / "repos"), "WANDB_MODE": "offline",
               "BERTPRUNE_CACHE_DIR": str(tmp / "cache")}
        subprocess.run([str(bin_dir / "mlc"), "add", "repo", str(ROOT / "mlc")], cwd=tmp, env=env, check=True,
                       capture_output=True)
        train, dev = make_sentiment_csv(tmp / "train.csv", 192, 0), make_sentiment_csv(tmp / "dev.csv", 64, 1)
        overrides = [f"constraint={a.constraint}", "model=tiny", "task=csv", f"task.train_file={train}",
                     f"task.validation_file={dev}", "task.max_length=32", "training=fast",
                     "training.max_train_samples=null", "training.epochs=3", "logger=none", "num_samples=128",
]

        def plain(i: int, constraint: float = a.constraint) -> float:
            return _timed([sys.executable, str(ROOT / "prune.py"), "-m", f"constraint={constraint}", *overrides[1:],
                           f"hydra.sweep.dir={tmp / f'plain-{i}'}"], tmp, env, fails=constraint >= 1)

        def mlcr(i: int, constraint: float = a.constraint) -> float:
            return _timed([str(bin_dir / "mlcr"), "prune,bert,kwon,bertprune", f"--constraint={constraint}",
                           f"--output_dir={tmp / f'mlcr-{i}'}", "--overrides=" + " ".join(overrides[1:])], tmp, env,
                          fails=constraint >= 1)

        print("warm-up (fine-tunes the tiny teacher once) ...", flush=True)
        plain(-1)
        names = ("python prune.py -m", "mlcr prune,bert,kwon,bertprune")
        parts = {"job": (a.repeats, a.constraint), "fixed": (a.fixed_repeats, 1.5)}
        times = {part: {name: [] for name in names} for part in parts}
        for part, (repeats, constraint) in parts.items():
            for i in range(repeats):
                for name, run in zip(names, (plain, mlcr)):
                    times[part][name].append(run(1000 * (part == "fixed") + i, constraint))
                    print(f"[{part} {i + 1}/{repeats}] {name}: {times[part][name][-1]:.2f} s", flush=True)
    labels = {"job": f"one job (tiny model, constraint {a.constraint}, prune + export)",
              "fixed": "MLC's own cost: the same call refused at the config check (constraint=1.5)"}
    print("\n| measurement | n | `python prune.py -m` median s | `mlcr prune,bert,kwon` median s | "
          "median paired difference |")
    print("|---|---|---|---|---|")
    for part, t in times.items():
        plain_t, mlc_t = t[names[0]], t[names[1]]
        diff = statistics.median(m - p for p, m in zip(plain_t, mlc_t))
        print(f"| {labels[part]} | {len(plain_t)} | {statistics.median(plain_t):.2f} | {statistics.median(mlc_t):.2f} | "
              f"**{diff:+.2f} s** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
