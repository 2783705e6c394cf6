"""prune.py's job around the pipeline (``bertprune.core.pipeline.prune_model``).

``prune(cfg)`` is the testable entry (root ``prune.py`` is a 3-line Hydra wrapper): validate -> teacher
-> data -> ``prune_model`` (Fisher -> mask search -> rearrangement -> tuning -> physically smaller
model) -> save -> callbacks (export, LoadGen) -> results. Everything that can be checked is checked
before the long work starts; results.json is written last and atomically, so a crashed job never
leaves a result a sweep summary would pick up.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from bertprune import results as R
from bertprune.core.masks import MaskHooks, mask_shapes
from bertprune.core.method import PruneMethod
from bertprune.core.obs import check_memory, prunable_linears
from bertprune.core.pipeline import PruneResult, prune_model, pruning_time, timed, unpruned_result
from bertprune.core.search import check_constraint
from bertprune.evaluation import evaluator_for
from bertprune.io import atomic_write_json
from bertprune.jobs.callbacks import default_callbacks
from bertprune.lightning.hardware import check_hardware
from bertprune.models import (FFN_KEY, HEADS_KEY, check_prunable, count_parameters, load_model, load_tokenizer,
                              save_checkpoint)
from bertprune.models.adapters import adapter_for
from bertprune.tasks.data import Task

log = logging.getLogger(__name__)
RESULTS = R.RESULTS_FILE
UNSTRUCTURED_STEP = "unstructured"  # part of the pruning time (time/prune_s), when the job has that step
# What a prune job writes into its folder. A rerun into the same folder removes them first, so nothing
# of the previous run (an ONNX export of another model beside the new pruned/ …) can pass for this one's.
RUN_ARTIFACTS = (RESULTS, "pruned", "onnx", "onnx_int8", "bench", "csv", "tuning.json", "fisher.safetensors",
                 "obs_gradients.safetensors", "reconstruction.json", "iterative.json")
DENSE_RUNTIME = "dense runtime"  # what ONNX Runtime does with zeros in dense weights: multiplies them


def _cost_words(cfg) -> str:
    """What ``constraint`` is a fraction of, in the run's cost model's words."""
    target = str((cfg.get("cost") or {}).get("_target_", ""))
    return "predicted latency (cost=latency)" if "latency" in target else "encoder MACs"


def check_prune_config(cfg) -> float:
    """Fast checks of every value (before a teacher is trained or anything is loaded); returns the constraint."""
    from bertprune.config import validate_prune

    validate_prune(cfg)  # keys, types, ranges of everything but the constraint; errors name the key
    try:
        c = float(cfg.constraint)
    except (TypeError, ValueError):
        raise ValueError(f"constraint={cfg.constraint!r} is not a number; give the fraction of the dense "
                         f"model's {_cost_words(cfg)} to keep, e.g. constraint=0.5") from None
    if not math.isfinite(c) or not 0.0 < c < 1.0:
        raise ValueError(f"constraint={c} must be in (0, 1): the fraction of the dense model's {_cost_words(cfg)} "
                         "that is kept")
    return c


def refuse_pruned(teacher: str) -> None:
    """One clear error for a teacher that is already physically pruned (uneven layers), read from its
    config alone (before any data or weights): masks are ``[L, H]`` / ``[L, F]`` over the config's full
    widths, which such a model no longer has."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(teacher)
    heads, ffn = getattr(config, HEADS_KEY, None), getattr(config, FFN_KEY, None)
    L, H, F = adapter_for(config).dense_shape(config)
    if heads is None or (list(heads) == [H] * L and list(ffn) == [F] * L):
        return
    meta_file = Path(teacher) / "bertprune.json"
    try:
        meta = json.loads(meta_file.read_text())
        origin = f" It was pruned from {meta['teacher']} at constraint={meta['constraint']}."
    except (OSError, ValueError, KeyError):
        origin = ""
    raise ValueError(
        f"teacher={teacher} is already pruned (heads per layer {list(heads)}, FFN widths {list(ffn)}); "
        f"prune.py prunes a dense fine-tuned model.{origin} Prune that dense model with a smaller constraint "
        "instead (constraints are fractions of the dense model's MACs).")


