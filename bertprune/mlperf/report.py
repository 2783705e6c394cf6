"""What a bench run reports: one row per variant x scenario (``BenchRow``), ``summary.csv`` /
``summary.md`` tables and ``bench.png`` (one panel per scenario: accuracy vs that scenario's own metric —
Offline/Server throughput in samples/s, SingleStream p90 / MultiStream p99 latency in ms; failed runs
listed, INVALID hollow).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bertprune.io import atomic_write_bytes
from bertprune.tasks.kinds import get_kind

COLUMNS = ["variant", "precision", "runtime", "mac_ratio", "scenario", "status", "valid", "throughput", "throughput_per_core",
           "samples_per_dollar", "latency_p90_ms", "latency_p99_ms", "metric_value", "direct_metric_value", "metric", "file_size_mb", "onnx_sha256", "error"]


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
    throughput_per_core: float | None = None  # samples/s per physical core the benchmark could use
    samples_per_dollar: float | None = None  # throughput x 3600 / system.cost_per_hour (when a cost is given)
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    metric_value: float | None = None  # LoadGen accuracy mode: the task metric (``metric``: accuracy % / F1 / MSE)
    direct_metric_value: float | None = None  # same ONNX, same features, no LoadGen
    metric: str = ""
    file_size_mb: float | None = None
    onnx_sha256: str = ""  # of the file the runs loaded (each run hashes it and checks it against its export)
    error: str = ""
    runtime: str = ""  # what ran it: ONNX Runtime's provider (CPUExecutionProvider ...) or "DeepSparse <version>"

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


def build_rows(plans, scenarios, modes, runs: dict, kind, metric: str | None = None, cores: int | None = None,
               cost_per_hour: float | None = None) -> list[BenchRow]:
    """One row per plan x scenario from the finished ``runs`` ({(variant, Scenario, mode): result}); a run
    that failed or never ran makes its row ``failed`` / ``interrupted``, never drops it. ``cores``: the physical
    cores the runs could use (throughput per core); ``cost_per_hour`` (USD): samples per dollar."""
    metric = metric or get_kind(kind).primary_metric  # the task's primary metric (Task.primary_metric)
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
                row.runtime = row.runtime or r.get("provider") or ""
                sm = r.get("summary") or {}
                if m == "performance":
                    row.valid = "VALID" if sm.get("valid") else "INVALID"
                    row.throughput = sm.get("throughput")
                    if row.throughput is not None and cores:
                        row.throughput_per_core = row.throughput / cores
                    if row.throughput is not None and cost_per_hour:
                        row.samples_per_dollar = row.throughput * 3600 / cost_per_hour
                    row.latency_p90_ms = sm.get("latency_p90_ms")
                    row.latency_p99_ms = sm.get("latency_p99_ms")
                    if not sm.get("valid"):
                        errors.append("INVALID: " + "; ".join(sm.get("reasons", [])))
                else:
                    acc = r.get("accuracy") or {}
                    row.metric_value = (acc.get("loadgen") or {}).get(metric)
                    row.direct_metric_value = (acc.get("direct") or {}).get(metric)
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
    metric = "/".join(dict.fromkeys(r.metric for r in rows if r.metric)) or "metric"
    head = ["variant", "precision", "runtime", "mac_ratio", "scenario", "valid", "throughput (samples/s)", "per core",
            "samples/$", "p90 (ms)", "p99 (ms)", f"{metric} (LoadGen)", f"{metric} (direct)", "size (MB)", "status"]
    lines = [] if complete else ["**INCOMPLETE: some runs failed or never ran (see status/error).**", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.variant, r.precision, r.runtime, r.mac_ratio, r.scenario, r.valid, r.throughput, r.throughput_per_core,
                 r.samples_per_dollar, r.latency_p90_ms,
                 r.latency_p99_ms, r.metric_value, r.direct_metric_value, r.file_size_mb, r.status]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    if rows:
        lines.append("")
        lines.append(f"{metric} columns: the task metric from LoadGen's accuracy log / from a direct "
                     "evaluation of the same features on the same runtime (they must agree)")
    return "\n".join(lines) + "\n"


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
        a = r.metric_value if r.metric_value is not None else r.direct_metric_value
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
        own = r.metric_value if r.metric_value is not None else r.direct_metric_value
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
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)
