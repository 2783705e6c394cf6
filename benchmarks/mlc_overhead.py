"""What MLC adds over plain prune.py: ``mlcr prune,bert,kwon,bertprune`` vs ``python prune.py -m``, same job, one run.

    python -m benchmarks.mlc_overhead [--repeats 3] [--constraint 0.5]

Both sides run the same one-job sweep on the tiny random model and a tiny CSV task (prune + ONNX export), each into
a fresh folder, interleaved (plain, mlcr, plain, mlcr ...) so that machine drift hits both alike; the tiny
teacher is fine-tuned once in a warm-up run first (a temporary cache). mlcr runs from a temporary MLC home
(HOME, MLC_REPOS) that holds only this checkout's mlc/ repository. Reports the median wall time of each side and
their difference: MLC's own cost (start-up, index, customize.py, the run.sh shell) per call.
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


def _timed(args: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} ... exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_sentiment_csv  # the tests' tiny sentiment task (192 train / 64 dev rows)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
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
                     "tuning.num_samples=64"]

        def plain(i: int) -> float:
            return _timed([sys.executable, str(ROOT / "prune.py"), "-m", *overrides,
                           f"hydra.sweep.dir={tmp / f'plain-{i}'}"], tmp, env)

        def mlcr(i: int) -> float:
            return _timed([str(bin_dir / "mlcr"), "prune,bert,kwon,bertprune", f"--constraint={a.constraint}",
                           f"--output_dir={tmp / f'mlcr-{i}'}", "--overrides=" + " ".join(overrides[1:])], tmp, env)

        print("warm-up (fine-tunes the tiny teacher once) ...", flush=True)
        plain(-1)
        times: dict[str, list[float]] = {"python prune.py -m": [], "mlcr prune,bert,kwon,bertprune": []}
        for i in range(a.repeats):
            for name, run in zip(times, (plain, mlcr)):
                times[name].append(run(i))
                print(f"[{i + 1}/{a.repeats}] {name}: {times[name][-1]:.2f} s", flush=True)
    base, mlc = (statistics.median(t) for t in times.values())
    print(f"\n| command (tiny model, constraint {a.constraint}, prune + export) | median wall s (n={a.repeats}) |")
    print("|---|---|")
    for name, t in times.items():
        print(f"| `{name}` | {statistics.median(t):.2f} |")
    print(f"| **MLC overhead** | **{mlc - base:+.2f} s ({(mlc - base) / base:+.1%})** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