LARGE_HIDDEN = 1024  # hidden size from which a model counts as "large" (BERT-large, RoBERTa-large)


def paper_batch_size(kind, config) -> int:
    """The paper's calibration batch: the kind's (32; 12 for SQuAD's 384-token features), halved for a large
    model (hidden size >= 1024), as its code does (``int((12 if squad else 32) * (0.5 if large else 1))``)."""
    from bertprune.tasks.kinds import get_kind

    hidden = adapter_for(config).hidden_size(config)
    return int(get_kind(kind).calibration_batch_size * (0.5 if hidden >= LARGE_HIDDEN else 1))


def check_num_samples(n_train: int, num_samples: int) -> None:
    if num_samples > n_train:
        raise ValueError(f"num_samples={num_samples} is larger than the training split ({n_train} examples); "
                         f"use num_samples<={n_train}")


def calibration_batches(n_train: int, num_samples: int, batch_size: int, seed: int) -> list[list[int]]:
    """A seeded sample of the training split cut into a fixed list of batches (identical for any
    number of processes, so multi-process Fisher equals single-process Fisher)."""
    check_num_samples(n_train, num_samples)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n_train, generator=g)[:num_samples].tolist()
    return [idx[i:i + batch_size] for i in range(0, num_samples, batch_size)]


def gradient_batches(n_train: int, num_grads: int, grad_batch_size: int, seed: int) -> list[list[int]]:
    """OBS's ``num_grads`` batches of ``grad_batch_size`` samples from the same seeded sample of the training
    split as ``calibration_batches`` (its first pass is ``calibration_batches(.., seed)``; when one pass over
    the split is not enough, the next ones are drawn with seed+1, seed+2, ...)."""
    if grad_batch_size > n_train:
        raise ValueError(f"unstructured.grad_batch_size={grad_batch_size} is larger than the training split "
                         f"({n_train} examples); use unstructured.grad_batch_size<={n_train}")
    per_pass = (n_train // grad_batch_size) * grad_batch_size
    out: list[list[int]] = []
    while len(out) < num_grads:
        n = min(per_pass, (num_grads - len(out)) * grad_batch_size)
        out += calibration_batches(n_train, n, grad_batch_size, seed + len(out) // (per_pass // grad_batch_size))
    return out


def _run_calibration(module, hardware, description: str) -> None:
    """``trainer.test`` of a calibration module (Fisher, OBS gradients) on 1 or more processes."""
    import pytorch_lightning as pl

    from bertprune.lightning.fisher import FisherProgressBar
    from bertprune.lightning.hardware import trainer_kwargs

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, inference_mode=False,
                         use_distributed_sampler=False, enable_model_summary=False,
                         callbacks=[FisherProgressBar(description)], **trainer_kwargs(hardware))
    trainer.test(module, verbose=False)


def run_fisher(model, kind, dataset, batches, collate, hardware, out_path: Path):
    """Fisher through Lightning (1 or more processes); returns the tensors written by rank 0."""
    from bertprune.lightning.fisher import FisherModule, load_fisher

    _run_calibration(FisherModule(model, kind, dataset, batches, collate, out_path), hardware, "fisher")
    return load_fisher(out_path)


def run_obs_gradients(model, kind, dataset, batches, collate, hardware, linears: list[str], masks, block_size: int,
                      out_path: Path) -> tuple[list[torch.Tensor], int]:
    """OBS's Fisher block sums (``[nb_i, B, B]`` per linear named in ``linears``, alive ``masks`` ``[out, in]``)
    through Lightning (1 or more processes, per-rank sums SUM-reduced, as ``run_fisher``); returns them and m."""
    from bertprune.lightning.fisher import OBSGradientModule, load_fisher

    module = OBSGradientModule(model, kind, dataset, batches, collate, out_path, linears, masks, block_size)
    _run_calibration(module, hardware, "obs gradients")
    saved = load_fisher(out_path)
    return [saved[f"blocks.{i}"] for i in range(len(linears))], len(batches)


def unstructured_options(cfg):
    """``OBSOptions`` of ``cfg.unstructured`` (checked by ``validate_prune``), or None for unstructured=none."""
    from bertprune.core.obs import OBSOptions

    u = cfg.unstructured
    if u.method == "none":
        return None
    return OBSOptions(sparsity=float(u.sparsity), method=str(u.method), pattern=str(u.pattern),
                      fisher_block_size=int(u.fisher_block_size), damp=float(u.damp),
                      num_recomputations=int(u.num_recomputations), schedule=str(u.schedule))


def memory_limit(cfg, device) -> int:
    from bertprune.core.obs import available_memory_bytes

    gb = cfg.unstructured.max_memory_gb
    return int(gb * 1e9) if gb is not None else available_memory_bytes(device)


def compressed_size(path: str | Path) -> int:
    """Bytes of ``path`` gzip-compressed (level 6): what the zeros of a sparse model save on disk or over the wire."""
    import gzip
    import shutil

    class _Count:
        n = 0

        def write(self, b):
            self.n += len(b)

        def flush(self):
            pass

    sink = _Count()
    with open(path, "rb") as f, gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0) as z:
        shutil.copyfileobj(f, z, 1 << 20)
    return sink.n


