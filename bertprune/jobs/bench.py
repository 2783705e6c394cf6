"""Benchmark exported variants with MLPerf LoadGen: ``bench(cfg)`` (Hydra) / ``run_bench(...)`` (plain).

For each variant x scenario x mode one LoadGen run in its own process (see ``bertprune.mlperf.harness``),
logs under ``<output_dir>/<variant>/<Scenario>/<mode>/``. Then, in ``output_dir``:

* ``summary.csv`` / ``summary.md`` / ``summary.json`` — one row per variant x scenario; a run that
  failed or never ran (interrupted) is a row with status ``failed`` / ``interrupted``, never dropped.
  ``summary.json`` is written last and says ``"complete": true`` only when every run finished.
* ``bench.png`` — one panel per scenario: accuracy vs that scenario's own metric (Offline/Server
  throughput in samples/s, SingleStream p90 / MultiStream p99 latency in ms); failed runs listed, INVALID hollow.
* ``submission/open/<submitter>/`` — an MLPerf Inference **v6.1** open-division tree (LoadGen 6.0.17
  carries the v6.1 RNG seeds: check it with the submission checker's ``--version v6.1``):
  ``results/<system>/<model>/<Scenario>/{performance/run_1, accuracy, measurements.json, user.conf}``,
  ``systems/<system>.json``, ``src/README.md`` and ``model_mapping.json`` (custom name -> bert-99).
  Accuracy logs are truncated and hashed into ``accuracy.txt`` as MLCommons' truncate_accuracy_log.py
  does (the full logs stay in the run folders).

``bench`` exits non-zero (``python bench.py``) when any run failed; the summary is still written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bertprune.mlperf.harness as harness
from bertprune.mlperf.harness import RunSpec, ScenarioSettings, Variant

log = logging.getLogger(__name__)

SUMMARY_FILES = ("summary.json", "summary.csv", "summary.md", "bench.png")
LOADGEN_LOGS = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
DIVISION = "open"
BENCHMARK = "bert-99"  # the closed-division model class every variant maps to in model_mapping.json
# The MLPerf Inference round whose RNG seeds LoadGen logs; the submission checker must be run with this
# --version. Identified from the seeds in the runs' logs (mlperf.conf's qsl/sample_index/schedule seeds).
MLPERF_SEEDS = {"v6.1": {"qsl_rng_seed": 2085463073848966840, "sample_index_rng_seed": 2747215439041700203,
                         "schedule_rng_seed": 16159082839903944936}}
# truncate_accuracy_log.py: logs of VIEWABLE_SIZE bytes or more keep their first and last VIEWABLE_SIZE bytes
ACCURACY_LOG_VIEWABLE = 4096
COLUMNS = ["variant", "precision", "mac_ratio", "scenario", "status", "valid", "throughput", "latency_p90_ms",
           "latency_p99_ms", "accuracy", "direct_accuracy", "metric", "file_size_mb", "onnx_sha256", "error"]


@dataclass
class BenchRow:
    """One variant x scenario: its performance run and its accuracy run."""

    variant: str
    precision: str
    mac_ratio: float | None
    scenario: str
    status: str = "ok"  # ok | failed | interrupted
    valid: str = ""  # VALID | INVALID | failed | "" (no performance run)
    throughput: float | None = None  # samples/s
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    accuracy: float | None = None  # LoadGen accuracy mode, task metric (accuracy % / F1 / MSE)
    direct_accuracy: float | None = None  # same ONNX, same features, no LoadGen
    metric: str = ""
    file_size_mb: float | None = None
    onnx_sha256: str = ""  # of the file the runs loaded (each run hashes it and checks it against its export)
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.status != "ok"


@dataclass
class BenchSummary:
    rows: list[BenchRow]
    complete: bool
    output_dir: Path
    runs: list[dict] = field(default_factory=list)
    files: dict = field(default_factory=dict)
    mlperf_version: str | None = None

    @property
    def failed_runs(self) -> list[dict]:
        return [r for r in self.runs if r.get("status") != "ok"]

    def to_markdown(self) -> str:
        return markdown_table(self.rows, self.complete)


# ----------------------------------------------------------------------------------------------
# Entry points


def bench(cfg) -> BenchSummary:
    """Hydra entry: ``cfg`` composed from ``conf/bench.yaml`` (source, task, scenario group, mode …)."""
    from omegaconf import OmegaConf

    from bertprune.tasks.data import Task

    task = Task.from_config(cfg.task)
    scenarios = OmegaConf.to_container(cfg.scenario, resolve=True) if cfg.get("scenario") else None
    return run_bench(cfg.source, task, scenarios, mode=cfg.mode, output_dir=cfg.output_dir,
                     submission=bool(cfg.submission), device=cfg.hardware.runtime_device, tokenizer=cfg.get("tokenizer"),
                     system_name=cfg.get("system_name"), submitter=cfg.get("submitter") or "bertprune",
                     timeout_s=cfg.get("run_timeout_s"))


@dataclass
class _Plan:
    variant: Variant
    signature: harness.Signature
    tokenizer: str


def plan_bench(source, task, scenarios, mode: str, tokenizer=None, device: str = "auto"
               ) -> tuple[list[_Plan], list[ScenarioSettings], list[str]]:
    """Validate everything before anything runs: modes, scenarios, the device, every variant's ONNX
    interface against the task and its file against the sha256 its export recorded, and a tokenizer for
    each variant (``tokenizer`` given: it wins over the sidecars')."""
    from bertprune.onnx.runtime import choose_providers

    modes = harness.resolve_modes(mode)
    scen = harness.resolve_scenarios(scenarios)
    choose_providers(device)  # device=cuda without a usable GPU: one error here, not one per run
    plans = []
    for v in harness.discover_variants(source):
        sig = harness.check_variant(v, task.kind, task.num_labels, task.max_length, task.name)
        v.check_sha256()
        if tokenizer:
            tok = Path(tokenizer)
            if not tok.exists():
                raise FileNotFoundError(f"tokenizer={tokenizer}: folder not found; pass the folder holding the "
                                        "variants' tokenizer files (or leave tokenizer unset to use the sidecars')")
        elif v.tokenizer is None:
            raise ValueError(f"variant {v.name} ({v.onnx}) names no tokenizer (no model.json sidecar with "
                             "'tokenizer'); pass tokenizer=/path/to/tokenizer_folder")
        else:
            tok = v.tokenizer
            if not tok.exists():
                tried = ", ".join(str(c) for c in v.tokenizer_candidates)
                raise FileNotFoundError(f"variant {v.name}: its sidecar's tokenizer folder is gone (tried {tried}); "
                                        "pass tokenizer=/path/to/tokenizer_folder")
        plans.append(_Plan(v, sig, str(tok)))
    return plans, scen, modes


def run_bench(source, task, scenarios=("offline", "single_stream"), mode: str = "both", output_dir=".",
              submission: bool = False, device: str = "auto", tokenizer=None, system_name: str | None = None,
              submitter: str = "bertprune", timeout_s: float | None = None, retries: int = 1) -> BenchSummary:
    """Benchmark every variant under ``source`` (a .onnx, a variant folder, a sweep folder or a list).

    task: a ``bertprune.tasks.data.Task``. scenarios: names, a {name: settings} mapping or ScenarioSettings.
    tokenizer: used for variants whose sidecar names none. Returns the summary (also written to disk).
    """
    plans, scen, modes = plan_bench(source, task, scenarios, mode, tokenizer, device)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in SUMMARY_FILES:  # a stale summary must never pass for this run's
        (out / name).unlink(missing_ok=True)
    features = {t: str(harness.prepare_features(task, t)) for t in sorted({p.tokenizer for p in plans})}

    runs: dict[tuple[str, str, str], dict] = {}
    interrupted = False
    todo = [(p, s, m) for p in plans for s in scen for m in modes]
    try:
        for i, (p, s, m) in enumerate(todo, 1):
            log.info("[%d/%d] %s %s %s", i, len(todo), p.variant.name, s.loadgen, m)
            spec = RunSpec(variant=p.variant.name, onnx=str(p.variant.onnx), kind=task.kind,
                           num_labels=task.num_labels, seq_len=p.signature.seq_len, features=features[p.tokenizer],
                           scenario=asdict(s), mode=m, out_dir=str(out / _safe(p.variant.name) / s.loadgen / m),
                           device=device, submission=submission, onnx_sha256=p.variant.sha256)
            result = harness.run_isolated(spec, timeout_s=timeout_s, retries=retries)
            runs[(p.variant.name, s.loadgen, m)] = result
            if result.get("status") != "ok":
                log.error("%s %s %s failed: %s", p.variant.name, s.loadgen, m, result.get("error"))
    except KeyboardInterrupt:
        interrupted = True
        log.error("interrupted: unfinished runs are marked 'interrupted' and the summary as incomplete")

    rows = build_rows(plans, scen, modes, runs, task.kind)
    complete = not interrupted and all(r.status == "ok" for r in rows)
    version = mlperf_version(runs.values())
    summary = BenchSummary(rows=rows, complete=complete, output_dir=out, runs=list(runs.values()),
                           mlperf_version=version)
    summary.files["csv"] = _write(out / "summary.csv", csv_table(rows))
    summary.files["md"] = _write(out / "summary.md", markdown_table(rows, complete))
    summary.files["plot"] = plot(rows, out / "bench.png")
    summary.files["submission"] = str(write_submission(out / "submission", plans, scen, runs, task,
                                                       system_name=system_name, submitter=submitter,
                                                       submission=submission, version=version))
    summary.files["json"] = _write(out / "summary.json", json.dumps(
        {"complete": complete, "interrupted": interrupted, "task": task.name, "modes": modes,
         "scenarios": [s.loadgen for s in scen], "submission": submission, "mlperf_version": version,
         "rows": [asdict(r) for r in rows], "runs": list(runs.values()), "files": summary.files},
        indent=2, default=str))
    print(summary.to_markdown())
    if interrupted:
        raise KeyboardInterrupt
    return summary


# ----------------------------------------------------------------------------------------------
# Rows and tables


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@#-]+", "_", name)


def build_rows(plans, scenarios, modes, runs: dict, kind: str) -> list[BenchRow]:
    metric = harness.primary_metric(kind)
    rows = []
    for p in plans:
        v = p.variant
        for s in scenarios:
            row = BenchRow(variant=v.name, precision=v.precision, mac_ratio=v.mac_ratio, scenario=s.loadgen,
                           metric=metric, file_size_mb=round(v.file_size / 2**20, 3))
            errors = []
            for m in modes:
                r = runs.get((v.name, s.loadgen, m))
                if r is None:
                    row.status = "interrupted" if row.status == "ok" else row.status
                    errors.append(f"{m}: did not run (interrupted)")
                    continue
                if r.get("status") != "ok":
                    row.status = "failed"
                    errors.append(f"{m}: {r.get('error', 'failed')}")
                    continue
                row.onnx_sha256 = row.onnx_sha256 or r.get("onnx_sha256") or ""
                sm = r.get("summary") or {}
                if m == "performance":
                    row.valid = "VALID" if sm.get("valid") else "INVALID"
                    row.throughput = sm.get("throughput")
                    row.latency_p90_ms = sm.get("latency_p90_ms")
                    row.latency_p99_ms = sm.get("latency_p99_ms")
                    if not sm.get("valid"):
                        errors.append("INVALID: " + "; ".join(sm.get("reasons", [])))
                else:
                    acc = r.get("accuracy") or {}
                    row.accuracy = (acc.get("loadgen") or {}).get(metric)
                    row.direct_accuracy = (acc.get("direct") or {}).get(metric)
            if "performance" in modes and row.status != "ok" and not row.valid:
                row.valid = row.status
            row.error = " | ".join(errors)
            rows.append(row)
    return rows


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"
    return str(value)


def csv_table(rows: list[BenchRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in rows:
        d = asdict(r)
        w.writerow(["" if d[c] is None else d[c] for c in COLUMNS])
    return buf.getvalue()


def markdown_table(rows: list[BenchRow], complete: bool = True) -> str:
    head = ["variant", "precision", "mac_ratio", "scenario", "valid", "throughput (samples/s)", "p90 (ms)",
            "p99 (ms)", "accuracy (LoadGen)", "accuracy (direct)", "size (MB)", "status"]
    lines = [] if complete else ["**INCOMPLETE: some runs failed or never ran (see status/error).**", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.variant, r.precision, r.mac_ratio, r.scenario, r.valid, r.throughput, r.latency_p90_ms,
                 r.latency_p99_ms, r.accuracy, r.direct_accuracy, r.file_size_mb, r.status]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    if rows:
        lines.append("")
        lines.append(f"accuracy columns: task metric '{rows[0].metric}' from LoadGen's accuracy log / from a direct "
                     "ONNX Runtime evaluation of the same features (they must agree)")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> str:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return str(path)


# scenario -> (the BenchRow field bench.png plots for it, its axis label with units)
PLOT_METRICS = {"Offline": ("throughput", "Offline throughput (samples/s)"),
                "Server": ("throughput", "Server completed throughput (samples/s)"),
                "SingleStream": ("latency_p90_ms", "SingleStream p90 latency (ms)"),
                "MultiStream": ("latency_p99_ms", "MultiStream p99 query latency (ms)")}
METRIC_UNITS = {"accuracy": "accuracy (%)", "f1": "F1 (%)", "mse": "MSE"}


def plot_panels(rows: list[BenchRow]) -> list[dict]:
    """What bench.png shows: one panel per scenario (row order), never mixing scenarios.

    Each: {"scenario", "x_label", "y_label", "points": [(variant, x, y, precision, valid)], "failed": [..],
    "missing": [..]}. x is the scenario's own metric from its own run (``PLOT_METRICS``); y the variant's
    accuracy (its LoadGen accuracy run, else the direct evaluation, else any scenario's: the model is the
    same), or its MAC ratio when no accuracy was measured at all. A failed or interrupted run is listed in
    "failed", a finished one without a value in "missing": neither is placed.
    """
    if not rows:
        return []
    accs = {}
    for r in rows:
        a = r.accuracy if r.accuracy is not None else r.direct_accuracy
        if a is not None:
            accs.setdefault(r.variant, a)
    use_acc = bool(accs)
    y_label = METRIC_UNITS.get(rows[0].metric, rows[0].metric) if use_acc else "MACs kept (fraction of dense)"
    panels: dict[str, dict] = {}
    for r in rows:
        attr, x_label = PLOT_METRICS[r.scenario]
        panel = panels.setdefault(r.scenario, {"scenario": r.scenario, "x_label": x_label, "y_label": y_label,
                                               "points": [], "failed": [], "missing": []})
        if r.failed:
            panel["failed"].append(f"{r.variant} ({r.status})")
            continue
        x = getattr(r, attr)
        own = r.accuracy if r.accuracy is not None else r.direct_accuracy
        y = (own if own is not None else accs.get(r.variant)) if use_acc else (r.mac_ratio or 1.0)
        if x is None or y is None:
            panel["missing"].append(r.variant)
            continue
        panel["points"].append((r.variant, float(x), float(y), r.precision, r.valid != "INVALID"))
    return list(panels.values())


def plot(rows: list[BenchRow], path: Path) -> str | None:
    """``bench.png`` from ``plot_panels``: circles FP32, squares INT8, hollow = INVALID performance run;
    failed runs are named in red on their scenario's panel. None (nothing written) when no panel has data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in plot_panels(rows) if p["points"] or p["failed"]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for name, x, y, precision, valid in panel["points"]:
            color = "tab:orange" if precision == "int8" else "tab:blue"
            ax.scatter([x], [y], marker="s" if precision == "int8" else "o", s=40,
                       facecolors=color if valid else "none", edgecolors=color)
            ax.annotate(name + ("" if valid else " (INVALID)"), (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        notes = [f"failed: {', '.join(panel['failed'])}"] if panel["failed"] else []
        notes += [f"no value: {', '.join(panel['missing'])}"] if panel["missing"] else []
        if notes:
            ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=8, color="tab:red", va="bottom")
        ax.set_title(panel["scenario"])
        ax.set_xlabel(panel["x_label"])
        ax.set_ylabel(panel["y_label"])
        ax.grid(alpha=0.3)
    fig.suptitle("bertprune variants under MLPerf LoadGen (o FP32, s INT8, hollow = INVALID)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return str(path)


# ----------------------------------------------------------------------------------------------
# MLPerf submission tree


def _read_cpuinfo() -> dict:
    info: dict = {"model": platform.processor() or platform.machine(), "sockets": 1, "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    models = re.findall(r"^model name\s*:\s*(.+)$", text, re.M)
    if models:
        info["model"] = models[0].strip()
    sockets = set(re.findall(r"^physical id\s*:\s*(\d+)$", text, re.M))
    info["sockets"] = max(1, len(sockets))
    mhz = re.findall(r"^cpu MHz\s*:\s*([\d.]+)$", text, re.M)
    if mhz:
        info["mhz"] = float(mhz[0])
    cache = re.findall(r"^cache size\s*:\s*(.+)$", text, re.M)
    if cache:
        info["cache"] = cache[0].strip()
    return info


def _memory_gb() -> float | None:
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        return round(kb / 2**20, 1)
    except (OSError, AttributeError):
        return None


def _os_name() -> str:
    try:
        pretty = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', Path("/etc/os-release").read_text(), re.M).group(1)
        return f"{pretty} (kernel {platform.release()})"
    except (OSError, AttributeError):
        return platform.platform()


def default_system_name() -> str:
    cpu = re.sub(r"\(R\)|\(TM\)|CPU|@.*$", "", _read_cpuinfo()["model"]).strip()
    return _safe(f"{socket.gethostname()}-{cpu}".replace(" ", "-").lower()).strip("-_")


def system_description(system_name: str, submitter: str, providers: set[str]) -> dict:
    """``systems/<system>.json`` with the fields the MLPerf submission checker asks for, filled from
    this machine where it can tell (CPU from /proc/cpuinfo, memory, OS, ONNX Runtime version, GPU).
    Every value is a non-empty string ("accelerators_per_node": "0"), as the checker expects."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy as np
    import onnxruntime as ort

    cpu = _read_cpuinfo()
    mem = _memory_gb()
    gpu = "CUDAExecutionProvider" in providers
    gpu_name, gpu_mem = "N/A", "N/A"
    if gpu:
        try:
            import torch

            props = torch.cuda.get_device_properties(0)
            gpu_name, gpu_mem = props.name, f"{props.total_memory / 2**30:.0f} GB"
        except Exception:  # noqa: BLE001 - description only
            gpu_name = "CUDA GPU"
    def dist_version(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    disk = shutil.disk_usage("/").total / 2**30
    desc = {
        "division": DIVISION, "submitter": submitter, "status": "available", "system_name": system_name,
        "system_type": "edge", "system_type_detail": "workstation/server running the bertprune harness",
        "number_of_nodes": 1, "host_processor_model_name": cpu["model"],
        "host_processors_per_node": cpu["sockets"], "host_processor_core_count": cpu["cores"],
        "host_processor_frequency": f"{cpu['mhz']:.0f} MHz" if cpu.get("mhz") else "N/A",
        "host_processor_caches": cpu.get("cache", "N/A"), "host_processor_interconnect": "N/A",
        "host_memory_capacity": f"{mem} GB" if mem else "N/A", "host_memory_configuration": "N/A",
        "host_storage_type": "N/A", "host_storage_capacity": f"{disk:.0f} GB",
        "host_networking": "N/A", "host_networking_topology": "N/A", "host_network_card_count": "N/A",
        "accelerators_per_node": 1 if gpu else 0, "accelerator_model_name": gpu_name,
        "accelerator_frequency": "N/A", "accelerator_host_interconnect": "PCIe" if gpu else "N/A",
        "accelerator_interconnect": "N/A", "accelerator_interconnect_topology": "N/A",
        "accelerator_memory_capacity": gpu_mem, "accelerator_memory_configuration": "N/A",
        "accelerator_on-chip_memories": "N/A", "cooling": "N/A",
        "hw_notes": "CPU only" if not gpu else "",
        "framework": f"onnxruntime {ort.__version__}",
        "operating_system": _os_name(),
        "other_software_stack": f"Python {platform.python_version()}, mlcommons-loadgen "
                                f"{dist_version('mlcommons-loadgen')}, numpy {np.__version__}, "
                                f"bertprune {dist_version('bertprune')}",
        "sw_notes": f"execution providers: {', '.join(sorted(providers)) or 'CPUExecutionProvider'}",
    }
    # the checker wants every field a string: a number 0 ("accelerators_per_node": 0) reads as empty
    return {k: str(v) for k, v in desc.items()}


def measurements(variant: Variant, task, onnx_sha256: str | None = None) -> dict:
    """``measurements.json``: data types, and an honest account of the weights: where they started (the
    public name of the pre-trained model), whether bertprune fine-tuned the teacher, and every transformation
    after it (pruning, ONNX export, INT8)."""
    from bertprune.onnx.export import teacher_provenance

    meta = variant.meta
    prov = meta.get("starting_weights") or teacher_provenance(meta.get("teacher") or meta.get("source_checkpoint"))
    start = prov.get("starting_weights") or variant.onnx.name
    constraint = meta.get("constraint")
    steps = []
    if prov.get("fine_tuned_by_bertprune"):
        ft = prov.get("fine_tuning") or {}
        steps.append(f"fine-tuned by bertprune (train.py) from {start} on task {ft.get('task') or task.name} "
                     f"({ft.get('epochs')} epochs, lr {ft.get('lr')}, batch size {ft.get('batch_size')}, "
                     f"seed {ft.get('seed')})")
        retraining = (f"yes: the dense teacher was fine-tuned from {start} by bertprune (train.py); pruning itself "
                      "does not retrain (it rescales kept heads and neurons by least squares)")
    elif prov.get("fine_tuned_by_bertprune") is None:
        retraining = (f"unknown: the teacher {start} is not on this machine, so whether bertprune fine-tuned it "
                      "cannot be told; pruning itself does not retrain")
    elif constraint is not None:
        retraining = (f"no: bertprune pruned {start} without retraining (it rescales kept heads and neurons by "
                      "least squares); it did not fine-tune that starting checkpoint")
    else:
        retraining = f"no: bertprune exported {start} as it is (dense); it did not fine-tune it"
    if constraint is not None:
        steps.append(f"pruned (Kwon et al. 2022, retraining-free structured pruning of heads and FFN neurons; "
                     f"constraint={constraint}, mac_ratio={meta.get('mac_ratio')}, "
                     f"heads_per_layer={meta.get('heads_per_layer')}, ffn_per_layer={meta.get('ffn_per_layer')})")
    else:
        steps.append("not pruned (dense)")
    steps.append(f"exported to ONNX opset {meta.get('opset', '?')}")
    if variant.precision == "int8":
        steps.append("INT8 quantization (ONNX Runtime)")
    return {
        "input_data_types": "int64",
        "weight_data_types": variant.precision,
        "retraining": retraining,
        "starting_weights_filename": str(start),
        "weight_transformations": "; ".join(steps),
        "task": task.name,
        "onnx_sha256": onnx_sha256 or meta.get("sha256"),
    }


def submission_model_name(variant: Variant, task) -> str:
    return _safe(f"{task.name}-{variant.name}")


def _logged_seeds(log_dir) -> dict:
    """The RNG seeds LoadGen logged (``effective_*_rng_seed`` in mlperf_log_detail.txt)."""
    path = Path(log_dir) / "mlperf_log_detail.txt"
    seeds: dict = {}
    if not path.is_file():
        return seeds
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if "_rng_seed" not in line or ":::MLLOG" not in line:
            continue
        try:
            entry = json.loads(line.split(":::MLLOG", 1)[1])
        except json.JSONDecodeError:
            continue
        key = str(entry.get("key", ""))
        if key.startswith("effective_") and key.endswith("_rng_seed"):
            seeds[key[len("effective_"):]] = entry.get("value")
    return seeds


def mlperf_version(runs) -> str | None:
    """The MLPerf Inference round whose seeds the runs' LoadGen logged (``MLPERF_SEEDS``): "v6.1" for
    LoadGen 6.0.17; "unknown" for seeds of another round (with a warning); None when no run logged any."""
    found = [_logged_seeds(r["log_dir"]) for r in runs if r.get("status") == "ok" and r.get("log_dir")]
    found = [{k: v for k, v in f.items() if k in ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed")}
             for f in found if f]
    if not found:
        return None
    for version, seeds in MLPERF_SEEDS.items():
        if all(f == seeds for f in found):
            return version
    log.warning("LoadGen logged RNG seeds %s, which match no MLPerf round bertprune knows (%s): the submission "
                "tree is labelled 'unknown'; run the checker with the --version whose mlperf.conf has these seeds",
                found[0], sorted(MLPERF_SEEDS))
    return "unknown"


def truncate_accuracy_log(src: Path, dst: Path) -> str:
    """Copy LoadGen's accuracy log ``src`` to ``dst`` truncated as MLCommons' truncate_accuracy_log.py
    does (a log of 4096 bytes or more keeps its first and last 4096 bytes around a ``...`` line), and
    return the sha256 of the full log (the ``hash=`` line of accuracy.txt)."""
    data = Path(src).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if len(data) >= ACCURACY_LOG_VIEWABLE:
        data = data[:ACCURACY_LOG_VIEWABLE] + b"\n\n...\n\n" + data[-ACCURACY_LOG_VIEWABLE:]
    Path(dst).write_bytes(data)
    return digest


def write_submission(root: Path, plans, scenarios, runs: dict, task, system_name: str | None = None,
                     submitter: str = "bertprune", submission: bool = False, version: str | None = None) -> Path:
    """The open-division tree for every finished run (built in a temp folder, moved into place).

    Accuracy: LoadGen's logs, ``mlperf_log_accuracy.json`` truncated and ``accuracy.txt`` (the metric line
    at full precision + ``hash=<sha256 of the full log>``), as MLCommons' truncate_accuracy_log.py leaves them.
    version: the MLPerf round the runs' seeds belong to (``mlperf_version``), named in src/README.md."""
    from bertprune.models import atomic_dir

    system = _safe(system_name) if system_name else default_system_name()
    base_rel = Path(DIVISION) / _safe(submitter)
    providers = {r.get("provider") for r in runs.values() if r.get("provider")}
    mapping = {}
    with atomic_dir(root) as tmp:
        base = tmp / base_rel
        (base / "systems").mkdir(parents=True)
        (base / "systems" / f"{system}.json").write_text(
            json.dumps(system_description(system, submitter, providers), indent=2), encoding="utf-8")
        (base / "src").mkdir()
        (base / "src" / "README.md").write_text(_src_readme(task, submission, version, submitter),
                                                encoding="utf-8")
        for p in plans:
            model = submission_model_name(p.variant, task)
            for s in scenarios:
                perf = runs.get((p.variant.name, s.loadgen, "performance"))
                acc = runs.get((p.variant.name, s.loadgen, "accuracy"))
                done = [r for r in (perf, acc) if r and r.get("status") == "ok"]
                if not done:
                    continue
                mapping[model] = BENCHMARK
                sdir = base / "results" / system / model / s.loadgen
                sdir.mkdir(parents=True)
                if perf and perf.get("status") == "ok":
                    _copy(Path(perf["log_dir"]), sdir / "performance" / "run_1", LOADGEN_LOGS)
                if acc and acc.get("status") == "ok":
                    src, dst = Path(acc["log_dir"]), sdir / "accuracy"
                    _copy(src, dst, LOADGEN_LOGS)
                    digest = truncate_accuracy_log(src / "mlperf_log_accuracy.json", dst / "mlperf_log_accuracy.json")
                    line = (src / "accuracy.txt").read_text(encoding="utf-8").rstrip("\n")
                    (dst / "accuracy.txt").write_text(f"{line}\n\nhash={digest}\n", encoding="utf-8")
                shutil.copy2(Path(done[0]["log_dir"]) / "user.conf", sdir / "user.conf")
                sha = next((r.get("onnx_sha256") for r in done if r.get("onnx_sha256")), None)
                (sdir / "measurements.json").write_text(json.dumps(measurements(p.variant, task, sha), indent=2),
                                                        encoding="utf-8")
                (sdir / "README.md").write_text(
                    f"# {model} {s.loadgen}\n\n{p.variant.onnx} (variant {p.variant.name}) on task {task.name}, "
                    f"run with `python bench.py source=<sweep> task={task.name} scenario=[{s.name}]"
                    f"{' submission=true' if submission else ''}`.\n", encoding="utf-8")
        (base / "model_mapping.json").write_text(json.dumps(mapping, indent=2), encoding="utf-8")
    return root / base_rel


def _copy(src: Path, dst: Path, names) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        if (src / n).is_file():
            shutil.copy2(src / n, dst / n)


def _src_readme(task, submission: bool, version: str | None = None, submitter: str = "bertprune") -> str:
    label = version or "v6.1"
    check = (f"Check this tree with MLCommons' submission checker (mlcommons/inference, tools/submission), "
             f"from that repository's `tools/` folder:\n\n"
             f"    python -m submission.submission_checker.main --input <this submission folder> "
             f"--version {label} --submitter {submitter}\n\n")
    seeds = (f"MLPerf Inference {label}: the runs' LoadGen logged the {label} RNG seeds.\n\n" if version not in (None, "unknown")
             else "The runs' LoadGen logged RNG seeds of no MLPerf round bertprune knows: find the round whose "
                  "mlperf.conf has them (mlperf_log_detail.txt, effective_*_rng_seed) and check with its --version.\n\n"
             if version == "unknown" else "")
    return (
        "# bertprune\n\nRetraining-free structured pruning (Kwon et al., NeurIPS 2022) of fine-tuned BERT models "
        "into physically smaller dense models, exported to ONNX in the MLPerf Inference BERT interface "
        "(input_ids, input_mask, segment_ids -> output_start_logits, output_end_logits) and run with "
        "ONNX Runtime under MLPerf LoadGen.\n\n"
        + seeds + check +
        f"Reproduce: `python prune.py -m constraint=...`, `python export.py ...`, then "
        f"`python bench.py source=<sweep folder> task={task.name} scenario=[offline,single_stream]"
        f"{' submission=true' if submission else ''}`.\n\n"
        + ("" if submission else "These are LOCAL runs (short min_duration): not valid for an official submission; "
                                 "rerun with submission=true.\n")
        + ("" if task.kind == "qa" else
           f"\nNote: task {task.name} is not SQuAD v1.1, so this tree can never pass as bert-99: its performance "
           "runs hold fewer than the 10,833 performance samples bert-99 needs (the task's validation set), its "
           "accuracy run does not cover SQuAD's 10,833 samples and its metric is not SQuAD F1. model_mapping.json "
           "maps to bert-99 only to keep the tree's shape; the layout, system description, seeds and logs are "
           "still checked.\n"))
