"""The steps after a pruned variant is saved: ONNX export and the LoadGen benchmark, as per-variant hooks.

``prune.py`` calls each callback's ``on_variant_saved(run_dir, checkpoint_dir, task, results) -> dict`` once the
pruned checkpoint is on disk and merges the returned entries into the job's results.json (their keys are
``bertprune.results``'s). ``default_callbacks`` builds the ones ``export=true`` / ``bench=true`` switch on.
They are jobs-layer code (they run ``jobs.export`` and ``jobs.bench``'s work) and call down into ``onnx`` and
``mlperf``; nothing below the jobs imports them.

``ExportCallback``: ``<run_dir>/onnx`` (+ ``<run_dir>/onnx_int8``), and the dense teacher once per sweep.
``LoadgenCallback``: LoadGen on ``<run_dir>/onnx`` (and ``onnx_int8``) into ``<run_dir>/bench``;
``bench/<scenario>/{throughput,valid,latency_p90_ms,latency_p99_ms,<metric>}`` for the FP32 export,
``bench_int8/<scenario>/...`` for the INT8 one (scenario = config-group name, e.g. offline). It runs after
ExportCallback (it needs the exported folders).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

from omegaconf import OmegaConf

from bertprune import results as R
from bertprune.jobs.bench import run_bench
from bertprune.jobs.export import dense_dir
from bertprune.onnx import variants
from bertprune.onnx.deepsparse_runtime import check_runtime, check_seq_lens
from bertprune.onnx.export import DEFAULT_OPSET, export_variant
from bertprune.onnx.parity import PARITY_BATCH_SIZES, PARITY_TOLERANCE
from bertprune.scenarios import resolve_modes, resolve_scenarios
from bertprune.tasks.data import Task

log = logging.getLogger(__name__)


class ExportCallback:
    """Export the job's pruned checkpoint to ``<run_dir>/onnx`` (+ ``<run_dir>/onnx_int8``).

    export_teacher: also export the dense teacher, to ``<run_dir>/../dense/<teacher key>/onnx``
    (``bertprune.jobs.export.dense_dir``: under the sweep folder for ``-m`` runs), so
    ``python -m benchmarks.export_speed`` finds its reference. The folder is keyed on the teacher's
    weights, so runs from different teachers never share one; an export there is reused when it was made
    for the same task and MAC sequence length, else replaced.
    """

    def __init__(self, quantize: str | None = None, opset: int = DEFAULT_OPSET, device: str = "auto",
                 parity_tolerance: float = PARITY_TOLERANCE, parity_batch_sizes=PARITY_BATCH_SIZES,
                 max_eval_samples: int | None = None, export_teacher: bool = True):
        self.kwargs = dict(quantize=quantize, opset=opset, device=device, parity_tolerance=parity_tolerance,
                           parity_batch_sizes=list(parity_batch_sizes), max_eval_samples=max_eval_samples)
        self.export_teacher = export_teacher

    def on_variant_saved(self, run_dir: Path, checkpoint_dir: Path, task: Task, results: dict) -> dict:
        run_dir, checkpoint_dir = Path(run_dir), Path(checkpoint_dir)
        out = export_variant(checkpoint_dir, run_dir / "onnx", task, **self.kwargs)
        fp32 = out["fp32"]
        extra = R.export_entries(fp32, out["int8"])
        teacher = results.get("teacher") or fp32.get("teacher")
        if self.export_teacher and teacher and Path(teacher).is_dir():  # a hub name has no folder to export
            dense = self._export_teacher(Path(teacher), run_dir.parent, task, fp32["mac_seq_len"])
            extra[R.EXPORT_DENSE_ONNX_PATH] = dense["path"]
        return extra

    def _export_teacher(self, teacher: Path, root: Path, task: Task, mac_seq_len: float) -> dict:
        out_dir = dense_dir(root, teacher)
        existing = variants.complete_variant(out_dir)
        if (existing is not None and existing.meta.get("task_config") == asdict(task)
                and existing.meta.get("mac_seq_len") == mac_seq_len
                and (self.kwargs["quantize"] is None or variants.complete_variant(variants.int8_dir(out_dir)) is not None)):
            return {**existing.meta, "path": str(existing.onnx)}
        log.info("exporting the dense teacher %s -> %s", teacher, out_dir)
        return export_variant(teacher, out_dir, task, mac_seq_len=mac_seq_len, **self.kwargs)["fp32"]


class LoadgenCallback:
    """scenarios: names (``["offline", "single_stream"]``) or the composed ``scenario`` config group
    ({name: settings}); mode: performance | accuracy | both; min_duration_ms: overrides every
    scenario's (short local runs inside a sweep); other arguments as ``bertprune.jobs.bench.run_bench``."""

    def __init__(self, scenarios=("offline", "single_stream"), mode: str = "performance", device: str = "auto",
                 submission: bool = False, min_duration_ms: int | None = None, timeout_s: float | None = None,
                 output_subdir: str = "bench", runtime: str = "onnxruntime", deepsparse_python: str | None = None,
                 deepsparse_seq_lens=None):
        check_runtime(runtime, deepsparse_python, device)  # before the job prunes anything
        self.runtime, self.deepsparse_python, self.deepsparse_seq_lens = runtime, deepsparse_python, deepsparse_seq_lens

        self.scenarios = resolve_scenarios(dict(scenarios) if isinstance(scenarios, Mapping) else list(scenarios))
        if min_duration_ms is not None:
            for s in self.scenarios:
                s.min_duration_ms = int(min_duration_ms)
        self.modes = resolve_modes(mode)
        self.mode, self.device, self.submission = mode, device, submission
        self.timeout_s, self.output_subdir = timeout_s, output_subdir

    def on_variant_saved(self, run_dir, checkpoint_dir, task, results: dict | None = None) -> dict:
        run_dir = Path(run_dir)
        task = task if isinstance(task, Task) else Task.from_config(task)
        try:  # the job's own exports: <run_dir>/onnx and <run_dir>/onnx_int8
            sources = [v.onnx for v in variants.discover_variants(run_dir)]
        except FileNotFoundError:
            log.warning("LoadgenCallback: no exported model under %s/onnx; run ExportCallback first", run_dir)
            return {}
        summary = run_bench(sources, task, self.scenarios, mode=self.mode, output_dir=run_dir / self.output_subdir,
                            submission=self.submission, device=self.device, tokenizer=checkpoint_dir,
                            timeout_s=self.timeout_s, write_back=False, runtime=self.runtime,
                            deepsparse_python=self.deepsparse_python,
                            deepsparse_seq_lens=self.deepsparse_seq_lens)  # the job logs them on its live run
        return {R.BENCH_SUMMARY: summary.files.get("json"), R.BENCH_COMPLETE: summary.complete,
                **R.loadgen_entries(summary.rows, self.scenarios, self.modes)}


def default_callbacks(cfg, task: Task | None = None) -> list:
    """Export / LoadGen callbacks switched on by ``export=true`` / ``bench=true``; ``bench_options`` are
    LoadgenCallback's arguments, checked here (a wrong key or value is one error before the job prunes; with
    ``task``, DeepSparse's lengths against its max_length too)."""
    cbs = []
    if cfg.get("export", False):
        quantize = cfg.get("quantize")
        cbs.append(ExportCallback(quantize=None if quantize is None else str(quantize),
                                  device=str(cfg.hardware.runtime_device)))
    if cfg.get("bench", False):
        # typed and closed by the schema (bertprune.config.BenchOptions): a wrong key or value fails composition
        options = (OmegaConf.to_container(cfg.bench_options, resolve=True, enum_to_str=True)
                   if cfg.get("bench_options") else {})
        if not cfg.get("export", False):
            raise ValueError("bench=true needs export=true: LoadGen runs the job's exported ONNX variant")
        cb = LoadgenCallback(**options)
        if task is not None:
            check_seq_lens(cb.deepsparse_seq_lens, task.max_length, task.task_kind.fixed_seq_len, cb.runtime)
        cbs.append(cb)
    return cbs