def clear_run_dir(run_dir: Path) -> None:
    """Remove what a previous job left in ``run_dir`` (``RUN_ARTIFACTS``); refuse folders prune.py did not write."""
    import shutil

    from bertprune.onnx.variants import MODEL_FILE, SIDECAR

    ours = {"pruned": lambda d: (d / "config.json").is_file(),
            "onnx": lambda d: {p.name for p in d.iterdir()} <= {MODEL_FILE, SIDECAR},
            "csv": lambda d: {p.name for p in d.iterdir()} <= {"metrics.csv", "hparams.yaml"},
            "bench": lambda d: (d / "summary.json").is_file() or not any(d.iterdir())}
    ours["onnx_int8"] = ours["onnx"]
    found = [run_dir / name for name in RUN_ARTIFACTS if (run_dir / name).exists()]
    for path in found:
        if path.is_dir() and not ours[path.name](path):
            raise FileExistsError(f"output_dir {run_dir} holds a folder {path.name}/ that prune.py did not write; "
                                  "a rerun replaces it, so it refuses. Choose another output_dir.")
    for path in found:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if found:
        log.info("rerun into %s: removed the previous run's %s", run_dir, ", ".join(p.name for p in found))


def prune(cfg, callbacks=None) -> dict:
    """Prune the fine-tuned model of ``cfg`` to ``cfg.constraint`` of its MACs; returns results.json's content.

    The job's loggers (``logger``) open once the teacher and data are ready and always close: a job that
    fails later leaves its W&B run marked failed (exit code 1)."""
    from bertprune.lightning.loggers import JobLoggers

    with JobLoggers() as job_loggers:
        return _prune(cfg, callbacks, job_loggers)


def prune_method(cfg) -> PruneMethod:
    """The pruning method of a prune config (``conf/method/<name>.yaml``) as its class's instance, checked."""
    from bertprune.config import build_method

    return build_method(cfg.method, int(cfg.num_samples))


@dataclass
class PruneInputs:
    """What ``prepare`` made ready, every check passed: the teacher, its data and calibration sample, the cost
    model, the method and the callbacks."""

    cfg: Any
    task: Task
    constraint: float
    method: PruneMethod
    unstructured: Any  # OBSOptions or None
    callbacks: list
    device: torch.device
    latency_settings: Any  # cost=latency's table settings, or None
    run_dir: Path
    tokenizer: Any
    evaluator: Any  # bertprune.evaluation: the kind's training rows, collate, validation scores
    teacher: str
    model: torch.nn.Module
    batch_size: int
    batches: list[list[int]] | None  # calibration batches (indices into evaluator.train_rows); None: structured=false
    grad_batches: list[list[int]] | None  # OBS's gradient batches
    cost: Any
    cost_s: float
    mac_seq_len: float
    t_start: float


@dataclass
class PruneOutcome:
    """What ``run`` measured: the pruning result, the pruned model and its metrics at every stage."""

    result: PruneResult
    pruned: torch.nn.Module
    timings: dict
    dense_metrics: dict
    stage_values: dict  # stage -> every metric of the task (the masked stages)
    stage_metrics: dict  # stage -> the primary metric (every stage)
    pruned_metrics: dict
    parity: float | None
    u_results: dict


