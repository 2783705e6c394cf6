"""One-shot unstructured pruning benchmark (README): ``python -m benchmarks.obs_oneshot [options] [overrides...]``.

On the embedded default (the cached MiniLM teacher, loaded as prune.py does; Rotten Tomatoes), in one run:
  1. one-shot global sparsity 50 / 70 / 80 % of the encoder's linear weights: global magnitude, diagonal
     Fisher (B = 1), OBS with B = --block-size at 1 Fisher estimate and at --recomputations estimates;
  2. accuracy at the highest sparsity vs the number of recomputations (--recomputation-sweep, default 1, 4, 16);
  (optional, --damp-sweep) B = 1 against OBS with 1 estimate at other damps, from the same first estimate;
  3. the compound chain as one prune.py job: structured 0.5 -> OBS 50 % -> INT8 (each step's accuracy,
     size and ONNX Runtime speed, measured round-robin against the dense export).

Every run starts from the same teacher and the same gradients (per-sample, --num-grads of them from the
job's seeded calibration sample); the first Fisher estimate is computed once on the dense weights and
shared (B = 1 takes its diagonal: the same gradients, block size 1). Accuracies are on the first
--eval-samples validation examples (all with 0). Writes ``<out>/obs_benchmark.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
from pathlib import Path

import torch

from bertprune import results as R

log = logging.getLogger("benchmarks.obs_oneshot")


def main(argv=None) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict
    from tqdm.auto import tqdm

    from bertprune.config import register
    from bertprune.mlperf.system import package_versions
    from bertprune.core.obs import GradientAccumulator, OBSOptions, prunable_linears, prune_unstructured
    from bertprune.io import atomic_write_json, atomic_write_text
    from bertprune.jobs.prune import gradient_batches
    from bertprune.jobs.train import ensure_teacher
    from bertprune.models import load_model, load_tokenizer
    from bertprune.resources import CONF_DIR
    from bertprune.tasks.data import Task, load_task_data, make_loader, tokenize
    from bertprune.evaluation import predict_logits
    from bertprune.tasks.kinds import score as score_kind

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsities", default="0.5,0.7,0.8")
    ap.add_argument("--num-grads", type=int, default=256, help="m: per-sample gradients per Fisher estimate")
    ap.add_argument("--block-size", type=int, default=16, help="B of OBS (>= 16)")
    ap.add_argument("--damp", type=float, default=1e-7)
    ap.add_argument("--recomputations", type=int, default=16, help="Fisher estimates of the OBS rows of table 1")
    ap.add_argument("--recomputation-sweep", default="1,4,16", help="estimates compared at the highest sparsity")
    ap.add_argument("--recomputed-at", default=None,
                    help="sparsities of table 1's recomputation row (default: every one of --sparsities; each costs "
                         "--recomputations - 1 gradient passes)")
    ap.add_argument("--damp-sweep", default="",
                    help="extra damps (comma-separated) compared at --damp-sweep-at: B = 1 against OBS with 1 estimate, "
                         "both from the shared first estimate (no more gradient passes; 2 evaluations per damp)")
    ap.add_argument("--damp-sweep-at", default=None, help="sparsities of the damp sweep (default: the lowest)")
    ap.add_argument("--eval-samples", type=int, default=0, help="validation examples evaluated (0 = all)")
    ap.add_argument("--compound-sparsity", type=float, default=0.5)
    ap.add_argument("--compound-constraint", type=float, default=0.5)
    ap.add_argument("--compound-recomputations", type=int, default=2)
    ap.add_argument("--no-compound", action="store_true", help="skip the compound chain")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a new temp folder)")
    ap.add_argument("overrides", nargs="*", help="prune config overrides for the teacher/task, e.g. task=sst2")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    sweep = [int(k) for k in args.recomputation_sweep.split(",")]
    recomputed_at = [float(s) for s in args.recomputed_at.split(",")] if args.recomputed_at else sparsities
    try:  # bad values stop here, before minutes of gradients
        damps = [float(d) for d in args.damp_sweep.split(",") if d.strip()]
        damp_at = [float(s) for s in args.damp_sweep_at.split(",")] if args.damp_sweep_at else [min(sparsities)]
    except ValueError as e:
        ap.error(f"--damp-sweep / --damp-sweep-at take comma-separated numbers, e.g. --damp-sweep 1e-5,1e-6 ({e})")
    if any(not d > 0 for d in damps):
        ap.error(f"--damp-sweep {args.damp_sweep}: every damp must be > 0, e.g. --damp-sweep 1e-4,1e-5,1e-6,1e-8")
    if any(not 0 < s < 1 for s in damp_at):
        ap.error(f"--damp-sweep-at {args.damp_sweep_at}: sparsities must be in (0, 1), e.g. --damp-sweep-at 0.5")
    out = args.out or Path(tempfile.mkdtemp(prefix="obs_benchmark-"))
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("prune", ["logger=none", *args.overrides])
    with open_dict(cfg):
        cfg.output_dir = str(out / "compound")
    task = Task.from_config(cfg.task)
    kind = task.task_kind
    teacher = cfg.teacher or str(ensure_teacher(cfg).folder)  # as prune.py: the cached fine-tuned teacher
    tokenizer = load_tokenizer(teacher)
    data = tokenize(load_task_data(task), task, tokenizer)
    val = data["validation"]
    if args.eval_samples:
        val = val.select(range(min(args.eval_samples, len(val))))
    val_loader = make_loader(val, tokenizer, int(cfg.eval_batch_size))
    collate = val_loader.collate_fn
    train_rows = data["train"]
    metric = task.primary_metric
    dense = load_model(teacher, kind, task.num_labels, require_head=True).eval()
    for p in dense.parameters():
        p.requires_grad_(False)

    classification = kind.name == "classification"
    predictions: dict[str, torch.Tensor] = {}  # per-example correctness (classification), for paired comparisons

    def score(m, desc) -> dict:
        """The task metric; for classification also the validation loss (the cross-entropy whose curvature
        the Fisher approximates), the agreement with the dense model's predictions, and each example's
        correctness (kept in memory for the paired comparison)."""
        logits, labels = predict_logits(m, val_loader, "cpu", desc=desc)
        out = {metric: score_kind(kind, logits, labels)[metric]}
        if classification:
            pred = logits.argmax(-1)
            out["val_loss"] = torch.nn.functional.cross_entropy(logits, labels).item()
            if "dense_pred" in predictions:
                out["agree_dense"] = 100.0 * (pred == predictions["dense_pred"]).float().mean().item()
            else:
                predictions["dense_pred"] = pred
            predictions[desc] = pred == labels
        return out

    grad_batches = gradient_batches(len(train_rows), args.num_grads, 1, int(cfg.seed))

    def collect(model, masks, B):
        linears = [m for _, m in prunable_linears(model)]
        acc = GradientAccumulator(model, kind, linears, masks, B, len(grad_batches))
        for i, b in enumerate(tqdm(grad_batches, desc=f"gradients B={B}", leave=False)):
            acc.add_batch(collate([train_rows[j] for j in b]), i)
        acc.flush()
        return acc.blocks, len(grad_batches)

    B = args.block_size
    t = time.perf_counter()
    dense_mask = [torch.ones_like(m.weight, dtype=torch.bool) for _, m in prunable_linears(dense)]
    dense_sums, m = collect(dense, dense_mask, B)
    grad_s = time.perf_counter() - t
    numels = [l.weight.numel() for _, l in prunable_linears(dense)]
    # B = 1 from the same gradients: the diagonals of the B-blocks, in weight order, as [n, 1, 1]
    diag_sums = [s.diagonal(dim1=1, dim2=2).reshape(-1)[:n].view(-1, 1, 1).clone() for s, n in zip(dense_sums, numels)]
    log.info("dense Fisher blocks: %d gradients in %.1f s", m, grad_s)
    dense_scores = score(dense, "dense")
    dense_score = dense_scores[metric]
    rows: list[dict] = []
    calls = {"estimates": 1}

    def run(name, method, sparsity, block=B, k=1, damp=args.damp):
        model = copy.deepcopy(dense)
        first = {"done": False}

        def gradients(masks):
            if not first["done"]:  # the first estimate is at the dense weights: shared by every run
                first["done"] = True
                return (dense_sums if block == B else diag_sums), m
            calls["estimates"] += 1
            return collect(model, masks, block)

        t = time.perf_counter()
        report = prune_unstructured(model, OBSOptions(sparsity=sparsity, method=method, fisher_block_size=block,
                                                      damp=damp, num_recomputations=k),
                                    gradients if method == "obs" else None)
        secs = time.perf_counter() - t
        row = {"method": name, "sparsity": sparsity, "achieved": report.sparsity, "fisher_block_size": block,
               "damp": damp, "recomputations": k if method == "obs" else 0, **score(model, f"{name}@{sparsity}"),
               "prune_s": round(secs, 1)}
        log.info("%s", row)
        rows.append(row)
        return row

    for s in sparsities:
        run("magnitude", "magnitude", s)
        run("diagonal Fisher (B=1)", "obs", s, block=1)
        run(f"OBS B={B}, 1 estimate", "obs", s)
        if s in recomputed_at and args.recomputations > 1:
            run(f"OBS B={B}, {args.recomputations} recomputations", "obs", s, k=args.recomputations)
    top = max(sparsities)
    for k in sweep:
        if k not in (1, args.recomputations):
            run(f"OBS B={B}, {k} recomputations", "obs", top, k=k)

    for s in damp_at:
        for d in sorted({args.damp, *damps}, reverse=True) if damps else ():
            if d != args.damp or s not in sparsities:  # the main damp's rows exist at --sparsities already
                run(f"diagonal Fisher (B=1), damp {d:g}", "obs", s, block=1, damp=d)
                run(f"OBS B={B}, 1 estimate, damp {d:g}", "obs", s, damp=d)
    paired = paired_comparisons(rows, predictions, B, args.recomputations) if classification else []
    compound = None
    if not args.no_compound:
        compound = run_compound(cfg, args, out)

    settings = {"num_grads": m, "grad_batch_size": 1, "fisher_block_size": B, "damp": args.damp,
                "eval_samples": len(val), "seed": int(cfg.seed), "teacher": teacher,
                "gradient_s_per_estimate": round(grad_s, 1), "estimates": calls["estimates"],
                "total_s": round(time.perf_counter() - t_start, 1), "versions": package_versions()}
    if damps:
        settings["damp_sweep"] = damp_sweep(rows, predictions, B, metric, sorted({args.damp, *damps}, reverse=True),
                                            damp_at, classification)
    md = format_markdown(rows, compound, dense_scores, metric, sparsities, sweep, settings, paired)
    atomic_write_text(out / "obs_benchmark.md", md)
    atomic_write_json(out / "obs_benchmark.json", {"rows": rows, "compound": compound, "dense": dense_scores,
                                                   "paired": paired, "settings": settings})
    print(md)
    print(f"written to {out}/obs_benchmark.md")
    return {"rows": rows, "compound": compound, "dense": dense_scores, "paired": paired, "settings": settings}


def damp_sweep(rows, predictions, B, metric, damps, sparsities, classification) -> list[dict]:
    """Per sparsity and damp: B = 1 and OBS (1 estimate) from the same first estimate, their metric and loss,
    and (classification) the paired wins / losses of OBS with McNemar's p."""
    out = []
    for s in sparsities:
        for d in damps:
            b1 = next((r for r in rows if r["sparsity"] == s and r["damp"] == d and r["fisher_block_size"] == 1), None)
            ob = next((r for r in rows if r["sparsity"] == s and r["damp"] == d and r["fisher_block_size"] == B
                       and r["recomputations"] == 1), None)
            if b1 is None or ob is None:
                continue
            c = {"sparsity": s, "damp": d, "b1": b1[metric], "obs": ob[metric],
                 "b1_loss": b1.get("val_loss"), "obs_loss": ob.get("val_loss")}
            if classification:
                a, b = predictions[f"{ob['method']}@{s}"], predictions[f"{b1['method']}@{s}"]
                c["wins"], c["losses"] = int((a & ~b).sum()), int((~a & b).sum())
                c["p"] = mcnemar_p(c["wins"], c["losses"])
            out.append(c)
    return out


