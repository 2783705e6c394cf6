"""``make demo``: the whole spine on the embedded default, through the real command lines.

teacher (cached) -> ``prune.py -m constraint=0.4,0.5,0.6`` (each job exports its ONNX variant; the
first one also exports the dense teacher to ``<sweep>/dense/onnx``) -> ``bench.py`` (LoadGen on every
variant) -> summary tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> None:
    print(f"\n$ python {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, env={**os.environ})


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)  # extra prune.py overrides, e.g. quantize=int8
    out = ROOT / "multirun" / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    start = time.perf_counter()
    run(["train.py"])
    run(["prune.py", "-m", "constraint=0.4,0.5,0.6", f"hydra.sweep.dir={out}", *argv])
    run(["bench.py", f"source={out}", f"output_dir={out / 'bench'}"])
    print(f"\nPrune sweep ({out}/summary.md):\n{(out / 'summary.md').read_text()}")
    bench_md = out / "bench" / "summary.md"
    if bench_md.exists():
        print(f"MLPerf LoadGen ({bench_md}):\n{bench_md.read_text()}")
    print(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min; everything is in {out}")


if __name__ == "__main__":
    main()
