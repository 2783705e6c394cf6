"""Export benchmark: ONNX Runtime CPU latency and throughput of every exported variant in one run.

    python -m benchmarks.export_speed [--source DIR] [--batch 32] [--iters 20]

Finds every exported variant (``bertprune.onnx.variants.discover_variants``, sha256 checked) under ``--source``
(default: the newest ``multirun/prune/<task-model>/<date>`` sweep), feeds all of them the same real
validation inputs, and measures latency at batch 1 (median over all single-example runs) and
throughput at ``--batch`` (median over repeats, samples/s). Variants are measured round-robin — each
repeat visits every variant once, in a rotated order — so machine noise hits them alike. Speedups are
relative to the dense FP32 variant measured in the same run. Writes ``<source>/export_benchmark.md``
and ``.csv``.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import statistics
import sys
import time
from pathlib import Path

from bertprune.io import atomic_write_text
from bertprune.onnx import variants as onnx_variants
from bertprune.interface import INPUTS
from bertprune.onnx.variants import SIDECAR

log = logging.getLogger(__name__)
COLUMNS = ["variant", "precision", "mac_ratio", "metric", "metric_value", "latency_ms", "throughput",
           "latency_speedup", "throughput_speedup", "file_size", "parameters", "path"]


def default_source(root: Path = Path("multirun/prune")) -> Path:
    """The newest sweep folder (``multirun/prune/<task-model>/<date>``) that holds exported variants."""
    sweeps = [d for d in root.glob("*/*") if d.is_dir() and any(d.rglob(SIDECAR))]
    if not sweeps:
        raise FileNotFoundError(f"no sweep with exported variants under {root}/*/*; run `python prune.py -m ...` "
                                "(export=true) or pass --source DIR")
    return max(sweeps, key=lambda d: d.stat().st_mtime)


def find_variants(source: Path) -> list[dict]:
    """Complete exports under ``source`` (``discover_variants``; sha256 checked), one per distinct model, as
    their sidecars with ``path`` and a usable ``tokenizer``; dense first. [] when there is none."""
    try:
        discovered = onnx_variants.discover_variants(source)
    except FileNotFoundError:
        return []
    found, seen = [], set()
    for v in sorted(discovered, key=lambda v: str(v.onnx)):
        if onnx_variants.complete_variant(v.onnx.parent) is None:
            log.warning("skipping %s: incomplete export or model.onnx does not match its sha256", v.onnx.parent)
            continue
        if v.sha256 not in seen:
            seen.add(v.sha256)
            found.append({**v.meta, "variant": v.name, "path": str(v.onnx), "tokenizer": str(v.tokenizer)})
    return sorted(found, key=lambda s: (not s["variant"].startswith("dense"), -s["mac_ratio"], s["precision"]))


def bench_inputs(sidecar: dict, batch: int, latency_samples: int, throughput_batches: int):
    """Real validation inputs for one task (``bertprune.tasks.features``): (single-example feeds, feeds of
    ``batch`` examples). Text kinds pad each batch to its longest member; a fixed-length kind (qa) to
    ``max_length``."""
    from bertprune.models import load_tokenizer
    from bertprune.tasks.data import Task
    from bertprune.tasks.features import input_rows, pad, to_feeds, tokenized_splits
    from bertprune.tasks.kinds import get_kind

    task = Task(**sidecar["task_config"])
    tokenizer = load_tokenizer(sidecar["tokenizer"])
    n = max(latency_samples, batch * throughput_batches)
    if get_kind(task.kind).fixed_seq_len:
        rows = _qa_rows(task, tokenizer, n)
        padding = dict(padding="max_length", max_length=task.max_length)
    else:
        val = input_rows(tokenized_splits(task, tokenizer, {"validation": n})["validation"])
        rows = [val[i % len(val)] for i in range(n)]
        padding = dict(padding="longest")

    def feeds(chunk):
        return to_feeds(pad(tokenizer, chunk, **padding))

    singles = [feeds(rows[i:i + 1]) for i in range(latency_samples)]
    batches = [feeds(rows[i * batch:(i + 1) * batch]) for i in range(throughput_batches)]
    return singles, batches


def _qa_rows(task, tokenizer, n: int) -> list[dict]:
    from bertprune.tasks.features import sample_qa_rows, squad_validation

    if not task.data_file:
        log.warning("task %s has no data_file: benchmarking on built-in question/context pairs", task.name)
        return sample_qa_rows(tokenizer, n, task.max_length)
    _, feats = squad_validation(task, tokenizer, n)
    rows = [{"input_ids": feats.input_ids[i], "attention_mask": feats.input_mask[i],
             "token_type_ids": feats.segment_ids[i]} for i in range(len(feats))]
    return [rows[i % len(rows)] for i in range(n)]


def benchmark(source: str | Path, batch: int = 32, iters: int = 20, latency_samples: int = 32,
              throughput_batches: int = 4, threads: int | None = None, write: bool = True) -> list[dict]:
    """Measure every variant under ``source``; returns one row per variant (see COLUMNS)."""
    from bertprune.onnx.runtime import make_session

    source = Path(source)
    variants = find_variants(source)
    if not variants:
        raise FileNotFoundError(f"no exported variant (model.json + model.onnx) under {source}; "
                                f"export first: python export.py source={source}")
    inputs: dict[tuple, tuple] = {}
    for v in variants:  # variants of the same task and tokenizer share inputs
        key = (v["tokenizer"], repr(sorted(v["task_config"].items())))
        if key not in inputs:
            inputs[key] = bench_inputs(v, batch, latency_samples, throughput_batches)
        v["_inputs"] = inputs[key]
        v["_session"] = make_session(v["path"], "cpu", intra_op_threads=threads)[0]

    def run(v, feeds):
        v["_session"].run(None, {k: feeds[k] for k in INPUTS})

    for v in variants:  # warm-up
        run(v, v["_inputs"][0][0])
        run(v, v["_inputs"][1][0])
    latency = {id(v): [] for v in variants}
    throughput = {id(v): [] for v in variants}
    for r in range(iters):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            singles, batches = v["_inputs"]
            for feeds in singles:
                t = time.perf_counter()
                run(v, feeds)
                latency[id(v)].append(time.perf_counter() - t)
            t = time.perf_counter()
            for feeds in batches:
                run(v, feeds)
            throughput[id(v)].append(sum(len(f["input_ids"]) for f in batches) / (time.perf_counter() - t))

    rows = []
    for v in variants:
        value = v.get("metric_value", {}).get("onnx")
        rows.append({"variant": v["variant"], "precision": v["precision"], "mac_ratio": v["mac_ratio"],
                     "metric": v.get("metric"), "metric_value": value,
                     "latency_ms": 1e3 * statistics.median(latency[id(v)]),
                     "throughput": statistics.median(throughput[id(v)]), "file_size": v["file_size"],
                     "parameters": v["parameters"], "path": v["path"]})
    dense = next((r for r in rows if r["variant"] == "dense" and r["precision"] == "fp32"), None)
    for r in rows:
        r["latency_speedup"] = dense["latency_ms"] / r["latency_ms"] if dense else None
        r["throughput_speedup"] = r["throughput"] / dense["throughput"] if dense else None
    if write:
        md = format_markdown(rows, source, batch, iters, latency_samples, dense is not None)
        atomic_write_text(source / "export_benchmark.md", md)
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(source / "export_benchmark.csv", buf.getvalue())
        print(md)
    return rows


def format_markdown(rows: list[dict], source: Path, batch: int, iters: int, latency_samples: int,
                    has_dense: bool) -> str:
    def f(v, fmt):
        return fmt.format(v) if isinstance(v, (int, float)) else "–"

    metric = rows[0]["metric"] or "accuracy"
    lines = [f"Export benchmark of {source} — ONNX Runtime CPU; latency: batch 1, median of {iters} × "
             f"{latency_samples} runs; throughput: batch {batch}, median of {iters} repeats; round-robin.", "",
             f"| variant | precision | MAC ratio | {metric} | latency ms | throughput /s | latency speedup | "
             "throughput speedup |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['precision']} | {r['mac_ratio']:.3f} | {f(r['metric_value'], '{:.2f}' if metric in ('accuracy', 'f1') else '{:.4g}')} | "
                     f"{r['latency_ms']:.2f} | {r['throughput']:.1f} | {f(r['latency_speedup'], '{:.2f}×')} | "
                     f"{f(r['throughput_speedup'], '{:.2f}×')} |")
    if not has_dense:
        lines += ["", f"No dense FP32 variant under {source}: speedups are not computed. Add the reference with "
                      f"`python export.py source={source}` (exports the runs' teacher to {source}/dense/<teacher sha256>/onnx)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=None, help="folder with exported variants (default: newest sweep)")
    p.add_argument("--batch", type=int, default=32, help="batch size of the throughput measurement")
    p.add_argument("--iters", type=int, default=20, help="round-robin repeats")
    p.add_argument("--latency-samples", type=int, default=32, help="single examples timed per repeat")
    p.add_argument("--throughput-batches", type=int, default=4, help="batches timed per repeat")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    args = p.parse_args(argv)
    if min(args.batch, args.iters, args.latency_samples, args.throughput_batches) < 1:
        p.error("--batch, --iters, --latency-samples and --throughput-batches must be >= 1")
    logging.basicConfig(level=logging.WARNING)
    source = args.source or default_source()
    benchmark(source, args.batch, args.iters, args.latency_samples, args.throughput_batches, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
