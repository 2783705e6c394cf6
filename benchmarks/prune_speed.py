"""Pruning-speed benchmark (README): ``python -m benchmarks.prune_speed [--constraint 0.5] [overrides...]``.

In one process, on the embedded default (cached MiniLM teacher, Rotten Tomatoes):
  1. the pruning wall time (Fisher -> search -> rearrange -> tune -> saved), from prune(),
  2. the floor: one plain forward+backward pass (weight gradients) over the same calibration samples,
  3. PyTorch CPU latency of the dense vs the physically pruned model (batch 1 and batch 32, interleaved).
Reports ratios measured in the same run (machines are noisy); targets: pruning <= 2.5x the floor,
pruned model faster than dense.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from bertprune import results as R


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main(argv=None) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from bertprune.config import register
    from bertprune.jobs.prune import calibration_batches, prune
    from bertprune.models import load_model, model_inputs
    from bertprune.tasks.data import Task, load_task_data, make_collator, tokenize

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--constraint", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("overrides", nargs="*", help="prune config overrides, e.g. num_samples=1024")
    args = ap.parse_args(argv)
    register()
    from bertprune.resources import CONF_DIR
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("prune", [f"constraint={args.constraint}", "export=false", "logger=csv", *args.overrides])
    with open_dict(cfg):
        cfg.output_dir = tempfile.mkdtemp(prefix="bench_prune-")

    r = prune(cfg)
    task = Task.from_config(cfg.task)
    kind = task.task_kind
    metric = r["metric"]  # the task's primary metric: accuracy, f1, mcc (classification), mse, pearson (regression)
    teacher = load_model(r["teacher"], kind, task.num_labels, require_head=True)
    pruned = load_model(r["pruned_dir"], kind, task.num_labels, require_head=True)
    from bertprune.models import load_tokenizer

    tok = load_tokenizer(r["teacher"])
    data = tokenize(load_task_data(task), task, tok)
    collate = make_collator(tok)
    batches = calibration_batches(len(data["train"]), int(cfg.num_samples), int(r["batch_size"]), int(cfg.seed))
    calib = [collate([data["train"][j] for j in b]) for b in batches]

    # floor: one plain forward + backward (weight gradients) over the same calibration samples
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(True)
    t = time.perf_counter()
    for b in calib:
        loss = kind.loss(teacher(**model_inputs(teacher, b)), b)
        loss.backward()
        teacher.zero_grad(set_to_none=True)
    floor = time.perf_counter() - t

    # PyTorch CPU latency, dense vs pruned, interleaved
    val = data["validation"]
    one = collate([val[0]])
    many = collate([val[i] for i in range(32)])
    res = {}
    with torch.no_grad():
        for name, batch in (("batch1", one), ("batch32", many)):
            inputs = model_inputs(teacher, batch)
            dense_t, pruned_t = [], []
            for _ in range(args.repeats):
                dense_t.append(_time(lambda: teacher(**inputs), 1))
                pruned_t.append(_time(lambda: pruned(**inputs), 1))
            res[name] = (statistics.median(dense_t), statistics.median(pruned_t))

    out = {
        "constraint": args.constraint, "mac_ratio": r[R.MAC_RATIO], "prune_s": r[R.PRUNE_S],
        "fisher_s": r.get(R.time_key("fisher")), "tune_s": r.get(R.time_key("tune")), "floor_fwd_bwd_s": floor,
        "prune_over_floor": r[R.PRUNE_S] / floor,
        "latency_b1_dense_ms": 1e3 * res["batch1"][0], "latency_b1_pruned_ms": 1e3 * res["batch1"][1],
        "latency_b32_dense_ms": 1e3 * res["batch32"][0], "latency_b32_pruned_ms": 1e3 * res["batch32"][1],
        "metric": metric, f"{metric}_dense": r[R.eval_key(metric, 'dense')], f"{metric}_pruned": r[R.eval_key(metric)],
    }
    steps = ", ".join(f"{k} {r[R.time_key(k)]:.1f} s" for k in ("fisher", "search", "rearrange", "tune", "iterative")
                      if r.get(R.time_key(k)) is not None)
    out.update({f"{k}_s": r.get(R.time_key(k)) for k in ("iterative",)}, method=r[R.METHOD])
    print(f"""
| measure (same run) | value |
|---|---|
| constraint / achieved MAC ratio | {args.constraint:.2f} / {out['mac_ratio']:.3f} |
| {metric} dense -> pruned | {out[f'{metric}_dense']:.4g} -> {out[f'{metric}_pruned']:.4g} |
| pruning wall time (Fisher -> saved; method={r[R.METHOD]}) | {out['prune_s']:.1f} s ({steps}) |
| floor: plain fwd+bwd over the {cfg.num_samples} calibration samples | {floor:.1f} s |
| **pruning / floor** (target <= 2.5) | **{out['prune_over_floor']:.2f}x** |
| PyTorch CPU latency batch 1, dense / pruned | {out['latency_b1_dense_ms']:.2f} / {out['latency_b1_pruned_ms']:.2f} ms -> **{res['batch1'][0] / res['batch1'][1]:.2f}x** |
| PyTorch CPU latency batch 32, dense / pruned | {out['latency_b32_dense_ms']:.1f} / {out['latency_b32_pruned_ms']:.1f} ms -> **{res['batch32'][0] / res['batch32'][1]:.2f}x** |
""")
    return out


if __name__ == "__main__":
    main()
