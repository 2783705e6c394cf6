"""results.json: the keys a prune job records, defined here once.

A prune job writes one flat JSON object per run (``results.json``), also logged to W&B / CSV and read back by the
sweep summary, the model card, bench.py's write-back, the notebooks and the MLC scripts. Every key is named
here — as a constant, or by a function for the families of keys (``eval_key(metric, stage)``,
``time_key(step)``, ``export_key(variant, what)``, ``method_key(option)`` ...) — and ``PruneRecord`` is the
typed record whose ``flat()`` is that object. Other modules import the names; none spells a key itself.

Families (the prefix says where the number comes from):
  ``prune/``: the structure kept (MAC ratio, heads and FFN widths per layer, parity of pruned vs masked)
  ``eval/<metric>_<stage>``: the task metric at each stage (dense, search, rearrange, tune, iterative,
      unstructured, pruned_model); ``eval/<metric>`` the final stage's
  ``model/``: parameter counts and file sizes; ``time/<step>_s``: wall seconds per step, ``time/prune_s`` their
      pruning part; ``method``, ``method/<option>``: the method and its options; ``export/``: the ONNX exports;
  ``latency/``, ``unstructured/``, ``guard/``, ``reconstruct/``: the optional steps; ``wandb/``: where the run was logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bertprune.tasks.metrics import metric_format

RESULTS_FILE = "results.json"

# ---- the run and its structure
CONSTRAINT = "constraint"
METHOD = "method"
METRIC = "metric"
TASK = "task"
MODEL = "model"
TEACHER = "teacher"
PRUNED_DIR = "pruned_dir"
NUM_SAMPLES = "num_samples"
BATCH_SIZE = "batch_size"
SEED = "seed"
STRUCTURED = "structured"
TORCH_THREADS = "hardware/torch_threads"
MAC_RATIO = "prune/mac_ratio"
MAC_SEQ_LEN = "prune/mac_seq_len"
HEADS_PER_LAYER = "prune/heads_per_layer"
FFN_PER_LAYER = "prune/ffn_per_layer"
KEPT_HEADS = "prune/kept_heads"
KEPT_NEURONS = "prune/kept_neurons"
PARITY = "prune/parity_max_abs_diff"
COST = "prune/cost"
LATENCY_RATIO = "prune/latency_ratio"
# ---- the model
PARAMETERS = "model/parameters"
PARAMETERS_DENSE = "model/parameters_dense"
NONZERO_PARAMETERS = "model/nonzero_parameters"
FILE_SIZE = "model/file_size"
GZIP_SIZE = "model/gzip_size"
TUNE_FALLBACK_LAYERS = "tune/fallback_layers"
# ---- times
PRUNE_S = "time/prune_s"
TOTAL_S = "time/total_s"
# ---- optional steps' summaries
GUARD_ROLLBACKS = "guard/rollbacks"
GUARD_ROLLED_BACK_LAYERS = "guard/rolled_back_layers"
RECONSTRUCT_FITTED = "reconstruct/fitted"
RECONSTRUCT_ROLLED_BACK = "reconstruct/rolled_back"
RECONSTRUCT_HELD_OUT = "reconstruct/held_out_samples"
EXPORT_RUNTIME = "export/runtime"
EXPORT_DENSE_ONNX_PATH = "export/dense_onnx_path"
EXPORT_PARITY = "export/parity_max_abs_diff"
EXPORT_PROVIDER = "export/provider"
EXPORT_TIME = "export/time_s"
# ---- where the run was logged (bench.py writes LoadGen's results back there)
WANDB_RUN_ID = "wandb/run_id"
WANDB_PROJECT = "wandb/project"
WANDB_ENTITY = "wandb/entity"
WANDB_GROUP = "wandb/group"
WANDB_DIR = "wandb/dir"
WANDB_MODE = "wandb/mode"
BENCH_SUMMARY = "bench/summary"  # written back by bench.py: its summary.json
BENCH_COMPLETE = "bench/complete"

# the stages of eval/<metric>_<stage>, in pipeline order; "pruned_model" = the physically pruned model
STAGES = ("dense", "search", "rearrange", "tune", "iterative", "unstructured")
PRUNED_MODEL = "pruned_model"


def eval_key(metric: str, stage: str | None = None) -> str:
    """``eval/<metric>`` (the final stage's value) or ``eval/<metric>_<stage>``."""
    return f"eval/{metric}" if stage is None else f"eval/{metric}_{stage}"


def metric_of_key(key: str) -> str | None:
    """The metric of a dense-model key ``eval/<metric>_dense`` (None for any other key)."""
    m = re.fullmatch(r"eval/(\w+?)_dense", key)
    return m.group(1) if m else None


def is_final_eval_key(key: str) -> bool:
    """``eval/<metric>``: a final-stage metric (no stage suffix)."""
    return key.startswith("eval/") and key.count("_") == 0


def time_key(step: str) -> str:
    return f"time/{step}_s"


def method_key(option: str) -> str:
    return f"method/{option}"


def export_key(variant: str, what: str) -> str:
    """``export/<variant>_<what>``: variant ``onnx`` / ``int8`` / ``pytorch``; what ``path``, ``file_size``,
    ``parity_max_abs_diff``, a metric name ..."""
    return f"export/{variant}_{what}"

def export_entries(fp32: dict, int8: dict | None) -> dict:
    """A job's results entries of its ONNX export (``bertprune.onnx.export.export_variant``'s ``fp32`` / ``int8``
    reports): ``export/onnx_path``, ``export/onnx_<metric>``, ``export/pytorch_<metric>`` (metric named for what it
    is: accuracy, mse, f1 ...), parity, provider, file size, time; ``export/int8_*`` for the INT8 variant."""
    metric = fp32["metric"]
    out = {export_key("onnx", "path"): fp32["path"], export_key("onnx", metric): fp32["metric_value"].get("onnx"),
           export_key("pytorch", metric): fp32["metric_value"].get("pytorch"),
           EXPORT_PARITY: fp32["parity_max_abs_diff"], EXPORT_PROVIDER: fp32["provider"],
           export_key("onnx", "file_size"): fp32["file_size"], EXPORT_TIME: fp32["export_time_s"]}
    if int8 is not None:
        out.update({export_key("int8", "path"): int8["path"], export_key("int8", metric): int8["metric_value"].get("onnx"),
                    export_key("int8", "file_size"): int8["file_size"],
                    export_key("int8", "parity_max_abs_diff"): int8["parity_max_abs_diff"]})
    return out


def bench_key(precision: str, scenario: str, what: str) -> str:
    """``bench/<scenario>/<what>`` for the FP32 export, ``bench_<precision>/<scenario>/<what>`` for the others
    (scenario = config-group name, e.g. offline)."""
    prefix = f"bench_{precision}" if precision != "fp32" else "bench"
    return f"{prefix}/{scenario}/{what}"


def loadgen_entries(rows, scenarios, modes) -> dict:
    """A job's results entries of its LoadGen rows (``bertprune.mlperf.report`` rows): ``bench_key(...)`` for
    valid, throughput, latency_p90_ms, latency_p99_ms (performance mode) and the metric (accuracy mode);
    ``.../error`` for a run that did not finish."""
    names = {s.loadgen: s.name for s in scenarios}
    out: dict = {}
    for row in rows:
        key = lambda what: bench_key(row.precision, names[row.scenario], what)  # noqa: E731
        if "performance" in modes:
            out[key("valid")] = row.valid == "VALID"
            out[key("throughput")] = row.throughput
            out[key("latency_p90_ms")] = row.latency_p90_ms
            out[key("latency_p99_ms")] = row.latency_p99_ms
        if "accuracy" in modes:
            out[key(row.metric)] = row.metric_value  # bench/offline/accuracy, .../mse, .../f1
        if row.status != "ok":
            out[key("error")] = row.error
    return out


def unstructured_key(name: str) -> str:
    return f"unstructured/{name}"


def latency_key(name: str) -> str:
    return f"latency/{name}"


def guard_loss_key(stage: str) -> str:
    return f"guard/loss_{stage}"


def stage_metrics(results: dict, metric: str) -> dict[str, float]:
    """``{stage: value}`` of ``eval/<metric>_<stage>`` in pipeline order (the stages the run has)."""
    return {s: results[eval_key(metric, s)] for s in STAGES if eval_key(metric, s) in results}


@dataclass
class PruneRecord:
    """What a prune job measured, typed; ``flat()`` is results.json's object (key order as written)."""

    constraint: float | None  # None: no structured step (structured=false)
    mac_ratio: float
    mac_seq_len: float
    heads_per_layer: list[int]
    ffn_per_layer: list[int]
    metric: str  # the task's primary metric
    metric_names: list[str]  # every metric of the task, the primary first
    dense: dict[str, float]  # every metric of the dense teacher
    stages: dict[str, dict[str, float]]  # stage -> every metric measured there (the primary at least)
    pruned_model: dict[str, float]  # the physically pruned model's metrics
    parity: float | None
    parameters: int
    parameters_dense: int
    file_size: int
    tune_fallback_layers: int
    timings: dict[str, float]
    prune_s: float
    num_samples: int
    batch_size: int
    seed: int
    task: str
    model: str
    torch_threads: int
    pruned_dir: str
    teacher: str
    sections: dict[str, Any] = field(default_factory=dict)  # the optional steps' entries (their key functions)

    def flat(self) -> dict:
        m, final = self.metric, list(self.stages)[-1]
        out = {CONSTRAINT: self.constraint, MAC_RATIO: self.mac_ratio, MAC_SEQ_LEN: self.mac_seq_len,
               HEADS_PER_LAYER: self.heads_per_layer, FFN_PER_LAYER: self.ffn_per_layer,
               KEPT_HEADS: sum(self.heads_per_layer), KEPT_NEURONS: sum(self.ffn_per_layer),
               eval_key(m, "dense"): self.dense[m],
               **{eval_key(m, s): v[m] for s, v in self.stages.items()},
               eval_key(m): self.stages[final][m], eval_key(m, PRUNED_MODEL): self.pruned_model[m],
               # the task's other metrics (MRPC's accuracy next to its F1, SQuAD's exact match ...) at every stage
               **{eval_key(o, which): v[o] for o in self.metric_names[1:]
                  for which, v in (("dense", self.dense), *self.stages.items(), (PRUNED_MODEL, self.pruned_model))
                  if o in v}}
        if self.parity is not None:
            out[PARITY] = self.parity
        out.update({PARAMETERS: self.parameters, PARAMETERS_DENSE: self.parameters_dense, FILE_SIZE: self.file_size,
                    TUNE_FALLBACK_LAYERS: self.tune_fallback_layers,
                    **{time_key(k): round(v, 3) for k, v in self.timings.items()}, PRUNE_S: round(self.prune_s, 3),
                    NUM_SAMPLES: self.num_samples, BATCH_SIZE: self.batch_size, SEED: self.seed, TASK: self.task,
                    MODEL: self.model, TORCH_THREADS: self.torch_threads, METRIC: self.metric,
                    PRUNED_DIR: self.pruned_dir, TEACHER: self.teacher})
        out.update(self.sections)
        return out


def guard_entries(report) -> dict:
    """``guard/*``: held-out calibration loss per stage and each per-layer rollback (``core.guard.GuardReport``)."""
    return {**{guard_loss_key(k): v for k, v in report.losses.items()},
            GUARD_ROLLBACKS: report.rollbacks, GUARD_ROLLED_BACK_LAYERS: len(report.rollbacks)}


def method_entries(name: str, options: dict) -> dict:
    return {METHOD: name, **{method_key(k): v for k, v in options.items()}}


def reconstruct_entries(report, held_out_samples: int) -> dict:
    """``reconstruct/*``: each refit, kept or rolled back on held-out calibration tokens."""
    return {RECONSTRUCT_FITTED: sum(e["status"] == "fitted" for e in report.entries),
            RECONSTRUCT_ROLLED_BACK: [{"layer": e["layer"], "part": e["part"]} for e in report.rollbacks],
            RECONSTRUCT_HELD_OUT: held_out_samples}


def study_stages(results: dict, metric: str, dense: dict, masked: dict, stage_metrics: dict, pruned: dict
                 ) -> list[tuple[str, dict]]:
    """The stages of a job in order, each with the metrics measured there: dense, the pipeline's stages
    (every task metric where the masked model was evaluated), the physically pruned model, its ONNX exports."""
    stages = [("dense", dense)] + [(s, masked.get(s, {metric: v})) for s, v in stage_metrics.items()]
    stages.append(("pruned", pruned))
    for key, name in (("onnx", "onnx"), ("int8", "onnx_int8")):
        if results.get(export_key(key, metric)) is not None:
            stages.append((name, {metric: results[export_key(key, metric)]}))
    return stages


def latency_entries(cost_name: str, result, table: dict, settings, cost_s: float) -> dict:
    """``latency/*`` of a latency-searched job: predicted latency and the lookup table's settings."""
    return {
        COST: cost_name, LATENCY_RATIO: result.cost_ratio,
        latency_key("predicted_ms"): result.cost_total, latency_key("dense_predicted_ms"): result.dense_cost_total,
        latency_key("runtime"): table["runtime"], latency_key("provider"): table["provider"],
        latency_key("device_name"): table["device_name"], latency_key("threads"): settings.threads,
        latency_key("scenario"): settings.scenario, latency_key("batch_size"): settings.batch_size,
        latency_key("seq_len"): settings.seq_len, latency_key("lut_points"): settings.points,
        latency_key("lut_cached"): bool(table.get("cached")), latency_key("lut_measure_s"): table.get("measure_s"),
        latency_key("lut_scale"): table.get("scale"), time_key("latency_lut"): round(cost_s, 3),
    }


def measured_latency_entries(ms: dict | None, on: str, drift: float = 1.0, rescaled: float = 0.0,
                             predicted_ms: float = 0.0, seconds: float = 0.0) -> dict:
    """``latency/measured_*``: the served model timed with the table's settings (``ms`` None: not measured)."""
    if ms is None:
        return {latency_key("measured_ms"): None, latency_key("dense_measured_ms"): None, latency_key("measured_on"): on}
    return {latency_key("measured_ms"): ms["ms"], latency_key("dense_measured_ms"): ms["dense_ms"],
            latency_key("measured_ratio"): ms["ms"] / ms["dense_ms"],
            latency_key("predicted_over_measured"): predicted_ms / ms["ms"],
            latency_key("dense_measured_over_table"): drift, latency_key("predicted_rescaled_ms"): rescaled,
            latency_key("predicted_rescaled_over_measured"): rescaled / ms["ms"],
            latency_key("measured_on"): on, time_key("latency_measure"): round(seconds, 3)}


def unstructured_entries(options, report, num_grads: int, grad_batch_size: int, memory: int) -> dict:
    """``unstructured/*``: the unstructured step's settings and what it pruned (``core.obs``)."""
    u = unstructured_key
    return {u("method"): options.method, u("pattern"): options.pattern, u("target_sparsity"): options.sparsity,
            u("sparsity"): report.sparsity, u("pruned_weights"): report.pruned, u("linear_weights"): report.total,
            **({u("num_grads"): int(num_grads), u("grad_batch_size"): int(grad_batch_size),
                u("fisher_block_size"): options.fisher_block_size, u("damp"): options.damp,
                u("num_recomputations"): options.num_recomputations, u("schedule"): options.schedule,
                u("memory_bytes"): memory, u("steps"): report.steps} if options.method == "obs" else {})}


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