def prepare(cfg, callbacks=None) -> PruneInputs:
    """Step 1: every check of ``cfg`` (before any long work), then the teacher (trained once if missing), its
    data, the calibration sample and the cost model."""
    from hydra.utils import instantiate

    from bertprune.jobs.train import ensure_teacher

    t_start = time.perf_counter()
    constraint = check_prune_config(cfg)
    task = Task.from_config(cfg.task)
    kind = task.task_kind
    if callbacks is None:  # built (and so checked: bench_options, the DeepSparse venv) before any long work
        callbacks = default_callbacks(cfg, task)
    if not kind.labelled_text and not cfg.teacher:
        raise ValueError(f"task={task.name} (question answering) needs teacher=<folder of a fine-tuned QA model, e.g. "
                         "BERT fine-tuned on SQuAD>; prune.py fine-tunes cached teachers for text tasks only")
    device = check_hardware(cfg.hardware)
    from bertprune.onnx.latency import check_cost

    latency_settings = check_cost(cfg.cost, task)  # cost=latency: its runtime / provider, before any work
    if cfg.export or cfg.bench:
        from bertprune.onnx.runtime import choose_providers

        choose_providers(str(cfg.hardware.runtime_device))  # the ONNX checks' provider, before any work
    method = prune_method(cfg)
    unstructured = unstructured_options(cfg)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    clear_run_dir(run_dir)  # rerun into the same folder: nothing of the previous run may look current

    # ---- model family, data, calibration sample: checked before a teacher is fine-tuned or loaded
    # (the cached teacher is saved with cfg.model.tokenizer, so its tokens are the same)
    if cfg.teacher:
        check_prunable(cfg.teacher, kind, task.num_labels, require_head=True)
        refuse_pruned(cfg.teacher)
    elif cfg.model.get("random_init") is None:
        check_prunable(cfg.model.name_or_path, kind)
    tokenizer = load_tokenizer(cfg.teacher or cfg.model.tokenizer)
    evaluator = evaluator_for(task, tokenizer, int(cfg.eval_batch_size), device)
    if cfg.structured:  # structured=false draws no calibration batches
        check_num_samples(evaluator.n_train, int(cfg.num_samples))
    n_train = len(evaluator.train_rows)
    grad_batches = (gradient_batches(n_train, int(cfg.unstructured.num_grads), int(cfg.unstructured.grad_batch_size),
                                     int(cfg.seed)) if unstructured is not None and unstructured.method == "obs" else None)

    # ---- teacher, cost model (cost: a _target_ building the cost model from the model and S)
    teacher = cfg.teacher or str(ensure_teacher(cfg).folder)
    model = load_model(teacher, kind, task.num_labels, require_head=True).to(device).eval()
    batch_size = int(cfg.batch_size) if cfg.batch_size is not None else paper_batch_size(kind, model.config)
    batches = (calibration_batches(n_train, int(cfg.num_samples), batch_size, int(cfg.seed))
               if cfg.structured else None)  # structured=false: no Fisher of the masks
    # MACs at the real (unpadded) token count: text rows are unpadded, SQuAD features padded (their input_mask)
    mac_seq_len = cfg.cost.seq_len or evaluator.mean_tokens()
    t_cost = time.perf_counter()
    cost = instantiate(cfg.cost, model=model, seq_len=mac_seq_len, **cost_runtime_args(cfg.cost, task))
    cost_s = time.perf_counter() - t_cost
    (L, H), (_, F) = mask_shapes(model)
    check_constraint(constraint, cost, L * H, L * F)
    if unstructured is not None and unstructured.method == "obs":
        # exact without the structured step; else an upper bound (the structured step only removes weights)
        check_memory([m.weight.numel() for _, m in prunable_linears(model)], unstructured.fisher_block_size,
                     memory_limit(cfg, device), "" if not cfg.structured else " (at most: on the dense encoder)")
    return PruneInputs(cfg=cfg, task=task, constraint=constraint, method=method, unstructured=unstructured,
                       callbacks=callbacks, device=device, latency_settings=latency_settings, run_dir=run_dir,
                       tokenizer=tokenizer, evaluator=evaluator, teacher=teacher, model=model, batch_size=batch_size,
                       batches=batches, grad_batches=grad_batches, cost=cost, cost_s=cost_s, mac_seq_len=mac_seq_len,
                       t_start=t_start)


