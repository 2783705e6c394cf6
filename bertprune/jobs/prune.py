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
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bertprune.core.masks import MaskHooks, mask_shapes
from bertprune.core.method import PruneMethod
from bertprune.core.pipeline import prune_model, pruning_time, timed, unpruned_result
from bertprune.core.search import check_constraint
from bertprune.io import atomic_write_json
from bertprune.jobs.sweep import STAGES
from bertprune.lightning.hardware import check_hardware
from bertprune.models import (FFN_KEY, HEADS_KEY, check_prunable, count_parameters, load_model, load_tokenizer,
                              save_checkpoint)
from bertprune.models.adapters import adapter_for
from bertprune.tasks.data import Task, average_token_length, load_task_data, make_loader, tokenize
from bertprune.tasks.evaluate import evaluate, predict_logits, predict_spans
from bertprune.tasks.features import squad_data, stack_rows
from bertprune.tasks.metrics import metric_format

log = logging.getLogger(__name__)
RESULTS = "results.json"
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


def _prune(cfg, callbacks, job_loggers) -> dict:
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
    if kind.labelled_text:
        data = load_task_data(task)
        if cfg.structured:  # structured=false draws no calibration batches
            check_num_samples(len(data["train"]), int(cfg.num_samples))
        tokenized = tokenize(data, task, tokenizer)
        train_rows = tokenized["train"]
    else:  # SQuAD: training features with answer positions, dev examples + features
        qa = squad_data(task, tokenizer)
        if cfg.structured:
            check_num_samples(len(qa.train), int(cfg.num_samples))
        train_rows = qa.train
    if unstructured is not None and unstructured.method == "obs":
        grad_batches = gradient_batches(len(train_rows), int(cfg.unstructured.num_grads),
                                        int(cfg.unstructured.grad_batch_size), int(cfg.seed))

    # ---- teacher, cost model (cost: a _target_ building the cost model from the model and S)
    teacher = cfg.teacher or str(ensure_teacher(cfg).folder)
    model = load_model(teacher, kind, task.num_labels, require_head=True).to(device).eval()
    batch_size = int(cfg.batch_size) if cfg.batch_size is not None else paper_batch_size(kind, model.config)
    batches = (calibration_batches(len(train_rows), int(cfg.num_samples), batch_size, int(cfg.seed))
               if cfg.structured else None)  # structured=false: no Fisher of the masks
    # MACs at the real (unpadded) token count: text rows are unpadded, SQuAD features padded (their input_mask)
    mac_seq_len = cfg.cost.seq_len or (average_token_length(tokenized["train"]) if kind.labelled_text
                                       else qa.mean_tokens)
    t_cost = time.perf_counter()
    cost = instantiate(cfg.cost, model=model, seq_len=mac_seq_len, **cost_runtime_args(cfg.cost, task))
    cost_s = time.perf_counter() - t_cost
    (L, H), (_, F) = mask_shapes(model)
    check_constraint(constraint, cost, L * H, L * F)
    if unstructured is not None and unstructured.method == "obs":
        from bertprune.core.obs import check_memory, prunable_linears

        # exact without the structured step; else an upper bound (the structured step only removes weights)
        check_memory([m.weight.numel() for _, m in prunable_linears(model)], unstructured.fisher_block_size,
                     memory_limit(cfg, device), "" if not cfg.structured else " (at most: on the dense encoder)")
    metric, metrics = task.primary_metric, task.metrics  # the task's metrics (None: the kind's), the primary first
    if kind.labelled_text:
        val_loader = make_loader(tokenized["validation"], tokenizer, int(cfg.eval_batch_size))
        collate = val_loader.collate_fn

        def predict(m, desc: str):
            """(logits [N, num_labels], labels [N]) of model ``m`` over the validation split."""
            return predict_logits(m, val_loader, device, progress=True, desc=desc)

        def scores(outputs, labels) -> dict:
            return task.score(outputs, labels)

        def eval_metrics(m, desc: str) -> dict:
            return evaluate(m, val_loader, kind, device, progress=True, desc=desc, metrics=metrics)
    else:
        collate = stack_rows

        def predict(m, desc: str):
            """(start/end logits [N spans, max_length, 2], None) over the dev features, as the harness reads them."""
            return predict_spans(m, kind, qa.validation, int(cfg.eval_batch_size), device, desc), None

        def scores(outputs, labels) -> dict:  # MLPerf's n-best decoding, then the official SQuAD v1.1 EM/F1
            return task.score(outputs, examples=qa.examples, squad=qa.features)

        def eval_metrics(m, desc: str) -> dict:
            return scores(*predict(m, desc))
    timings: dict[str, float] = {}

    stage_values: dict[str, dict] = {}  # every metric of the task at each stage (the pipeline keeps the primary)

    def masked_eval(masked_model, head_mask, neuron_mask, stage: str) -> float:
        with MaskHooks(masked_model, head_mask, neuron_mask):
            stage_values[stage] = eval_metrics(masked_model, f"eval {stage}")
        return stage_values[stage][metric]

    group = Path(cfg.output_dir).parent.name if cfg.get("sweep_group") is None else cfg.sweep_group
    steps = (f"c{constraint}" if cfg.structured else "dense") + (
        f"-{unstructured.method}{unstructured.sparsity:g}" if unstructured is not None else "")  # what the run does
    job_loggers.open(cfg.logger, str(run_dir), name=f"prune-{task.name}-{cfg.model.name}-{steps}",
                     group=f"prune-{group}", config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    dense_metrics = timed(timings, "eval_dense", lambda: eval_metrics(model, "eval dense"))
    dense_metric = dense_metrics[metric]
    log.info("dense %s: %.2f", metric, dense_metric)

    if cfg.structured:
        # ---- Fisher (through Lightning: 1 or more processes) -> search -> rearrange -> tune -> physical
        calibration = [collate([train_rows[j] for j in b]) for b in batches]
        result = prune_model(model, calibration, kind, cost, constraint, method, device=device, evaluate=masked_eval,
                             fisher=lambda: run_fisher(model, kind, train_rows, batches, collate, cfg.hardware,
                                                       run_dir / "fisher.safetensors"))
        timings.update(result.timings)
        pruned, head_mask, neuron_mask, stage_metrics = (result.model, result.head_mask, result.neuron_mask,
                                                         result.stage_metrics)

        # ---- the physically smaller model, checked against the masked one
        def parity_pass():  # the masked model: the teacher, or its copy with refitted output projections
            with MaskHooks(result.masked_model, head_mask, neuron_mask):
                masked, _ = predict(result.masked_model, "parity masked")
            return masked, *predict(pruned, "parity pruned")

        masked_logits, pruned_logits, labels = timed(timings, "parity", parity_pass)
        parity = float((pruned_logits - masked_logits).abs().max())
        if parity > 1e-4:
            raise RuntimeError(f"physically pruned model differs from the masked model by {parity:.2e} (> 1e-4)")
        pruned_metrics = scores(pruned_logits, labels) if unstructured is None else None
    else:  # structured=false: the unstructured step prunes the dense teacher (a copy)
        result = unpruned_result(model, cost)
        pruned, stage_metrics, parity, pruned_metrics = result.model, result.stage_metrics, None, None

    # ---- unstructured step (obs / magnitude) on the encoder linears of what is left
    u_results: dict = {}
    if unstructured is not None:
        u_results = timed(timings, UNSTRUCTURED_STEP, run_unstructured, pruned, unstructured, cfg, kind, train_rows,
                          grad_batches if unstructured.method == "obs" else None, collate, device, run_dir)
        pruned_metrics = timed(timings, "eval_unstructured", lambda: eval_metrics(pruned, "eval unstructured"))
        stage_metrics["unstructured"] = pruned_metrics[metric]
    pruned_metric = pruned_metrics[metric]
    heads, ffn = result.heads_per_layer, result.ffn_per_layer
    final_stage = list(stage_metrics)[-1]
    # structured=false: no constraint was applied (cfg.constraint is only the unused default), so none is recorded
    meta = {"constraint": constraint if cfg.structured else None, "mac_ratio": result.mac_ratio, "macs": result.macs,
            "dense_macs": result.dense_macs, "mac_seq_len": mac_seq_len, "heads_per_layer": heads,
            "ffn_per_layer": ffn, "stage_metrics": {"dense": dense_metric, **stage_metrics}, "metric": metric,
            "task": OmegaConf.to_container(cfg.task, resolve=True), "teacher": teacher}
    if unstructured is not None:
        meta["unstructured"] = {k.split("/", 1)[1]: v for k, v in u_results.items() if k.startswith("unstructured/")}
    pruned_dir = timed(timings, "save", save_checkpoint, pruned, tokenizer, run_dir / "pruned", metadata=meta)
    # Pruning time proper: the evaluation passes (eval_*, parity) are timed apart and not counted.
    prune_time = pruning_time(timings)

    results = {
        # structured=false: None, as in the checkpoint's metadata (sweep tables leave the cell empty)
        "constraint": meta["constraint"], "prune/mac_ratio": result.mac_ratio, "prune/mac_seq_len": mac_seq_len,
        "prune/heads_per_layer": heads, "prune/ffn_per_layer": ffn,
        "prune/kept_heads": sum(heads), "prune/kept_neurons": sum(ffn),
        f"eval/{metric}_dense": dense_metric,
        **{f"eval/{metric}_{k}": v for k, v in stage_metrics.items()},
        f"eval/{metric}": stage_metrics[final_stage], f"eval/{metric}_pruned_model": pruned_metric,
        # the task's other metrics (MRPC's accuracy next to its F1, SQuAD's exact match ...) at every stage
        **{f"eval/{m}_{which}": v[m] for m in task.metric_names[1:]
           for which, v in (("dense", dense_metrics), *stage_values.items(), ("pruned_model", pruned_metrics))},
        **({"prune/parity_max_abs_diff": parity} if parity is not None else {}),
        "model/parameters": count_parameters(pruned), "model/parameters_dense": count_parameters(model),
        "model/file_size": (pruned_dir / "model.safetensors").stat().st_size,
        "tune/fallback_layers": result.tune_report.fallbacks if result.tune_report else 0,
        **{f"time/{k}_s": round(v, 3) for k, v in timings.items()}, "time/prune_s": round(prune_time, 3),
        "num_samples": int(cfg.num_samples), "batch_size": batch_size, "seed": int(cfg.seed), "task": task.name, "model": cfg.model.name,
        "hardware/torch_threads": torch.get_num_threads(),
        "metric": metric,
        "pruned_dir": str(pruned_dir), "teacher": teacher,
    }
    if result.guard_report is not None:  # held-out calibration loss per stage and each per-layer rollback
        g = result.guard_report
        results.update({f"guard/loss_{k}": v for k, v in g.losses.items()})
        results.update({"guard/rollbacks": g.rollbacks, "guard/rolled_back_layers": len(g.rollbacks)})
    if cfg.structured:
        results.update({"method": method.name, **{f"method/{k}": v for k, v in method.options().items()}})
    if result.reconstruction_report is not None:  # each refit, kept or rolled back on held-out calibration tokens
        rr = result.reconstruction_report
        results.update({"reconstruct/fitted": sum(e["status"] == "fitted" for e in rr.entries),
                        "reconstruct/rolled_back": [{"layer": e["layer"], "part": e["part"]} for e in rr.rollbacks],
                        "reconstruct/held_out_samples": result.held_out_samples})
        atomic_write_json(run_dir / "reconstruction.json", rr.entries)
    if result.iterative_report is not None:
        atomic_write_json(run_dir / "iterative.json", result.iterative_report.steps)
    if unstructured is not None:
        results.update({"structured": bool(cfg.structured), **u_results,
                        "model/nonzero_parameters": count_parameters(pruned) - u_results["unstructured/pruned_weights"]})
    if result.tune_report:
        atomic_write_json(run_dir / "tuning.json", result.tune_report.entries)
    if latency_settings is not None:
        results.update(latency_results(cost, result, latency_settings, cost_s))

    for cb in callbacks:
        results.update(cb.on_variant_saved(run_dir, pruned_dir, task, results) or {})
    if latency_settings is not None:
        results.update(measured_latency(run_dir, pruned, model, kind, latency_settings, results))
    if unstructured is not None:
        # zeros in dense weights: smaller once compressed, not faster under ONNX Runtime (dense kernels)
        results["model/gzip_size"] = compressed_size(pruned_dir / "model.safetensors")
        for key in ("onnx", "int8"):
            if results.get(f"export/{key}_path"):
                results[f"export/{key}_gzip_size"] = compressed_size(results[f"export/{key}_path"])
        if results.get("export/onnx_path"):
            results["export/runtime"] = DENSE_RUNTIME
    results["time/total_s"] = round(time.perf_counter() - t_start, 3)

    results.update(job_loggers.run_info())  # wandb/run_id ...: where bench.py writes LoadGen's results back
    job_loggers.log(results)
    job_loggers.log_study(results, study_stages(results, metric, dense_metrics, stage_values, stage_metrics,
                                                 pruned_metrics),
                          head_mask=head_mask if cfg.structured else None,
                          neuron_mask=neuron_mask if cfg.structured else None, run_dir=run_dir)
    atomic_write_json(run_dir / RESULTS, results)
    print(format_result(results, metric))
    del model, pruned, result
    gc.collect()
    return results


def study_stages(results: dict, metric: str, dense: dict, masked: dict, stage_metrics: dict, pruned: dict
                 ) -> list[tuple[str, dict]]:
    """The stages of a job in order, each with the metrics measured there: dense, the pipeline's stages
    (every task metric where the masked model was evaluated), the physically pruned model, its ONNX exports."""
    stages = [("dense", dense)] + [(s, masked.get(s, {metric: v})) for s, v in stage_metrics.items()]
    stages.append(("pruned", pruned))
    for key, name in (("onnx", "onnx"), ("int8", "onnx_int8")):
        if results.get(f"export/{key}_{metric}") is not None:
            stages.append((name, {metric: results[f"export/{key}_{metric}"]}))
    return stages


def cost_runtime_args(cost_cfg, task) -> dict:
    """What the job passes a cost factory besides ``model`` and ``seq_len``: ``task`` when it takes one."""
    import inspect

    from hydra.utils import get_object

    params = inspect.signature(get_object(str(cost_cfg._target_))).parameters
    return {"task": task} if "task" in params else {}


def latency_results(cost, result, settings, cost_s: float) -> dict:
    """results.json's ``latency/*`` entries of a latency-searched job (predicted, the table's settings)."""
    table = cost.table
    return {
        "prune/cost": cost.name, "prune/latency_ratio": result.cost_ratio,
        "latency/predicted_ms": result.cost_total, "latency/dense_predicted_ms": result.dense_cost_total,
        "latency/runtime": table["runtime"], "latency/provider": table["provider"],
        "latency/device_name": table["device_name"], "latency/threads": settings.threads,
        "latency/scenario": settings.scenario, "latency/batch_size": settings.batch_size,
        "latency/seq_len": settings.seq_len, "latency/lut_points": settings.points,
        "latency/lut_cached": bool(table.get("cached")), "latency/lut_measure_s": table.get("measure_s"),
        "latency/lut_scale": table.get("scale"), "time/latency_lut_s": round(cost_s, 3),
    }


def measured_latency(run_dir: Path, pruned, dense, kind, settings, results: dict) -> dict:
    """The latency of what is served, measured with the table's settings: the exported ``onnx/model.onnx``
    (onnxruntime; not measured without export=true) or the pruned PyTorch model (torch), interleaved with
    the dense model."""
    from bertprune.onnx.latency import rescaled_to_now, time_served
    from bertprune.onnx.variants import MODEL_FILE

    if settings.runtime == "onnxruntime":
        served = run_dir / "onnx" / MODEL_FILE
        if not served.is_file():
            return {"latency/measured_ms": None, "latency/dense_measured_ms": None,
                    "latency/measured_on": "not measured: the latency is timed on the exported ONNX model and "
                                           "this job exported none (export=false)"}
        on = str(served)
    else:
        served, on = pruned, "the pruned PyTorch model"
    log.info("timing the served model (%s, batch %d, seq %d) ...", settings.runtime, settings.batch_size,
             settings.seq_len)
    t = time.perf_counter()
    ms = time_served(served, kind, settings, dense=dense)
    drift, rescaled = rescaled_to_now(results["latency/predicted_ms"], results["latency/dense_predicted_ms"],
                                      ms["dense_ms"])
    if abs(drift - 1) > 0.1:
        log.warning("the dense model runs %.2fx as long as when the latency table was measured (%.3f vs %.3f ms): "
                    "this machine's speed has changed, so the table's absolute milliseconds are off by about that "
                    "factor; ratios are not. latency/predicted_rescaled_ms corrects for it; cost.cache=false "
                    "re-measures the table", drift, ms["dense_ms"], results["latency/dense_predicted_ms"])
    return {"latency/measured_ms": ms["ms"], "latency/dense_measured_ms": ms["dense_ms"],
            "latency/measured_ratio": ms["ms"] / ms["dense_ms"],
            "latency/predicted_over_measured": results["latency/predicted_ms"] / ms["ms"],
            "latency/dense_measured_over_table": drift, "latency/predicted_rescaled_ms": rescaled,
            "latency/predicted_rescaled_over_measured": rescaled / ms["ms"],
            "latency/measured_on": on, "time/latency_measure_s": round(time.perf_counter() - t, 3)}


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
    return {"unstructured/method": options.method, "unstructured/pattern": options.pattern,
            "unstructured/target_sparsity": options.sparsity, "unstructured/sparsity": report.sparsity,
            "unstructured/pruned_weights": report.pruned, "unstructured/linear_weights": report.total,
            **({"unstructured/num_grads": int(u.num_grads), "unstructured/grad_batch_size": int(u.grad_batch_size),
                "unstructured/fisher_block_size": options.fisher_block_size, "unstructured/damp": options.damp,
                "unstructured/num_recomputations": options.num_recomputations,
                "unstructured/schedule": options.schedule, "unstructured/memory_bytes": memory,
                "unstructured/steps": report.steps} if options.method == "obs" else {})}


def default_callbacks(cfg, task: Task | None = None) -> list:
    """Export / LoadGen callbacks switched on by ``export=true`` / ``bench=true``; ``bench_options`` are
    LoadgenCallback's arguments, checked here (a wrong key or value is one error before the job prunes; with
    ``task``, DeepSparse's lengths against its max_length too)."""
    cbs = []
    if cfg.get("export", False):
        from bertprune.lightning.callbacks import ExportCallback

        quantize = cfg.get("quantize")
        cbs.append(ExportCallback(quantize=None if quantize is None else str(quantize),
                                  device=str(cfg.hardware.runtime_device)))
    if cfg.get("bench", False):
        from bertprune.lightning.bench_callback import LoadgenCallback

        # typed and closed by the schema (bertprune.config.BenchOptions): a wrong key or value fails composition
        options = (OmegaConf.to_container(cfg.bench_options, resolve=True, enum_to_str=True)
                   if cfg.get("bench_options") else {})
        if not cfg.get("export", False):
            raise ValueError("bench=true needs export=true: LoadGen runs the job's exported ONNX variant")
        cb = LoadgenCallback(**options)
        if task is not None:
            from bertprune.onnx.deepsparse_runtime import check_seq_lens

            check_seq_lens(cb.deepsparse_seq_lens, task.max_length, task.task_kind.fixed_seq_len, cb.runtime)
        cbs.append(cb)
    return cbs


def format_result(r: dict, metric: str) -> str:
    stages = [k.split(f"eval/{metric}_")[1] for k in r if k.startswith(f"eval/{metric}_")
              and k.split(f"eval/{metric}_")[1] in STAGES]
    fmt = metric_format(metric)  # accuracy/f1 in % with 2 decimals, correlations with 4 digits
    accs = "  ".join(f"{s} {fmt.format(r[f'eval/{metric}_{s}'])}" for s in stages)
    if r.get("latency/predicted_ms") is not None:
        measured = (f"measured {r['latency/measured_ms']:.3f} ms (ratio {r['latency/measured_ratio']:.3f}; predicted "
                    f"rescaled to the dense model timed beside it {r['latency/predicted_rescaled_ms']:.3f} ms)"
                    if r.get("latency/measured_ms") is not None else "not measured (export=false)")
        accs += (f"\n  latency ratio {r['prune/latency_ratio']:.3f}: predicted {r['latency/predicted_ms']:.3f} ms "
                 f"of {r['latency/dense_predicted_ms']:.3f} ms, {measured} ({r['latency/runtime']}, "
                 f"{r['latency/provider']}, batch {r['latency/batch_size']}, seq {r['latency/seq_len']})")
    if "unstructured/sparsity" in r:
        head = (f"constraint {r['constraint']:.2f}: MAC ratio {r['prune/mac_ratio']:.3f}, heads "
                f"{r['prune/heads_per_layer']}, FFN {r['prune/ffn_per_layer']}" if r["structured"]
                else "no structured step (structured=false)")
        sizes = "".join(f", {k} {r[f'export/{k}_gzip_size'] / 1e6:.1f} MB gzipped" for k in ("onnx", "int8")
                        if f"export/{k}_gzip_size" in r)
        return (f"{head}\n  {r['unstructured/method']} {r['unstructured/pattern']}: sparsity "
                f"{r['unstructured/sparsity']:.4f} of {r['unstructured/linear_weights']:,} linear weights{sizes}"
                f"{' (ONNX Runtime: ' + r['export/runtime'] + ')' if 'export/runtime' in r else ''}\n"
                f"  {metric}: {accs}\n  prune time {r['time/prune_s']:.1f}s, params {r['model/parameters'] / 1e6:.2f}M, "
                f"non-zero {r['model/nonzero_parameters'] / 1e6:.2f}M -> {r['pruned_dir']}")
    return (f"constraint {r['constraint']:.2f}: MAC ratio {r['prune/mac_ratio']:.3f}, heads {r['prune/heads_per_layer']}, "
            f"FFN {r['prune/ffn_per_layer']}\n  {metric}: {accs}\n  prune time {r['time/prune_s']:.1f}s, "
            f"params {r['model/parameters'] / 1e6:.2f}M (dense {r['model/parameters_dense'] / 1e6:.2f}M) -> {r['pruned_dir']}")
