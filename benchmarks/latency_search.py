"""Latency-search benchmark (README): ``python -m benchmarks.latency_search [--threads 1] [overrides...]``.

In one process, on the embedded default (cached MiniLM teacher, Rotten Tomatoes, ONNX Runtime CPU):
  1. prune.py's job with ``cost=latency`` (SingleStream table: batch 1, seq = task.max_length) and with
     ``cost=mac`` at each constraint, both exported; the first latency job measures the table, the
     others read it from the cache (its measuring time vs the cache hit);
  2. the Offline table (batch = conf/scenario/offline.yaml's batch_size), measured once;
  3. every exported model and the dense one timed interleaved (round-robin, medians) at batch 1 and at
     the Offline batch, next to the latency each table predicts for it;
  4. (``--points-study``) how many sample points the fit needs: one-layer blocks timed at every head count
     and every 64th FFN width, and fits from subsets of them checked on the points they left out.
Prints markdown tables and writes ``--out`` (JSON). The machine may be shared: only ratios measured in
the same run, interleaved, mean anything.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from bertprune.resources import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("prune", overrides)


def points_study(model, kind, s, ffn_points: int = 25) -> dict:
    """Max relative error of fits from fewer samples on the measured points they leave out."""
    from bertprune.core.cost import PiecewiseLinear
    from bertprune.models.adapters import adapter_for
    from bertprune.onnx import latency as lat
    from bertprune.onnx.runtime import quiet

    _, H, F = adapter_for(model).dense_shape(model.config)
    full = {"mha": list(range(H + 1)), "ffn": lat.sample_counts(F, ffn_points)}
    runners, index = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for block, counts in full.items():
            for c in counts:
                with quiet():
                    m = lat._shrunk(model, 1, [c], [0]) if block == "mha" else lat._shrunk(model, 1, [0], [c])
                    runners.append(lat.Runner(m, kind, s, Path(tmp)))
                index.append((block, c))
        ms = lat.time_interleaved(runners, s, progress=True, desc="points study")
    measured = {b: {c: t for (bb, c), t in zip(index, ms) if bb == b} for b in full}
    out = {"measured": {b: [[c, t] for c, t in v.items()] for b, v in measured.items()}, "errors": {}}
    subsets = {"mha": [2, 3, 4, 6], "ffn": [3, 5, 7, 13]}
    for block, pts in subsets.items():
        for p in pts:
            counts = [c for c in lat.sample_counts(H if block == "mha" else F, p) if c in measured[block]]
            fit = PiecewiseLinear.fit(counts, [measured[block][c] for c in counts])
            left = [c for c in measured[block] if c not in counts]
            err = max(abs(fit(c) - measured[block][c]) / measured[block][c] for c in left) if left else 0.0
            out["errors"][f"{block}/{p}"] = {"samples": len(counts), "max_rel_error_left_out": err}
    return out


def main(argv=None) -> dict:
    from omegaconf import open_dict

    from bertprune.config import register
    from bertprune.core.cost import LatencyCost
    from bertprune.jobs.prune import prune
    from bertprune.models import load_model
    from bertprune.onnx import latency as lat
    from bertprune.onnx.export import export_onnx
    from bertprune.onnx.runtime import quiet
    from bertprune.tasks.data import Task

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--constraints", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads of the tables and of every timing (the benchmark's thread count)")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds of the final timing")
    ap.add_argument("--min-time", type=float, default=1.5, help="seconds of final timing per model and batch")
    ap.add_argument("--points-study", action="store_true")
    ap.add_argument("--out", default="latency_search.json")
    ap.add_argument("overrides", nargs="*", help="prune config overrides, e.g. num_samples=1024")
    args = ap.parse_args(argv)
    register()
    root = Path(tempfile.mkdtemp(prefix="bench_latency-"))
    out: dict = {"threads": args.threads, "jobs": {}}

    def save() -> None:
        Path(args.out).write_text(json.dumps(out, indent=1, default=str))

    # ---- 1. the jobs, latency and MAC at each constraint
    jobs = {}
    for c in args.constraints:
        for cost in ("latency", "mac"):
            extra = [f"cost.threads={args.threads}"] if cost == "latency" else []
            cfg = _compose([f"constraint={c}", f"cost={cost}", "export=true", "logger=none", *extra, *args.overrides])
            with open_dict(cfg):
                cfg.output_dir = str(root / f"{cost}-c{c}")
            t = time.perf_counter()
            r = prune(cfg)
            r["bench/job_s"] = time.perf_counter() - t
            jobs[(cost, c)] = (cfg, r)
            out["jobs"][f"{cost}-c{c}"] = r
            save()
    cfg0, r0 = next(iter(jobs.values()))
    task = Task.from_config(cfg0.task)
    kind = task.task_kind
    teacher = load_model(r0["teacher"], kind, task.num_labels, require_head=True).eval()
    lat_jobs = [r for (cost, _), (_, r) in jobs.items() if cost == "latency"]
    out["lut_single_stream"] = {"measure_s": lat_jobs[0]["latency/lut_measure_s"],
                                "job_lut_s": [r["time/latency_lut_s"] for r in lat_jobs],
                                "cached": [r["latency/lut_cached"] for r in lat_jobs]}

    # ---- 2. the two tables (SingleStream: from the cache the jobs filled; Offline: measured here, then cached)
    costs, settings = {}, {}
    for scenario in ("single_stream", "offline"):
        t = time.perf_counter()
        cost = lat.latency_cost(teacher, seq_len=r0["prune/mac_seq_len"], task=task, scenario=scenario,
                                threads=args.threads, device=str(cfg0.hardware.runtime_device))
        costs[scenario] = cost
        settings[scenario] = lat.settings_for(task, None, scenario, None, args.threads, "onnxruntime",
                                              str(cfg0.hardware.runtime_device), 9)
        out[f"lut_{scenario}_build_s"] = time.perf_counter() - t
        out[f"lut_{scenario}"] = {**out.get(f"lut_{scenario}", {}), "measure_s_table": cost.table["measure_s"],
                                  "cached": cost.table["cached"], "scale": cost.table["scale"],
                                  "dense_ms": cost.table["dense_ms"], "skeleton_ms": cost.table["skeleton_ms"]}
    t = time.perf_counter()
    lat.latency_cost(teacher, seq_len=r0["prune/mac_seq_len"], task=task, scenario="offline", threads=args.threads)
    out["lut_offline_cache_hit_s"] = time.perf_counter() - t
    save()

    # ---- 3. every exported model + the dense one, interleaved, at both batch sizes
    dense_onnx = root / "dense.onnx"
    with quiet():
        export_onnx(teacher, dense_onnx, kind, None)
    names = ["dense"] + [f"{cost}-c{c}" for (cost, c) in jobs]
    paths = [dense_onnx] + [Path(r["pruned_dir"]).parent / "onnx" / "model.onnx" for _, r in jobs.values()]
    shapes = [([teacher.config.num_attention_heads] * teacher.config.num_hidden_layers,
               [teacher.config.intermediate_size] * teacher.config.num_hidden_layers)]
    shapes += [(r["prune/heads_per_layer"], r["prune/ffn_per_layer"]) for _, r in jobs.values()]
    timing = {}
    for scenario, s in settings.items():
        s = lat.LatencySettings(**{**s.__dict__, "min_time_s": args.min_time, "rounds": args.rounds})
        runners = [lat.Runner(None, kind, s, onnx_path=p) for p in paths]
        ms = lat.time_interleaved(runners, s, progress=True, desc=f"timing b{s.batch_size}")
        del runners
        cost: LatencyCost = costs[scenario]
        timing[scenario] = {n: {"measured_ms": m, "predicted_ms": cost.total(*sh)} for n, m, sh in zip(names, ms, shapes)}
        out[f"timing_{scenario}"] = {"batch_size": s.batch_size, "seq_len": s.seq_len, **timing[scenario]}
        save()

    if args.points_study:
        s = settings["single_stream"]
        out["points_study"] = points_study(teacher, kind, lat.LatencySettings(**{**s.__dict__, "min_time_s": 0.5}))
        save()

    # ---- report
    metric = r0["metric"]
    b1, b32 = timing["single_stream"], timing["offline"]
    bs = settings["offline"].batch_size
    print(f"\nONNX Runtime {costs['single_stream'].table['runtime']}, {costs['single_stream'].table['provider']}, "
          f"{args.threads} thread(s), seq {settings['single_stream'].seq_len}; batch 1 and batch {bs}\n")
    print(f"| variant | {metric} | MAC ratio | latency ratio (pred., b1) | b1 predicted / measured ms | b1 pred/meas "
          f"| b{bs} predicted / measured ms | b{bs} pred/meas | measured speedup b1 / b{bs} |")
    print("|---|---|---|---|---|---|---|---|---|")
    d1, d32 = b1["dense"]["measured_ms"], b32["dense"]["measured_ms"]
    for n in names:
        r = jobs[(n.split("-c")[0], float(n.split("-c")[1]))][1] if n != "dense" else None
        acc = r[f"eval/{metric}"] if r else r0[f"eval/{metric}_dense"]
        mac = r["prune/mac_ratio"] if r else 1.0
        ratio = b1[n]["predicted_ms"] / b1["dense"]["predicted_ms"]
        print(f"| {n} | {acc:.2f} | {mac:.3f} | {ratio:.3f} | {b1[n]['predicted_ms']:.2f} / {b1[n]['measured_ms']:.2f} "
              f"| {b1[n]['predicted_ms'] / b1[n]['measured_ms']:.3f} | {b32[n]['predicted_ms']:.1f} / "
              f"{b32[n]['measured_ms']:.1f} | {b32[n]['predicted_ms'] / b32[n]['measured_ms']:.3f} | "
              f"{d1 / b1[n]['measured_ms']:.2f}x / {d32 / b32[n]['measured_ms']:.2f}x |")
    print("\n| constraint | accuracy latency-searched − MAC-searched | measured latency latency-searched / MAC-searched "
          "b1 | b" + str(bs) + " |\n|---|---|---|---|")
    for c in args.constraints:
        rl, rm = jobs[("latency", c)][1], jobs[("mac", c)][1]
        print(f"| {c} | {rl[f'eval/{metric}'] - rm[f'eval/{metric}']:+.2f} | "
              f"{b1[f'latency-c{c}']['measured_ms'] / b1[f'mac-c{c}']['measured_ms']:.3f} | "
              f"{b32[f'latency-c{c}']['measured_ms'] / b32[f'mac-c{c}']['measured_ms']:.3f} |")
    lut = out["lut_single_stream"]
    print(f"\nLUT measuring time (batch 1): {lut['measure_s']:.1f} s; the later jobs' cost step: "
          + ", ".join(f"{t:.2f} s" for t in lut["job_lut_s"][1:]) + f" (cached {lut['cached']}); "
          f"Offline LUT: {out['lut_offline']['measure_s_table']:.1f} s, cache hit {out['lut_offline_cache_hit_s']:.2f} s")
    if "points_study" in out:
        print("\n| block / points | samples | max relative error on the left-out measured points |\n|---|---|---|")
        for k, v in out["points_study"]["errors"].items():
            print(f"| {k} | {v['samples']} | {100 * v['max_rel_error_left_out']:.1f} % |")
    save()
    return out


if __name__ == "__main__":
    main()