def run(inp: PruneInputs) -> PruneOutcome:
    """Step 2: the dense evaluation, the method (``prune_model``; Fisher through Lightning), the parity of the
    physically pruned model with the masked one, the unstructured step."""
    cfg, ev, model, kind, device = inp.cfg, inp.evaluator, inp.model, inp.task.task_kind, inp.device
    metric = inp.task.primary_metric
    timings: dict[str, float] = {}
    stage_values: dict[str, dict] = {}  # every metric of the task at each stage (the pipeline keeps the primary)

    def masked_eval(masked_model, head_mask, neuron_mask, stage: str) -> float:
        with MaskHooks(masked_model, head_mask, neuron_mask):
            stage_values[stage] = ev.metrics(masked_model, f"eval {stage}")
        return stage_values[stage][metric]

    dense_metrics = timed(timings, "eval_dense", lambda: ev.metrics(model, "eval dense"))
    log.info("dense %s: %.2f", metric, dense_metrics[metric])
    rows, collate = ev.train_rows, ev.collate
    if cfg.structured:
        # ---- Fisher (through Lightning: 1 or more processes) -> the method -> physical
        calibration = [collate([rows[j] for j in b]) for b in inp.batches]
        result = prune_model(model, calibration, kind, inp.cost, inp.constraint, inp.method, device=device,
                             evaluate=masked_eval,
                             fisher=lambda: run_fisher(model, kind, rows, inp.batches, collate, cfg.hardware,
                                                       inp.run_dir / "fisher.safetensors"))
        timings.update(result.timings)
        pruned = result.model

        def parity_pass():  # the masked model: the teacher, or its copy with refitted output projections
            with MaskHooks(result.masked_model, result.head_mask, result.neuron_mask):
                masked, _ = ev.predict(result.masked_model, "parity masked")
            return masked, *ev.predict(pruned, "parity pruned")

        masked_logits, pruned_logits, labels = timed(timings, "parity", parity_pass)
        parity = float((pruned_logits - masked_logits).abs().max())
        if parity > 1e-4:
            raise RuntimeError(f"physically pruned model differs from the masked model by {parity:.2e} (> 1e-4)")
        pruned_metrics = ev.scores(pruned_logits, labels) if inp.unstructured is None else None
    else:  # structured=false: the unstructured step prunes the dense teacher (a copy)
        result = unpruned_result(model, inp.cost)
        pruned, parity, pruned_metrics = result.model, None, None
    stage_metrics = result.stage_metrics

    # ---- unstructured step (obs / magnitude) on the encoder linears of what is left
    u_results: dict = {}
    if inp.unstructured is not None:
        u_results = timed(timings, UNSTRUCTURED_STEP, run_unstructured, pruned, inp.unstructured, cfg, kind, rows,
                          inp.grad_batches, collate, device, inp.run_dir)
        pruned_metrics = timed(timings, "eval_unstructured", lambda: ev.metrics(pruned, "eval unstructured"))
        stage_metrics["unstructured"] = pruned_metrics[metric]
    return PruneOutcome(result=result, pruned=pruned, timings=timings, dense_metrics=dense_metrics,
                        stage_values=stage_values, stage_metrics=stage_metrics, pruned_metrics=pruned_metrics,
                        parity=parity, u_results=u_results)


