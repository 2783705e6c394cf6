"""MLPerf LoadGen on ONNX Runtime and on DeepSparse, the same exported files, interleaved in one run.

    make setup-deepsparse
    python -m benchmarks.runtime_loadgen SOURCE [--rounds 3] [--scenarios offline,single_stream]
        [--min-duration-ms 10000] [--task rotten_tomatoes] [--deepsparse-seq-lens auto|full|32,64]
        [--out outputs/bench-runtimes]

SOURCE is what bench.py takes (a sweep folder, e.g. prune.py's output with its dense/ reference). Each round
runs ``bench.run_bench`` once per runtime, alternating (onnxruntime, deepsparse, deepsparse, onnxruntime,
...: neither always goes first on a machine that drifts), performance mode; the first round also runs
accuracy mode. The table has, per variant and scenario, the median over rounds of Offline throughput or
SingleStream / MultiStream p90 / Server throughput, each runtime's accuracy from its LoadGen accuracy log,
and the ratios against ONNX Runtime on the same file and on the dense reference, all from this run. Every
run's folder is kept under --out/<round>-<runtime>.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

from benchmarks.harness_overhead import load_task

log = logging.getLogger(__name__)
RUNTIMES = ("onnxruntime", "deepsparse")
# scenario -> (the BenchRow field compared, its label, True when higher is better)
FIELDS = {"Offline": ("throughput", "samples/s", True), "Server": ("throughput", "samples/s", True),
          "SingleStream": ("latency_p90_ms", "p90 ms", False), "MultiStream": ("latency_p90_ms", "p90 ms", False)}


def order(round_index: int) -> tuple[str, ...]:
    """onnxruntime first in even rounds, deepsparse first in odd ones."""
    return RUNTIMES if round_index % 2 == 0 else RUNTIMES[::-1]


def table(results: dict, rounds: int) -> str:
    """results: {(round, runtime): [BenchRow]} -> the markdown table of medians and ratios."""
    values: dict = {}
    accuracy: dict = {}
    for (r, rt), rows in results.items():
        for row in rows:
            field = FIELDS[row.scenario][0]
            value = getattr(row, field)
            if value is not None and row.status == "ok":
                values.setdefault((row.variant, row.scenario, rt), []).append(value)
            if row.metric_value is not None:
                accuracy[(row.variant, rt)] = row.metric_value
    variants = list(dict.fromkeys(v for v, _, _ in values))
    scenarios = list(dict.fromkeys(s for _, s, _ in values))
    dense = next((v for v in variants if v.startswith("dense")), variants[0] if variants else None)
    med = {k: statistics.median(v) for k, v in values.items()}
    lines = [f"median of {rounds} interleaved rounds; ratio > 1 = DeepSparse faster", "",
             "| variant | scenario | ONNX Runtime | DeepSparse | DeepSparse vs ONNX Runtime, same file | "
             "DeepSparse vs ONNX Runtime on dense | accuracy ORT / DeepSparse (LoadGen) |",
             "|---|---|---|---|---|---|---|"]
    for s in scenarios:
        _, unit, higher = FIELDS[s]
        for v in variants:
            o, d = med.get((v, s, "onnxruntime")), med.get((v, s, "deepsparse"))
            base = med.get((dense, s, "onnxruntime"))

            def ratio(a, b):
                if a is None or b is None:
                    return ""
                return f"{(b / a if higher else a / b):.2f}×"

            acc = " / ".join(f"{accuracy[(v, rt)]:.2f}" if (v, rt) in accuracy else "-" for rt in RUNTIMES)
            fmt = (lambda x: "" if x is None else f"{x:.2f} {unit}")
            lines.append(f"| {v} | {s} | {fmt(o)} | {fmt(d)} | {ratio(o, d)} | {ratio(base, d)} | {acc} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a sweep folder, variant folder or .onnx (what bench.py's source= takes)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scenarios", default="offline,single_stream")
    ap.add_argument("--min-duration-ms", type=int, default=10000)
    ap.add_argument("--task", default="rotten_tomatoes")
    ap.add_argument("--deepsparse-python", default=None, help="null: .venv-deepsparse (make setup-deepsparse)")
    ap.add_argument("--deepsparse-seq-lens", default="auto",
                    help="the lengths DeepSparse is compiled for: auto (32, 64, ... max_length), full, or e.g. 32,64")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench-runtimes"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from bertprune.jobs.bench import plan_bench, run_bench
    from bertprune.scenarios import ScenarioSettings
    from bertprune.onnx.deepsparse_runtime import check_runtime, check_seq_lens

    if args.rounds < 1:
        sys.exit(f"runtime_loadgen: --rounds {args.rounds}: expected >= 1")
    task = load_task(args.task)
    scen = []
    for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
        try:  # conf/scenario/<name>.yaml, as bench.py's scenario=[<name>]
            scen.append(ScenarioSettings.named(name, min_duration_ms=args.min_duration_ms))
        except ValueError as e:
            sys.exit(f"runtime_loadgen: --scenarios {name}: {e}")
    seq_lens = args.deepsparse_seq_lens
    if seq_lens not in ("auto", "full"):
        try:
            seq_lens = [int(n) for n in seq_lens.split(",")]
        except ValueError:
            sys.exit(f"runtime_loadgen: --deepsparse-seq-lens {seq_lens}: expected auto, full or lengths such as 32,64")
    try:
        check_seq_lens(seq_lens, task.max_length)
    except ValueError as e:
        sys.exit(f"runtime_loadgen: --deepsparse-seq-lens: {e}")
    ds = check_runtime("deepsparse", args.deepsparse_python)  # one error before any run
    plan_bench(args.source, task, scen, "both")
    log.info("DeepSparse %s at %s (%s)", ds["deepsparse"], ds["python"], ds["cpu"])

    results, t0 = {}, time.time()
    for r in range(args.rounds):
        for rt in order(r):
            mode = "both" if r == 0 else "performance"
            log.info("round %d/%d: %s (%s), %.0f s so far", r + 1, args.rounds, rt, mode, time.time() - t0)
            summary = run_bench(args.source, task, scen, mode=mode, output_dir=args.out / f"{r}-{rt}", runtime=rt,
                                deepsparse_python=args.deepsparse_python, write_back=False,
                                deepsparse_seq_lens=seq_lens if rt == "deepsparse" else None)
            if not summary.complete:
                log.error("round %d %s: %s", r + 1, rt, "; ".join(x.error for x in summary.rows if x.error))
            results[(r, rt)] = summary.rows
    text = table(results, args.rounds)
    import importlib.metadata as md

    versions = {p: md.version(p) for p in ("onnxruntime", "mlcommons-loadgen", "torch")}
    text += (f"\n{time.time() - t0:.0f} s; DeepSparse {ds['deepsparse']} ({ds['cpu']}, lengths {args.deepsparse_seq_lens}); "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtimes.md").write_text(text)
    (args.out / "runtimes.json").write_text(json.dumps(
        {f"{r}-{rt}": [row.__dict__ for row in rows] for (r, rt), rows in results.items()}, indent=2, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
