"""Latency-search benchmark (README): ``python -m benchmarks.latency_search [--threads 1] [overrides...]``.

In one process, on the embedded default (cached MiniLM teacher, Rotten Tomatoes, ONNX Runtime CPU), with
the pipeline of prune.py (``bertprune.core.pipeline.prune_model``: search, rearrangement, tuning,
physical pruning; the job's calibration batches and options):
  1. the latency tables of ``cost=latency`` for SingleStream (batch 1) and Offline (conf/scenario/
     offline.yaml's batch), seq = task.max_length: measured (or read from the cache), then read again
     from the cache (measuring time vs cache hit);
  2. at each constraint, the latency-searched (SingleStream table) and the MAC-searched model, their
     validation accuracy, and their ONNX export (the served file);
  3. every exported model and the dense one timed interleaved (round-robin, medians) at batch 1 and at
     the Offline batch (the speedups), and each one again as prune.py measures it (``time_served``: its
     session and the dense one's, the table's settings), next to the latency each table predicts for it;
  4. (``--points-study``) how many sample points the fit needs: blocks timed at every head count and
     every 128th FFN width, and fits from subsets of them checked on the points they left out.
Fisher is computed once (it is the same for every variant: same teacher, same calibration batches), or
read with ``--fisher <fisher.safetensors of a prune.py run>``. Prints markdown tables and writes ``--out``
(JSON). The machine may be shared: only ratios measured in the same run, interleaved, mean anything.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bertprune import results as R


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from bertprune.resources import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("prune", overrides)


def points_study(model, kind, s, ffn_points: int = 13) -> dict:
    """Max relative error of fits from fewer samples on the measured points they leave out."""
    from bertprune.core.cost import PiecewiseLinear
    from bertprune.models.adapters import adapter_for
    from bertprune.onnx import latency as lat
    from bertprune.onnx.runtime import quiet

    L, H, F = adapter_for(model).dense_shape(model.config)
    full = {"mha": list(range(H + 1)), "ffn": lat.sample_counts(F, ffn_points)}
    from tqdm.auto import tqdm

    runners, index = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for block, counts in full.items():
            for c in tqdm(counts, desc=f"points study: {block} samples"):
                with quiet():
                    m = lat._shrunk(model, L, [c] * L, [0] * L) if block == "mha" else lat._shrunk(model, L, [0] * L, [c] * L)
                    runners.append(lat.Runner(m, kind, s, Path(tmp)))
                index.append((block, c))
        ms = lat.time_interleaved(runners, s, progress=True, desc="points study")
    measured = {b: {c: t for (bb, c), t in zip(index, ms) if bb == b} for b in full}
    out = {"measured": {b: [[c, t] for c, t in v.items()] for b, v in measured.items()}, "errors": {}}
    subsets = {"mha": [2, 3, 4, 6], "ffn": [3, 5, 7]}
    for block, pts in subsets.items():
        for p in pts:
            counts = [c for c in lat.sample_counts(H if block == "mha" else F, p) if c in measured[block]]
            fit = PiecewiseLinear.fit(counts, [measured[block][c] for c in counts])
            left = [c for c in measured[block] if c not in counts]
            err = max(abs(fit(c) - measured[block][c]) / measured[block][c] for c in left) if left else 0.0
            out["errors"][f"{block}/{p}"] = {"samples": len(counts), "max_rel_error_left_out": err}
    return out


def _points_only(args, out: dict, save) -> dict:
    from bertprune.jobs.train import ensure_teacher
    from bertprune.models import load_model
    from bertprune.onnx import latency as lat
    from bertprune.tasks.data import Task

    cfg = _compose(["logger=none", *args.overrides])
    task = Task.from_config(cfg.task)
    teacher = load_model(str(ensure_teacher(cfg).folder), task.task_kind, task.num_labels, require_head=True).eval()
    s = lat.settings_for(task, None, "single_stream", None, args.threads, "onnxruntime", "cpu", 9)
    out["points_study"] = points_study(teacher, task.task_kind, lat.LatencySettings(**{**s.__dict__, "min_time_s": 0.5}))
    save()
    _print_points(out)
    return out


def _print_points(out: dict) -> None:
    print("\n| block / points | samples | max relative error on the left-out measured points |\n|---|---|---|")
    for k, v in out["points_study"]["errors"].items():
        print(f"| {k} | {v['samples']} | {100 * v['max_rel_error_left_out']:.1f} % |")


def main(argv=None) -> dict:

    from bertprune.config import register
    from bertprune.core.cost import LatencyCost, MacCost
    from bertprune.core.fisher import collect_fisher
    from bertprune.core.pipeline import prune_model
    from bertprune.jobs.prune import calibration_batches, paper_batch_size, prune_method
    from bertprune.jobs.train import ensure_teacher
    from bertprune.models import load_model, load_tokenizer
    from bertprune.onnx import latency as lat
    from bertprune.onnx.export import export_onnx
    from bertprune.onnx.runtime import quiet
    from bertprune.tasks.data import Task, average_token_length, load_task_data, make_loader, tokenize
    from bertprune.evaluation import evaluate
    from tqdm.auto import tqdm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--constraints", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads of the tables and of every timing (the benchmark's thread count)")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds of the final timing")
    ap.add_argument("--min-time", type=float, default=1.5, help="seconds of final timing per model and batch")
    ap.add_argument("--fisher", default=None, help="fisher.safetensors of a prune.py run on the same default")
    ap.add_argument("--points-study", action="store_true")
    ap.add_argument("--no-jobs", action="store_true", help="only the points study (needs --points-study)")
    ap.add_argument("--out", default="latency_search.json")
    ap.add_argument("overrides", nargs="*", help="prune config overrides, e.g. num_samples=1024")
    args = ap.parse_args(argv)
    register()
    root = Path(tempfile.mkdtemp(prefix="bench_latency-"))
    out: dict = {"threads": args.threads, "variants": {}}

    def save() -> None:
        Path(args.out).write_text(json.dumps(out, indent=1, default=str))

    if args.no_jobs:
        return _points_only(args, out, save)
    cfg0 = _compose(["logger=none", *args.overrides])
    task = Task.from_config(cfg0.task)
    kind = task.task_kind
    teacher_dir = str(ensure_teacher(cfg0).folder)
    teacher = load_model(teacher_dir, kind, task.num_labels, require_head=True).eval()
    tok = load_tokenizer(teacher_dir)
    tokenized = tokenize(load_task_data(task), task, tok)
    S = average_token_length(tokenized["train"])
    val_loader = make_loader(tokenized["validation"], tok, int(cfg0.eval_batch_size))
    batch_size = int(cfg0.batch_size) if cfg0.batch_size is not None else paper_batch_size(kind, teacher.config)
    batches = calibration_batches(len(tokenized["train"]), int(cfg0.num_samples), batch_size, int(cfg0.seed))
    calib = [val_loader.collate_fn([tokenized["train"][j] for j in b]) for b in batches]
    metric = task.primary_metric

    # ---- 1. the two tables: measured (or cached), then read again from the cache
    device = str(cfg0.hardware.runtime_device)
    costs, settings = {}, {}
    for scenario in ("single_stream", "offline"):
        t = time.perf_counter()
        cost = lat.latency_cost(teacher, seq_len=S, task=task, scenario=scenario, threads=args.threads, device=device)
        first = time.perf_counter() - t
        t = time.perf_counter()
        lat.latency_cost(teacher, seq_len=S, task=task, scenario=scenario, threads=args.threads, device=device)
        costs[scenario] = cost
        settings[scenario] = lat.settings_for(task, None, scenario, None, args.threads, "onnxruntime", device, 9)
        out[f"lut_{scenario}"] = {"measure_s": cost.table["measure_s"], "first_call_s": first, "cached_first": cost.table["cached"],
                                  "cache_hit_s": time.perf_counter() - t, "scale": cost.table["scale"],
                                  "dense_ms": cost.table["dense_ms"], "skeleton_ms": cost.table["skeleton_ms"],
                                  "batch_size": settings[scenario].batch_size, "seq_len": settings[scenario].seq_len}
        save()

    # ---- 2. latency- and MAC-searched variants at each constraint
    if args.fisher:
        from bertprune.lightning.fisher import load_fisher

        fisher = load_fisher(args.fisher)
    else:
        g = collect_fisher(teacher, calib, kind, "cpu", progress=True)
        fisher = {"head_importance": g.head_importance, "neuron_importance": g.neuron_importance,
                  "head_grads": g.head_grads, "neuron_grads": g.neuron_grads}
    options = prune_method(cfg0)
    # the teacher's validation metric as its fine-tuning measured it (the same split; saves a pass)
    dense_acc = json.loads((Path(teacher_dir) / "metrics.json").read_text())[R.eval_key(metric)]
    out["dense"] = {metric: dense_acc}
    jobs = {}
    mac_cost = MacCost.for_model(teacher, S)
    for c in args.constraints:
        for name, cost in (("latency", costs["single_stream"]), ("mac", mac_cost)):
            r = prune_model(teacher, calib, kind, cost, c, options, fisher=fisher)
            acc = evaluate(r.model, val_loader, kind, "cpu", progress=True, desc=f"eval {name}-c{c}")[metric]
            onnx = root / f"{name}-c{c}.onnx"
            with quiet():
                export_onnx(r.model, onnx, kind, None)
            jobs[(name, c)] = {"pruned_onnx": str(onnx), R.HEADS_PER_LAYER: r.heads_per_layer,
                               R.FFN_PER_LAYER: r.ffn_per_layer, R.MAC_RATIO: r.mac_ratio,
                               R.KEPT_HEADS: sum(r.heads_per_layer), R.KEPT_NEURONS: sum(r.ffn_per_layer),
                               R.eval_key(metric): acc, R.LATENCY_RATIO: r.cost_ratio}
            out["variants"][f"{name}-c{c}"] = jobs[(name, c)]
            print(f"{name} c{c}: {metric} {acc:.2f}, MAC ratio {r.mac_ratio:.3f}, heads {sum(r.heads_per_layer)}, "
                  f"neurons {sum(r.ffn_per_layer)}", flush=True)
            save()
            del r
    r0 = {R.eval_key(metric, "dense"): dense_acc}

    # ---- 3. every exported model + the dense one, interleaved, at both batch sizes
    dense_onnx = root / "dense.onnx"
    with quiet():
        export_onnx(teacher, dense_onnx, kind, None)
    names = ["dense"] + [f"{cost}-c{c}" for (cost, c) in jobs]
    paths = [dense_onnx] + [Path(r["pruned_onnx"]) for r in jobs.values()]
    shapes = [([teacher.config.num_attention_heads] * teacher.config.num_hidden_layers,
               [teacher.config.intermediate_size] * teacher.config.num_hidden_layers)]
    shapes += [(r[R.HEADS_PER_LAYER], r[R.FFN_PER_LAYER]) for r in jobs.values()]
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
    # ---- 3b. each exported model as prune.py measures it (results.json's latency/measured_ms): its session and the
    # dense one's, the table's own settings; the predictions are checked against these
    for scenario, s in settings.items():
        for n, p in tqdm(list(zip(names, paths)), desc=f"as served b{s.batch_size}"):
            served = lat.time_served(p, kind, s, dense=dense_onnx)
            timing[scenario][n].update(served_ms=served["ms"], served_dense_ms=served["dense_ms"])
        out[f"timing_{scenario}"].update(timing[scenario])
        save()

    if args.points_study:
        s = settings["single_stream"]
        out["points_study"] = points_study(teacher, kind, lat.LatencySettings(**{**s.__dict__, "min_time_s": 0.5}))
        save()

    # ---- report
    b1, b32 = timing["single_stream"], timing["offline"]
    bs = settings["offline"].batch_size
    print(f"\nONNX Runtime {costs['single_stream'].table['runtime']}, {costs['single_stream'].table['provider']}, "
          f"{args.threads} thread(s), seq {settings['single_stream'].seq_len}; batch 1 and batch {bs}\n")
    print(f"| variant | {metric} | MAC ratio | latency ratio (pred., b1) | b1 predicted / measured ms | b1 pred/meas "
          f"| b{bs} predicted / measured ms | b{bs} pred/meas | measured speedup b1 / b{bs} | pred/meas, one pass "
          f"b1 / b{bs} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    d1, d32 = b1["dense"]["measured_ms"], b32["dense"]["measured_ms"]
    for n in names:
        r = jobs[(n.split("-c")[0], float(n.split("-c")[1]))] if n != "dense" else None
        acc = r[R.eval_key(metric)] if r else r0[R.eval_key(metric, "dense")]
        mac = r[R.MAC_RATIO] if r else 1.0
        ratio = b1[n]["predicted_ms"] / b1["dense"]["predicted_ms"]
        print(f"| {n} | {acc:.2f} | {mac:.3f} | {ratio:.3f} | {b1[n]['predicted_ms']:.2f} / {b1[n]['served_ms']:.2f} "
              f"| {b1[n]['predicted_ms'] / b1[n]['served_ms']:.3f} | {b32[n]['predicted_ms']:.1f} / "
              f"{b32[n]['served_ms']:.1f} | {b32[n]['predicted_ms'] / b32[n]['served_ms']:.3f} | "
              f"{d1 / b1[n]['measured_ms']:.2f}x / {d32 / b32[n]['measured_ms']:.2f}x | "
              f"{b1[n]['predicted_ms'] / b1[n]['measured_ms']:.3f} / {b32[n]['predicted_ms'] / b32[n]['measured_ms']:.3f} |")
    # prune.py's latency/predicted_rescaled_ms: the predicted ratio x the dense model timed beside the served one
    print(f"\nPredicted latency rescaled by the dense model timed beside each served model (results.json's "
          f"latency/predicted_rescaled_ms), over the measured one; and that dense model over the table's dense time "
          f"(the machine's drift since the table):\n\n| variant | b1 rescaled pred/meas | b{bs} rescaled pred/meas | "
          f"b1 dense now / table | b{bs} dense now / table |\n|---|---|---|---|---|")
    for n in names:
        now = [lat.rescaled_to_now(t[n]["predicted_ms"], t["dense"]["predicted_ms"], t[n]["served_dense_ms"])
               for t in (b1, b32)]
        cells = [f"{rescaled / t[n]['served_ms']:.3f}" for (_, rescaled), t in zip(now, (b1, b32))]
        cells += [f"{drift:.3f}" for drift, _ in now]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("\n| constraint | accuracy latency-searched − MAC-searched | measured latency latency-searched / MAC-searched "
          "b1 | b" + str(bs) + " |\n|---|---|---|---|")
    for c in args.constraints:
        rl, rm = jobs[("latency", c)], jobs[("mac", c)]
        print(f"| {c} | {rl[R.eval_key(metric)] - rm[R.eval_key(metric)]:+.2f} | "
              f"{b1[f'latency-c{c}']['measured_ms'] / b1[f'mac-c{c}']['measured_ms']:.3f} | "
              f"{b32[f'latency-c{c}']['measured_ms'] / b32[f'mac-c{c}']['measured_ms']:.3f} |")
    for sc in ("single_stream", "offline"):
        lut = out[f"lut_{sc}"]
        print(f"\nLUT {sc} (batch {lut['batch_size']}): measured in {lut['measure_s']:.1f} s"
              f"{' (an earlier run)' if lut['cached_first'] else ''}; read from the cache in {lut['cache_hit_s']:.3f} s; "
              f"scale {lut['scale']:.3f}")
    if "points_study" in out:
        _print_points(out)
    save()
    return out


if __name__ == "__main__":
    main()