def record(inp: PruneInputs, out: PruneOutcome, job_loggers) -> dict:
    """Step 3: the pruned checkpoint, results.json (``bertprune.results.PruneRecord``), the callbacks (export,
    LoadGen), the served latency, the loggers. results.json is written last and atomically."""
    cfg, task, result, timings, run_dir = inp.cfg, inp.task, out.result, out.timings, inp.run_dir
    metric = task.primary_metric
    heads, ffn = result.heads_per_layer, result.ffn_per_layer
    stages = {s: out.stage_values.get(s, {metric: v}) for s, v in out.stage_metrics.items()}
    # structured=false: no constraint was applied (cfg.constraint is only the unused default), so none is recorded
    constraint = inp.constraint if cfg.structured else None
    meta = {"constraint": constraint, "mac_ratio": result.mac_ratio, "macs": result.macs,
            "dense_macs": result.dense_macs, "mac_seq_len": inp.mac_seq_len, "heads_per_layer": heads,
            "ffn_per_layer": ffn, "stage_metrics": {"dense": out.dense_metrics[metric], **out.stage_metrics},
            "metric": metric, "task": OmegaConf.to_container(cfg.task, resolve=True), "teacher": inp.teacher}
    if inp.unstructured is not None:
        meta["unstructured"] = {k.split("/", 1)[1]: v for k, v in out.u_results.items()}
    pruned_dir = timed(timings, "save", save_checkpoint, out.pruned, inp.tokenizer, run_dir / "pruned", metadata=meta)

    sections: dict = {}
    if result.guard_report is not None:  # held-out calibration loss per stage and each per-layer rollback
        sections.update(R.guard_entries(result.guard_report))
    if cfg.structured:
        sections.update(R.method_entries(inp.method.name, inp.method.options()))
    if result.reconstruction_report is not None:  # each refit, kept or rolled back on held-out calibration tokens
        sections.update(R.reconstruct_entries(result.reconstruction_report, result.held_out_samples))
        atomic_write_json(run_dir / "reconstruction.json", result.reconstruction_report.entries)
    if result.iterative_report is not None:
        atomic_write_json(run_dir / "iterative.json", result.iterative_report.steps)
    if inp.unstructured is not None:
        sections.update({R.STRUCTURED: bool(cfg.structured), **out.u_results,
                         R.NONZERO_PARAMETERS: count_parameters(out.pruned)
                         - out.u_results[R.unstructured_key("pruned_weights")]})
    if result.tune_report:
        atomic_write_json(run_dir / "tuning.json", result.tune_report.entries)
    if inp.latency_settings is not None:
        sections.update(R.latency_entries(inp.cost.name, result, inp.cost.table, inp.latency_settings, inp.cost_s))
    # Pruning time proper: the evaluation passes (eval_*, parity) are timed apart and not counted.
    results = R.PruneRecord(
        constraint=constraint, mac_ratio=result.mac_ratio, mac_seq_len=inp.mac_seq_len, heads_per_layer=heads,
        ffn_per_layer=ffn, metric=metric, metric_names=list(task.metric_names), dense=out.dense_metrics,
        stages=stages, pruned_model=out.pruned_metrics, parity=out.parity,
        parameters=count_parameters(out.pruned), parameters_dense=count_parameters(inp.model),
        file_size=(pruned_dir / "model.safetensors").stat().st_size,
        tune_fallback_layers=result.tune_report.fallbacks if result.tune_report else 0, timings=timings,
        prune_s=pruning_time(timings), num_samples=int(cfg.num_samples), batch_size=inp.batch_size,
        seed=int(cfg.seed), task=task.name, model=cfg.model.name, torch_threads=torch.get_num_threads(),
        pruned_dir=str(pruned_dir), teacher=inp.teacher, sections=sections).flat()

    for cb in inp.callbacks:
        results.update(cb.on_variant_saved(run_dir, pruned_dir, task, results) or {})
    if inp.latency_settings is not None:
        results.update(measured_latency(run_dir, out.pruned, inp.model, task.task_kind, inp.latency_settings, results))
    if inp.unstructured is not None:
        # zeros in dense weights: smaller once compressed, not faster under ONNX Runtime (dense kernels)
        results[R.GZIP_SIZE] = compressed_size(pruned_dir / "model.safetensors")
        for key in ("onnx", "int8"):
            if results.get(R.export_key(key, "path")):
                results[R.export_key(key, "gzip_size")] = compressed_size(results[R.export_key(key, "path")])
        if results.get(R.export_key("onnx", "path")):
            results[R.EXPORT_RUNTIME] = DENSE_RUNTIME
    results[R.TOTAL_S] = round(time.perf_counter() - inp.t_start, 3)

    results.update(job_loggers.run_info())  # wandb/run_id ...: where bench.py writes LoadGen's results back
    job_loggers.log(results)
    job_loggers.log_study(results, R.study_stages(results, metric, out.dense_metrics, out.stage_values,
                                                 out.stage_metrics, out.pruned_metrics),
                          head_mask=result.head_mask if cfg.structured else None,
                          neuron_mask=result.neuron_mask if cfg.structured else None, run_dir=run_dir)
    atomic_write_json(run_dir / RESULTS, results)
    print(R.format_result(results, metric))
    return results