def mcnemar_p(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value: under "equally good", the examples only one of two models gets
    right fall to either side with probability 1/2 (a binomial test on the discordant pairs)."""
    from math import comb

    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired_comparisons(rows, predictions, B, recomputations) -> list[dict]:
    """At each sparsity, OBS with recomputations (else 1 estimate) against B = 1 and magnitude, example by
    example: wins = examples OBS gets right and the other wrong, losses the reverse, and McNemar's p."""
    out = []
    for s in dict.fromkeys(r["sparsity"] for r in rows):
        at = {r[R.METHOD]: f"{r[R.METHOD]}@{s}" for r in rows if r["sparsity"] == s}
        obs = next((at[n] for n in (f"OBS B={B}, {recomputations} recomputations", f"OBS B={B}, 1 estimate")
                    if n in at), None)
        for other in ("diagonal Fisher (B=1)", "magnitude"):
            if obs is None or other not in at:
                continue
            a, b = predictions[obs], predictions[at[other]]
            wins, losses = int((a & ~b).sum()), int((~a & b).sum())
            out.append({"sparsity": s, "obs": obs.split("@")[0], "other": other, "wins": wins, "losses": losses,
                        "p": mcnemar_p(wins, losses)})
    return out


def run_compound(cfg, args, out: Path) -> dict:
    """structured ``--compound-constraint`` -> OBS ``--compound-sparsity`` -> INT8 as one prune.py job, then
    the ONNX Runtime speed of its exports against the dense teacher's (round-robin, ``benchmarks.export_speed``)."""
    from omegaconf import open_dict

    from benchmarks.export_speed import benchmark
    from bertprune.jobs.prune import prune

    with open_dict(cfg):
        cfg.constraint = args.compound_constraint
        cfg.export, cfg.quantize = True, "int8"
        cfg.unstructured.method = "obs"
        cfg.unstructured.sparsity = args.compound_sparsity
        cfg.unstructured.num_grads = args.num_grads
        cfg.unstructured.fisher_block_size = args.block_size
        cfg.unstructured.damp = args.damp
        cfg.unstructured.num_recomputations = args.compound_recomputations
    r = prune(cfg)
    speed = benchmark(out, iters=5, latency_samples=16, throughput_batches=2, write=False)
    return {"results": r, "speed": speed}


def _method_table(rows, sparsities, cell) -> list[str]:
    """Markdown lines: one row per method, one column per sparsity, ``cell(row)`` in each (– where not run)."""
    lines = ["| method | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |", "|---|" + "---|" * len(sparsities)]
    for name in dict.fromkeys(r[R.METHOD] for r in rows if r["sparsity"] in sparsities):
        found = [next((r for r in rows if r[R.METHOD] == name and r["sparsity"] == s), None) for s in sparsities]
        lines.append(f"| {name} | " + " | ".join(cell(r) if r else "–" for r in found) + " |")
    return lines


def format_markdown(rows, compound, dense_scores, metric, sparsities, sweep, settings, paired=()) -> str:
    B = settings["fisher_block_size"]
    rows = [r for r in rows if r.get("damp", settings["damp"]) == settings["damp"]]  # the damp sweep has its own table
    dense_score = dense_scores[metric]
    lines = [f"One-shot unstructured pruning of the encoder's linear weights ({metric} on {settings['eval_samples']} "
             f"validation examples; dense {dense_score:.2f}). m = {settings['num_grads']} per-sample gradients per "
             f"Fisher estimate, damp {settings['damp']:g}, cubic schedule; no fine-tuning.", "",
             *_method_table(rows, sparsities, lambda r: f"{r[metric]:.2f}")]
    if "val_loss" in dense_scores:
        lines += ["", f"Validation loss (cross-entropy; dense {dense_scores['val_loss']:.4f}) / agreement with the dense "
                      "model's predictions (%):", "",
                  *_method_table(rows, sparsities, lambda r: f"{r['val_loss']:.4f} / {r['agree_dense']:.1f}")]
    if paired:
        lines += ["", "Paired, example by example (wins = examples OBS gets right and the other method wrong; losses "
                      "the reverse; p = exact two-sided McNemar test):", "",
                  "| sparsity | OBS row | vs | wins | losses | p |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['sparsity']:.0%} | {c['obs']} | {c['other']} | {c['wins']} | {c['losses']} | {c['p']:.3g} |"
                  for c in paired]
    top = max(sparsities)
    lines += ["", f"Accuracy at {top:.0%} vs Fisher-inverse recomputations (B = {B}):", "",
              "| recomputations | " + " | ".join(str(k) for k in sweep) + " |", "|---|" + "---|" * len(sweep)]
    cells = []
    for k in sweep:
        r = next((r for r in rows if r["sparsity"] == top and r["recomputations"] == k and r["fisher_block_size"] == B),
                 None)
        cells.append(f"{r[metric]:.2f}" if r else "–")
    lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    if settings.get("damp_sweep"):
        lines += ["", f"Damp sweep: B = 1 against OBS B = {B} with 1 estimate, both from the same first estimate "
                      f"({metric} / validation loss; wins / losses of OBS, McNemar's p):", "",
                  "| sparsity | damp | B = 1 | OBS | OBS − B = 1 | wins / losses, p |", "|---|---|---|---|---|---|"]
        for c in settings["damp_sweep"]:
            loss = (lambda v: f" / {v:.4f}" if v is not None else "")
            wl = f"{c['wins']} / {c['losses']}, {c['p']:.2g}" if "wins" in c else "–"
            lines.append(f"| {c['sparsity']:.0%} | {c['damp']:g} | {c['b1']:.2f}{loss(c['b1_loss'])} | "
                         f"{c['obs']:.2f}{loss(c['obs_loss'])} | {c['obs'] - c['b1']:+.2f} | {wl} |")
    if compound:
        r, speed = compound["results"], compound["speed"]
        m = r["metric"]
        by = {(v["variant"].startswith("dense"), v["precision"]): v for v in speed}
        d, f, i = by.get((True, "fp32")), by.get((False, "fp32")), by.get((False, "int8"))

        def sp(v):
            return (f"{v['latency_ms']:.2f} ms / {v['throughput']:.0f}/s" if v else "–")

        method = f" method={r[R.METHOD]}" if r.get("method") else ""
        lines += ["", f"Compound chain, one job: `python prune.py constraint={r[R.CONSTRAINT]}{method} unstructured=obs "
                      f"unstructured.sparsity={r[R.unstructured_key('target_sparsity')]} unstructured.num_grads="
                      f"{r[R.unstructured_key('num_grads')]} unstructured.fisher_block_size="
                      f"{r[R.unstructured_key('fisher_block_size')]} unstructured.num_recomputations="
                      f"{r[R.unstructured_key('num_recomputations')]} quantize=int8` (ONNX Runtime CPU, batch-1 latency / "
                      "batch-32 throughput, round-robin with the dense export; sizes: file / gzip):", "",
                  f"| step | {m} | params (non-zero) | size | ONNX Runtime speed |", "|---|---|---|---|---|",
                  f"| dense | {r[R.eval_key(m, 'dense')]:.2f} | {r[R.PARAMETERS_DENSE] / 1e6:.2f} M | "
                  f"{d['file_size'] / 1e6:.1f} MB | {sp(d)} |" if d else "| dense | – | – | – | – |",
                  f"| structured {r[R.CONSTRAINT]} (MAC ratio {r[R.MAC_RATIO]:.3f}) | {r[R.eval_key(m, 'tune')]:.2f} | "
                  f"{r[R.PARAMETERS] / 1e6:.2f} M | = next row's file | = next row (same shapes) |",
                  f"| + OBS {r[R.unstructured_key('sparsity')]:.0%} of the linears | {r[R.eval_key(m, 'unstructured')]:.2f} | "
                  f"{r[R.PARAMETERS] / 1e6:.2f} M ({r[R.NONZERO_PARAMETERS] / 1e6:.2f} M) | "
                  f"{r[R.export_key('onnx', 'file_size')] / 1e6:.1f} / {r[R.export_key('onnx', 'gzip_size')] / 1e6:.1f} MB | "
                  f"{sp(f)} ({r[R.EXPORT_RUNTIME]}) |",
                  f"| + INT8 (ONNX Runtime dynamic) | {r[R.export_key('int8', m)]:.2f} | same | "
                  f"{r[R.export_key('int8', 'file_size')] / 1e6:.1f} / {r[R.export_key('int8', 'gzip_size')] / 1e6:.1f} MB | {sp(i)} |"]
        if d and f and i:
            lines += ["", f"Speedups vs dense fp32 (latency / throughput): structured+OBS "
                          f"{d['latency_ms'] / f['latency_ms']:.2f}× / {f['throughput'] / d['throughput']:.2f}×, "
                          f"+INT8 {d['latency_ms'] / i['latency_ms']:.2f}× / {i['throughput'] / d['throughput']:.2f}× "
                          "(all from the structured shrinking and INT8: the runtime multiplies the zeros)."]
    v = settings["versions"]
    lines += ["", f"{settings['estimates']} Fisher estimates ({settings['gradient_s_per_estimate']} s of gradients "
                  f"each); total {settings['total_s'] / 60:.1f} min; torch {v['torch']}, transformers "
                  f"{v['transformers']}, onnxruntime {v.get('onnxruntime') or v.get('onnxruntime-gpu')}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
