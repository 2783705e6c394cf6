"""Accuracy-at-compression benchmark (README): ``python -m benchmarks.accuracy [--constraints ...] [overrides...]``.

In one process, on the embedded default (cached MiniLM teacher, Rotten Tomatoes) or on the task the overrides
name, with prune.py's calibration sample and options: for each constraint, the methods side by side
(``method=kwon``: search -> rearrange -> tune, the default; ``method=iterative``: one sub-layer at a time,
importance re-measured, output projections refitted; ``--methods`` adds e.g. ``kwon+projection``, the Kwon
pipeline with ``method.tuning=projection``), run one after the other at each constraint (interleaved):
  * validation metric after every stage, the final one, the MAC ratio, kept heads / neurons per layer;
  * parity of the physically pruned model with the masked one (max |Δ logits| on the first 256 dev examples);
  * the pruning time: the one Fisher pass (shared: every method reads the same per-batch gradients; methods
    that hold out calibration samples use the gradients of the others) + the method's own steps.
Prints one markdown table and writes ``--out`` (JSON). Times are of the same run, on the same machine; only
their ratios mean anything on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

METHODS = ("kwon", "iterative", "kwon+projection")  # kwon+projection: method=kwon method.tuning=projection


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from bertprune.resources import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("prune", overrides)


def main(argv=None) -> dict:
    import dataclasses


    from bertprune.config import register
    from bertprune.core.cost import MacCost
    from bertprune.core.fisher import collect_fisher
    from bertprune.core.masks import MaskHooks
    from bertprune.core.iterative import Iterative
    from bertprune.core.kwon import Kwon
    from bertprune.core.pipeline import prune_model, pruning_time
    from bertprune.jobs.prune import calibration_batches, check_prune_config, paper_batch_size, prune_method
    from bertprune.jobs.train import ensure_teacher
    from bertprune.mlperf.system import package_versions
    from bertprune.models import load_model, load_tokenizer
    from bertprune.tasks.data import Task, average_token_length, load_task_data, make_loader, tokenize
    from bertprune.evaluation import evaluate, predict_logits

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--constraints", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6])
    ap.add_argument("--methods", nargs="+", default=["kwon", "iterative"], choices=sorted(METHODS))
    ap.add_argument("--out", default="accuracy.json")
    ap.add_argument("overrides", nargs="*", help="prune config overrides, e.g. task=sst2 teacher=... num_samples=1024")
    args = ap.parse_args(argv)
    register()
    cfg = _compose(["logger=none", *args.overrides])
    for c in args.constraints:
        check_prune_config(_compose(["logger=none", *args.overrides, f"constraint={c}"]))
    task = Task.from_config(cfg.task)
    kind = task.task_kind
    if not kind.labelled_text:
        raise SystemExit(f"task={task.name} ({kind.name}): this benchmark evaluates text classification/regression "
                         "tasks; prune question answering with prune.py method=iterative")
    teacher_dir = cfg.teacher or str(ensure_teacher(cfg).folder)
    teacher = load_model(teacher_dir, kind, task.num_labels, require_head=True).eval()
    tok = load_tokenizer(teacher_dir)
    tokenized = tokenize(load_task_data(task), task, tok)
    S = average_token_length(tokenized["train"])
    val_loader = make_loader(tokenized["validation"], tok, int(cfg.eval_batch_size))
    parity_loader = make_loader(tokenized["validation"].select(range(min(256, len(tokenized["validation"])))), tok,
                                int(cfg.eval_batch_size))
    batch_size = int(cfg.batch_size) if cfg.batch_size is not None else paper_batch_size(kind, teacher.config)
    batches = calibration_batches(len(tokenized["train"]), int(cfg.num_samples), batch_size, int(cfg.seed))
    calib = [val_loader.collate_fn([tokenized["train"][j] for j in b]) for b in batches]
    metric = task.primary_metric
    cost = MacCost.for_model(teacher, S)
    out: dict = {"task": task.name, "teacher": teacher_dir, "num_samples": int(cfg.num_samples), "metric": metric,
                 "versions": package_versions(), "rows": []}

    def save() -> None:
        Path(args.out).write_text(json.dumps(out, indent=1, default=str))

    dense = evaluate(teacher, val_loader, kind, "cpu", progress=True, desc="eval dense")[metric]
    out["dense"] = dense
    t = time.perf_counter()
    g = collect_fisher(teacher, calib, kind, "cpu", progress=True)
    fisher_s = time.perf_counter() - t
    fisher = {"head_importance": g.head_importance, "neuron_importance": g.neuron_importance,
              "head_grads": g.head_grads, "neuron_grads": g.neuron_grads}
    out["fisher_s"] = fisher_s
    print(f"dense {metric} {dense:.2f}; Fisher of {len(calib)} batches in {fisher_s:.1f} s", flush=True)
    base = prune_method(cfg)  # the composed method keeps its overrides (method.*); the other one its defaults
    kwon = base if isinstance(base, Kwon) else Kwon()
    methods = {"kwon": kwon, "iterative": base if isinstance(base, Iterative) else Iterative(),
               "kwon+projection": dataclasses.replace(kwon, tuning="projection")}

    def masked_eval(model, h, n, stage):
        with MaskHooks(model, h, n):
            return evaluate(model, val_loader, kind, "cpu", progress=True, desc=f"eval {stage}")[metric]

    for c in args.constraints:
        for name in args.methods:
            r = prune_model(teacher, calib, kind, cost, c, methods[name], fisher=fisher, evaluate=masked_eval)
            with MaskHooks(r.masked_model, r.head_mask, r.neuron_mask):
                masked, _ = predict_logits(r.masked_model, parity_loader, "cpu", progress=False)
            pruned, _ = predict_logits(r.model, parity_loader, "cpu", progress=False)
            steps_s = pruning_time(r.timings)  # the method's steps and the physical pruning (Fisher given: shared)
            row = {"method": name, "constraint": c, "mac_ratio": r.mac_ratio, "stages": r.stage_metrics,
                   "final": list(r.stage_metrics.values())[-1], "heads_per_layer": r.heads_per_layer,
                   "ffn_per_layer": r.ffn_per_layer, "kept_heads": sum(r.heads_per_layer),
                   "kept_neurons": sum(r.ffn_per_layer), "parity": float((pruned - masked).abs().max()),
                   "method_s": steps_s, "prune_s": fisher_s + steps_s, "timings": r.timings,
                   "rollbacks": ([{"layer": e["layer"], "part": e["part"]} for e in r.reconstruction_report.rollbacks]
                                 if r.reconstruction_report is not None else [])}
            out["rows"].append(row)
            save()
            print(f"{name} c{c}: {metric} {row['final']:.2f} (stages {', '.join(f'{k} {v:.2f}' for k, v in r.stage_metrics.items())}), "
                  f"MAC ratio {r.mac_ratio:.4f}, heads {row['kept_heads']}, neurons {row['kept_neurons']}, "
                  f"pruning {row['prune_s']:.1f} s", flush=True)
            del r
    print(table(out))
    return out


def table(out: dict) -> str:
    """The markdown table of a run: one row per (constraint, method), with the pruning time relative to kwon's."""
    kwon = {r["constraint"]: r["prune_s"] for r in out["rows"] if r["method"] == "kwon"}
    lines = [f"dense {out['metric']}: {out['dense']:.2f} ({out['task']}, {out['num_samples']} calibration samples)", "",
             "| C | method | MAC ratio | stages | final | heads | neurons | heads per layer | FFN per layer | pruning s | × kwon |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        stages = " / ".join(f"{v:.2f}" for v in r["stages"].values())
        rel = f"{r['prune_s'] / kwon[r['constraint']]:.2f}" if r["constraint"] in kwon else "–"
        lines.append(f"| {r['constraint']} | {r['method']} | {r['mac_ratio']:.4f} | {stages} | **{r['final']:.2f}** | "
                     f"{r['kept_heads']} | {r['kept_neurons']} | {r['heads_per_layer']} | {r['ffn_per_layer']} | "
                     f"{r['prune_s']:.1f} | {rel} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