def _prune(cfg, callbacks, job_loggers) -> dict:
    inp = prepare(cfg, callbacks)
    group = Path(cfg.output_dir).parent.name if cfg.get("sweep_group") is None else cfg.sweep_group
    u = inp.unstructured
    steps = (f"c{inp.constraint}" if cfg.structured else "dense") + (
        f"-{u.method}{u.sparsity:g}" if u is not None else "")  # what the run does
    job_loggers.open(cfg.logger, str(inp.run_dir), name=f"prune-{inp.task.name}-{cfg.model.name}-{steps}",
                     group=f"prune-{group}", config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    out = run(inp)
    results = record(inp, out, job_loggers)
    del inp, out
    gc.collect()
    return results


def cost_runtime_args(cost_cfg, task) -> dict:
    """What the job passes a cost factory besides ``model`` and ``seq_len``: ``task`` when it takes one."""
    import inspect

    from hydra.utils import get_object

    params = inspect.signature(get_object(str(cost_cfg._target_))).parameters
    return {"task": task} if "task" in params else {}


def measured_latency(run_dir: Path, pruned, dense, kind, settings, results: dict) -> dict:
    """The latency of what is served, measured with the table's settings: the exported ``onnx/model.onnx``
    (onnxruntime; not measured without export=true) or the pruned PyTorch model (torch), interleaved with
    the dense model."""
    from bertprune.onnx.latency import rescaled_to_now, time_served
    from bertprune.onnx.variants import MODEL_FILE

    if settings.runtime == "onnxruntime":
        served = run_dir / "onnx" / MODEL_FILE
        if not served.is_file():
            return R.measured_latency_entries(None, "not measured: the latency is timed on the exported ONNX model "
                                                    "and this job exported none (export=false)")
        on = str(served)
    else:
        served, on = pruned, "the pruned PyTorch model"
    log.info("timing the served model (%s, batch %d, seq %d) ...", settings.runtime, settings.batch_size,
             settings.seq_len)
    t = time.perf_counter()
    ms = time_served(served, kind, settings, dense=dense)
    predicted, dense_predicted = results[R.latency_key("predicted_ms")], results[R.latency_key("dense_predicted_ms")]
    drift, rescaled = rescaled_to_now(predicted, dense_predicted,
                                      ms["dense_ms"])
    if abs(drift - 1) > 0.1:
        log.warning("the dense model runs %.2fx as long as when the latency table was measured (%.3f vs %.3f ms): "
                    "this machine's speed has changed, so the table's absolute milliseconds are off by about that "
                    "factor; ratios are not. latency/predicted_rescaled_ms corrects for it; cost.cache=false "
                    "re-measures the table", drift, ms["dense_ms"], dense_predicted)
    return R.measured_latency_entries(ms, on, drift, rescaled, predicted, time.perf_counter() - t)


def run_unstructured(pruned, options, cfg, kind, train_rows, grad_batches, collate, device, run_dir: Path) -> dict:
    """The unstructured step on ``pruned``'s encoder linears, in place; returns its ``unstructured/*`` results.

    obs: each recomputation collects the Fisher block sums at the current weights through Lightning
    (``run_obs_gradients``: the job's hardware, 1 or more processes)."""
    from bertprune.core.obs import check_memory, prunable_linears, prune_unstructured

    named = prunable_linears(pruned)
    names, linears = [n for n, _ in named], [m for _, m in named]
    memory = 0
    gradients = None
    if options.method == "obs":
        memory = check_memory([m.weight.numel() for m in linears], options.fisher_block_size,
                              memory_limit(cfg, device))
        out = run_dir / "obs_gradients.safetensors"

        def gradients(masks):
            return run_obs_gradients(pruned, kind, train_rows, grad_batches, collate, cfg.hardware, names, masks,
                                     options.fisher_block_size, out)

    report = prune_unstructured(pruned, options, gradients, linears)
    (run_dir / "obs_gradients.safetensors").unlink(missing_ok=True)  # B x the model's size: not kept
    u = cfg.unstructured
    return R.unstructured_entries(options, report, u.num_grads, u.grad_batch_size, memory)
