"""Does a sparse CPU engine turn OBS's zeros into speed? DeepSparse against ONNX Runtime on the same files.

    make setup-deepsparse
    .venv-deepsparse/bin/python benchmarks/sparse_engine_speed.py DENSE.onnx SPARSE.onnx [MORE.onnx ...]

DeepSparse pins onnx < 1.15 and numpy < 2, which bertprune's locked environment does not allow, so this
script runs in its own venv (``make setup-deepsparse``) and imports of bertprune only its DeepSparse worker
module (numpy, onnx), besides onnxruntime and deepsparse. ``python bench.py runtime=deepsparse`` runs the same
engine under MLPerf LoadGen.
(DeepSparse's Community License allows evaluation and research, not production: read it before you use it.)

Each file is loaded as exported (the MLPerf interface: input_ids, input_mask, segment_ids, int64). Its IR
version is lowered to 9 when higher (the ONNX Runtime inside DeepSparse 1.8 reads IR <= 9; the opset is kept),
and DeepSparse compiles it for static shapes [--batch, --seq] (with dynamic shapes it falls back to its
unoptimised path). Both runtimes get the same random tokens; the outputs are compared, then every
(runtime, file) pair is timed for --seconds, round-robin over --rounds rounds; the table has the median
latency and the speedups against ONNX Runtime on the dense file, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: its DeepSparse worker module
from bertprune.onnx.deepsparse_worker import prepare  # noqa: E402 - imports only numpy and onnx


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path, help="the dense ONNX file first, then sparse ones")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="cores for both runtimes")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="timing per (runtime, file) per round")
    args = ap.parse_args(argv)
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # DeepSparse would try to report usage over the network
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from deepsparse import compile_model
    except ImportError as e:
        sys.exit(f"sparse_engine_speed: {e}. It runs in its own venv: make setup-deepsparse, then "
                 ".venv-deepsparse/bin/python benchmarks/sparse_engine_speed.py DENSE.onnx SPARSE.onnx")
    for p in args.models:
        if not p.is_file():
            sys.exit(f"sparse_engine_speed: {p} is not a file; pass ONNX files written by export.py or prune.py "
                     "(<run>/onnx/model.onnx)")

    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 2000, (args.batch, args.seq), dtype=np.int64),
            "input_mask": np.ones((args.batch, args.seq), np.int64),
            "segment_ids": np.zeros((args.batch, args.seq), np.int64)}
    tmp = Path(tempfile.mkdtemp(prefix="sparse_engine-"))
    runners, info = {}, {}
    for i, path in enumerate(args.models):
        name = f"{i}:{path.parent.parent.name}/{path.name}" if path.parent.name == "onnx" else f"{i}:{path.name}"
        low = tmp / f"{i}.onnx"
        try:
            names, zeros, ir = prepare(path, low)
        except ValueError as e:
            sys.exit(f"sparse_engine_speed: {e}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        t = time.perf_counter()
        engine = compile_model(str(low), batch_size=args.batch, num_cores=args.threads,
                               input_shapes=[[args.batch, args.seq]] * len(names))
        compile_s = time.perf_counter() - t
        ref = sess.run(None, feed)[0]
        got = engine.run([feed[n] for n in names])[0]
        diff = float(np.abs(np.asarray(got) - ref).max())
        info[name] = {"zeros": zeros, "ir": ir, "compile_s": compile_s, "max_abs_diff": diff}
        print(f"{name}: {zeros:.1%} zeros in its MatMul weights, IR {ir}, DeepSparse compile {compile_s:.1f} s, "
              f"max |DeepSparse - ONNX Runtime| = {diff:.2e}", flush=True)
        runners[("onnxruntime", name)] = lambda s=sess: s.run(None, feed)
        runners[("deepsparse", name)] = lambda e=engine, n=names: e.run([feed[k] for k in n])

    times: dict = {k: [] for k in runners}
    for r in range(args.rounds):
        for key, run in runners.items():
            run()
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < args.seconds:
                run()
                n += 1
            times[key].append((time.perf_counter() - t) / n * 1000)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    dense = next(iter(info))
    base = med[("onnxruntime", dense)]
    print(f"\nbatch {args.batch}, sequence {args.seq}, {args.threads} threads, {args.rounds} rounds of "
          f"{args.seconds:g} s, round-robin; median latency (ms) and speedup vs ONNX Runtime on {dense}:\n")
    print("| model | zeros | ONNX Runtime | DeepSparse | DeepSparse vs ONNX Runtime, same file | "
          "vs ONNX Runtime dense |")
    print("|---|---|---|---|---|---|")
    for name, i in info.items():
        o, d = med[("onnxruntime", name)], med[("deepsparse", name)]
        print(f"| {name} | {i['zeros']:.1%} | {o:.2f} | {d:.2f} | {o / d:.2f}× | {base / d:.2f}× |")
    versions = {m: __import__(m).__version__ for m in ("deepsparse", "onnxruntime", "onnx", "numpy")}
    print("\n" + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
