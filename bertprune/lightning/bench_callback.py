"""LoadGen benchmark of each pruned variant as prune.py saves it (next to ``ExportCallback``).

``LoadgenCallback.on_variant_saved(run_dir, checkpoint_dir, task, results) -> dict`` benchmarks
``run_dir/onnx`` (and ``run_dir/onnx_int8`` if present) with ``bertprune.jobs.bench.run_bench`` into
``run_dir/bench`` and returns the entries to merge into the job's results:
``bench/<scenario>/{throughput,valid,latency_p90_ms,latency_p99_ms,accuracy}`` for the FP32 export
and ``bench_int8/<scenario>/...`` for the INT8 one (scenario = config-group name, e.g. offline).
Run it after ExportCallback (it needs the exported folders).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

log = logging.getLogger(__name__)


class LoadgenCallback:
    """scenarios: names (``["offline", "single_stream"]``) or the composed ``scenario`` config group
    ({name: settings}); mode: performance | accuracy | both; min_duration_ms: overrides every
    scenario's (short local runs inside a sweep); other arguments as ``run_bench``."""

    def __init__(self, scenarios=("offline", "single_stream"), mode: str = "performance", device: str = "auto",
                 submission: bool = False, min_duration_ms: int | None = None, timeout_s: float | None = None,
                 output_subdir: str = "bench", runtime: str = "onnxruntime", deepsparse_python: str | None = None,
                 deepsparse_seq_lens=None):
        from bertprune.mlperf.scenarios import resolve_modes, resolve_scenarios
        from bertprune.onnx.deepsparse_runtime import check_runtime

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
        from bertprune.jobs.bench import run_bench
        from bertprune.onnx import variants
        from bertprune.tasks.data import Task

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
        from bertprune.jobs.bench import loadgen_metrics

        return {"bench/summary": summary.files.get("json"), "bench/complete": summary.complete,
                **loadgen_metrics(summary.rows, self.scenarios, self.modes)}
