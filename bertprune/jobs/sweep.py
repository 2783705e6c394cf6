"""Summary of a prune sweep: summary.csv + summary.md, one row per job (finished, failed or unfinished).

Runs as a Hydra callback (``conf/prune.yaml``: ``hydra.callbacks``) and stand-alone as
``python -m bertprune.jobs.sweep <sweep_dir>``. The callback records each job's status in
``<job>/status.json`` and rewrites the summary when a job starts and when it ends: Hydra re-raises a
failed job's error before ``on_multirun_end``, and an interrupted or killed sweep never gets there, so
the summary must already be on disk. A job is ``ok`` only with its atomically written results.json;
else it is a marked row: ``failed`` (with the error), ``interrupted`` (Ctrl-C) or ``unfinished``
(started, never ended: killed, or still running). The quality columns follow the task's metric
(results.json's ``metric``: ``eval/accuracy_*``, ``eval/mcc_*`` for CoLA, ``eval/pearson_*`` for STS-B ...).

Ablation grids: every key the sweep varies (``method.rearrange=true,false seed=0,1,2`` ...) is a column of the
summary (read from each job's ``.hydra/overrides.yaml``) and names the job's folder
(``c0.4-method.rearrange=false-seed=1``: ``job_suffix``); with ``seed`` swept, ``aggregate.csv`` and the summary's
last table give mean ± std over the seeds of each setting, with the count of jobs that failed.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import math
import os
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from bertprune import results as R
from bertprune.config import IN_FOLDER_NAME, SWEPT_ENV, job_suffix  # noqa: F401 (job_suffix: the sweep's folder names)
from bertprune.io import atomic_write_json, atomic_write_text
from bertprune.results import RESULTS_FILE as RESULTS
from bertprune.results import STAGES
from bertprune.tasks.metrics import metric_format

STATUS = "status.json"
OK, FAILED, INTERRUPTED, UNFINISHED = "ok", "failed", "interrupted", "unfinished"
HEAD = [(R.CONSTRAINT, "constraint", "{:.2f}"), (R.MAC_RATIO, "MAC ratio", "{:.3f}")]
# the unstructured step's settings (unstructured=obs / magnitude jobs only: absent keys give no column)
UNSTRUCTURED = [(R.unstructured_key(k), header, fmt) for k, header, fmt in (
    ("method", "method", "{}"), ("pattern", "pattern", "{}"), ("sparsity", "sparsity", "{:.3f}"),
    ("num_grads", "m", "{}"), ("damp", "damp", "{:g}"), ("fisher_block_size", "B", "{}"),
    ("num_recomputations", "recomp.", "{}"))]
TAIL = [(R.KEPT_HEADS, "heads", "{}"), (R.KEPT_NEURONS, "neurons", "{}"),
        (R.PARAMETERS, "params", "{:,}"), (R.PRUNE_S, "prune s", "{:.1f}")]
SHORT = {"accuracy": "acc"}
SEED = "seed"
AGGREGATED = (R.MAC_RATIO, R.KEPT_HEADS, R.KEPT_NEURONS, R.PRUNE_S)  # + the metric columns


def swept_keys(overrides) -> list[str]:
    """The keys of a sweep's command-line overrides that take several values (Hydra's sweep grammar:
    ``a=1,2``, ``range(...)``, ``choice(...)``, ``glob(...)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def job_overrides(job: Path) -> dict:
    """``{key: value}`` of a job's command-line overrides (``.hydra/overrides.yaml``), values as YAML reads them."""
    try:
        import yaml

        items = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, ValueError, ImportError):
        return {}
    out = {}
    for o in items:
        key, _, value = str(o).partition("=")
        try:
            out[key.lstrip("+~")] = yaml.safe_load(value) if value else value
        except ValueError:
            out[key.lstrip("+~")] = value
    return out


def grid_keys(rows: list[dict]) -> list[str]:
    """The overridden keys whose values differ between the jobs (first seen first), the constraint excluded
    (it has its own column)."""
    keys = list(dict.fromkeys(k for r in rows for k in r.get("_overrides", {})))
    return [k for k in keys if k not in IN_FOLDER_NAME
            and len({json.dumps(r.get("_overrides", {}).get(k), default=str) for r in rows}) > 1]


def metric_of(results: dict) -> str | None:
    """The task metric a job's results are in: ``results[R.METRIC]``, else read off ``eval/<metric>_dense``."""
    if results.get(R.METRIC):
        return results[R.METRIC]
    return next((m for k in results if (m := R.metric_of_key(k))), None)


def columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(results key, header, format) of the columns that some row has; one quality block per metric."""
    metrics = list(dict.fromkeys(m for r in rows if (m := metric_of(r))))
    quality = []
    for m in metrics:
        fmt = metric_format(m)  # accuracy/f1 %: 2 decimals; mcc/pearson/spearman: 4 digits; mse: 4 significant
        short = SHORT.get(m, m)
        quality += [(R.eval_key(m, s), f"dense {short}" if s == "dense" else s if len(metrics) == 1 else f"{s} {short}",
                     fmt) for s in STAGES]
    onnx = [(R.export_key("onnx", m), f"ONNX {SHORT.get(m, m)}", metric_format(m)) for m in metrics]
    # a column no row has a value for is left out (e.g. the constraint of a sweep run with structured=false)
    return [c for c in HEAD + UNSTRUCTURED + quality + TAIL + onnx if any(r.get(c[0]) is not None for r in rows)]


def best_per_sparsity(rows: list[dict]) -> list[str]:
    """For a grid of unstructured jobs (the damp / num_grads sweep): the best job at each target sparsity
    that more than one finished job ran."""
    done = [r for r in rows if r["status"] == OK and R.unstructured_key("target_sparsity") in r and metric_of(r)]
    lines = []
    target = R.unstructured_key("target_sparsity")
    for s in sorted({r[target] for r in done}):
        at = [r for r in done if r[target] == s]
        if len(at) < 2:
            continue
        m = metric_of(at[0])
        lower = m == "mse"  # the one metric where less is better
        best = (min if lower else max)(at, key=lambda r: r.get(R.eval_key(m), math.nan))
        lines.append(f"* best at sparsity {s:g}: {best['job']} ({m} {metric_format(m).format(best[R.eval_key(m)])}"
                     + "".join(f", {h} {_cell(best, k, f)}" for k, h, f in UNSTRUCTURED[3:] if k in best) + ")")
    return lines


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _job_constraint(job: Path):
    """The constraint a job was started with (its .hydra/config.yaml), for the rows of jobs without results;
    None for a structured=false job (its constraint is an unused default)."""
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        return cfg.get("constraint") if cfg.get("structured", True) else None
    except Exception:  # noqa: BLE001 - a row without a constraint is still a row
        return None


def collect(sweep_dir: Path) -> list[dict]:
    """One row per job folder (a folder with results.json, status.json or .hydra/), sorted by constraint."""
    rows = []
    for job in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        results, status = _read_json(job / RESULTS), _read_json(job / STATUS)
        if results is not None:
            row = {**results, "status": OK, "error": ""}
            if results.get("structured") is False:  # older structured=false jobs recorded the unused default
                row[R.CONSTRAINT] = None
        elif status is not None or (job / ".hydra").is_dir():
            state = (status or {}).get("status")
            row = {R.CONSTRAINT: _job_constraint(job), "error": (status or {}).get("error", ""),
                   "status": state if state in (FAILED, INTERRUPTED) else UNFINISHED}
            if state == OK:  # ended well but wrote no results.json (or an unreadable one)
                row.update(status=FAILED, error=f"no readable {RESULTS}")
        else:
            continue
        row["job"] = job.name
        row["_overrides"] = job_overrides(job)
        rows.append(row)
    rows.sort(key=lambda r: (r.get(R.CONSTRAINT) is None, r.get(R.CONSTRAINT) or 0, r["job"]))
    return rows


def _cell(r: dict, key: str, fmt: str) -> str:
    v = r.get(key)
    if v is None:
        return ""
    try:
        return fmt.format(v)
    except (TypeError, ValueError):
        return str(v)


def tidy(sweep_dir: str | Path):
    """The sweep as a pandas DataFrame, one row per job (failed ones included, ``status`` / ``error``): the
    job, one column per swept key, then the summary's columns under their results.json keys."""
    import pandas as pd

    rows = collect(Path(sweep_dir))
    keys, cols = grid_keys(rows), columns(rows)
    final = [R.eval_key(m) for m in dict.fromkeys(metric_of(r) for r in rows if metric_of(r))]
    data = [{"job": r["job"], **{k: r["_overrides"].get(k) for k in keys}, "metric": metric_of(r),
             **{k: r.get(k) for k in final}, **{k: r.get(k) for k, _, _ in cols if k not in final},
             "status": r["status"], "error": r["error"]} for r in rows]
    return pd.DataFrame(data, columns=["job", *keys, "metric", *final,
                                       *[k for k, _, _ in cols if k not in final], "status", "error"])


def aggregate(df, keys: list[str]):
    """Mean, std and count over the seeds of each setting (the swept keys but ``seed``): one row per setting,
    ``<column> mean`` / ``<column> std`` for the final metric and the cost columns, ``ok`` and ``failed``
    job counts (a failed job is counted, never averaged)."""
    import pandas as pd

    by = [k for k in keys if k != SEED] + ([R.CONSTRAINT] if R.CONSTRAINT in df.columns else [])
    values = [c for c in df.columns if R.is_final_eval_key(c) or c in AGGREGATED]
    values = [c for c in values if c in df.columns]
    ok = df[df["status"] == OK]
    groups = df.groupby(by, dropna=False, sort=True) if by else [((), df)]
    out = []
    for setting, g in groups:
        setting = setting if isinstance(setting, tuple) else (setting,)
        done = ok.loc[ok.index.intersection(g.index)]
        row = dict(zip(by, setting))
        row.update({"ok": len(done), "failed": len(g) - len(done)})
        for c in values:
            v = pd.to_numeric(done[c], errors="coerce").dropna()
            row[f"{c} mean"] = float(v.mean()) if len(v) else math.nan
            row[f"{c} std"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        out.append(row)
    return pd.DataFrame(out)


def _mean_std(row, col: str, fmt: str) -> str:
    m, s = row.get(f"{col} mean"), row.get(f"{col} std")
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return ""
    return fmt.format(m) + ("" if s is None or math.isnan(s) else " ± " + fmt.format(s))


def write_summary(sweep_dir: str | Path) -> str:
    """Write ``summary.csv`` and ``summary.md`` (atomically) into the sweep folder, and ``aggregate.csv`` when
    the sweep varies the seed; returns the Markdown."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    cols = columns(rows)
    keys = grid_keys(rows)
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["job", *keys] + [k for k, _, _ in cols] + ["status", "error"])
    for r in rows:
        w.writerow([r["job"], *[_plain(r["_overrides"].get(k)) for k in keys]] + [r.get(k, "") for k, _, _ in cols]
                   + [r["status"], r["error"]])
    atomic_write_text(sweep_dir / "summary.csv", table.getvalue())
    bad = [r for r in rows if r["status"] != OK]
    lines = [f"**INCOMPLETE: {len(bad)} of {len(rows)} jobs have no results (see status).**", ""] if bad else []
    lines += ["| job | " + "".join(f"`{k}` | " for k in keys) + " | ".join(h for _, h, _ in cols) + " | status |",
              "|" + "---|" * (len(keys) + len(cols) + 2)]
    for r in rows:
        status = r["status"] if r["status"] == OK else f"**{r['status'].upper()}**"
        lines.append(f"| {r['job']} | " + "".join(f"{_plain(r['_overrides'].get(k))} | " for k in keys)
                     + " | ".join(_cell(r, k, fmt) for k, _, fmt in cols) + f" | {status} |")
    best = best_per_sparsity(rows)
    if best:
        lines += [""] + best
    if bad:
        lines += [""] + [f"* {r['job']}: {r['status']}" + (f": {r['error']}" if r["error"] else
                                                           " (started, never ended: interrupted, killed or running)"
                                                           if r["status"] == UNFINISHED else "") for r in bad]
    if SEED in keys:
        lines += [""] + aggregate_markdown(sweep_dir, rows, keys)
    else:
        (sweep_dir / "aggregate.csv").unlink(missing_ok=True)
    md = "\n".join(lines) + "\n"
    atomic_write_text(sweep_dir / "summary.md", md)
    return md


def aggregate_markdown(sweep_dir: Path, rows: list[dict], keys: list[str]) -> list[str]:
    """``aggregate.csv`` (written) and its Markdown: mean ± std over the seeds of each setting."""
    df = aggregate(tidy(sweep_dir), keys)
    atomic_write_text(sweep_dir / "aggregate.csv", df.to_csv(index=False))
    metrics = list(dict.fromkeys(m for r in rows if (m := metric_of(r))))
    shown = [(R.eval_key(m), SHORT.get(m, m), metric_format(m)) for m in metrics] + [
        (R.MAC_RATIO, "MAC ratio", "{:.3f}"), (R.KEPT_HEADS, "heads", "{:.1f}"),
        (R.KEPT_NEURONS, "neurons", "{:.0f}"), (R.PRUNE_S, "prune s", "{:.1f}")]
    shown = [c for c in shown if f"{c[0]} mean" in df.columns]
    by = [k for k in keys if k != SEED] + ([R.CONSTRAINT] if R.CONSTRAINT in df.columns else [])
    seeds = sorted({_plain(r["_overrides"].get(SEED)) for r in rows})
    lines = [f"Over seeds {', '.join(seeds)} (mean ± std of the finished jobs; `aggregate.csv`):", "",
             "| " + " | ".join(by) + " | " + " | ".join(h for _, h, _ in shown) + " | ok | failed |",
             "|" + "---|" * (len(by) + len(shown) + 2)]
    for _, r in df.iterrows():
        failed = int(r["failed"])
        lines.append("| " + " | ".join(_plain(r.get(k)) for k in by) + " | "
                     + " | ".join(_mean_std(r, c, f) for c, _, f in shown)
                     + f" | {int(r['ok'])} | {f'**{failed}**' if failed else 0} |")
    return lines


def _plain(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def incomplete_jobs(sweep_dir: str | Path) -> list[dict]:
    """Rows of the jobs that have no results (failed / interrupted / unfinished)."""
    return [r for r in collect(Path(sweep_dir)) if r["status"] != OK]


def _write_status(job_dir: Path, status: str, error: str = "") -> None:
    atomic_write_json(job_dir / STATUS, {"status": status, "error": error,
                                         "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=None)


class SweepSummary(Callback):
    """Hydra callback: each job's status in ``<job>/status.json``; the sweep summary rewritten at every
    job's start and end, at the sweep's end, and at exit if the sweep never got there (Ctrl-C)."""

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None
        self.running: Path | None = None
        self.ended = False

    def on_multirun_start(self, config, **kwargs) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        from omegaconf import OmegaConf

        overrides = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
        os.environ[SWEPT_ENV] = ",".join(swept_keys(overrides))  # the job folders' names: job_suffix
        atexit.register(self._at_exit)

    def on_job_start(self, config, **kwargs) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:  # single runs get a status.json, no summary
            self.sweep_dir = Path(config.hydra.sweep.dir)
        self.running = Path(config.hydra.runtime.output_dir)
        _write_status(self.running, "running")
        self._refresh()

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus

        job_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.COMPLETED:
            _write_status(job_dir, OK)
        else:
            err = job_return._return_value
            _write_status(job_dir, FAILED, f"{type(err).__name__}: {err}".splitlines()[0][:500])
            from hydra.types import RunMode

            more = "; the sweep goes on" if config.hydra.mode == RunMode.MULTIRUN else ""
            print(f"\njob {job_dir.name} FAILED ({type(err).__name__}: {err}){more}", file=sys.stderr)
        self.running = None
        self._refresh()

    def on_multirun_end(self, config, **kwargs) -> None:
        self.ended = True
        md = self._refresh()
        if md is not None:
            print(f"\nSweep summary ({self.sweep_dir}/summary.md):\n{md}")
            self._log_wandb(config)

    def _log_wandb(self, config) -> None:
        """logger=wandb: the sweep's summary (and aggregate) as tables of one ``sweep-summary`` run in the
        jobs' group."""
        from bertprune.lightning.loggers import log_sweep_table

        try:
            group = f"prune-{config.get('sweep_group') or self.sweep_dir.name}"
            tables = {"sweep_summary": tidy(self.sweep_dir).drop(columns=["error"]).astype(str)}
            if (self.sweep_dir / "aggregate.csv").is_file():
                import pandas as pd

                tables["sweep_aggregate"] = pd.read_csv(self.sweep_dir / "aggregate.csv").astype(str)
            log_sweep_table(self.sweep_dir, config.get("logger"), group, tables)
        except Exception as e:  # noqa: BLE001 - the summary files are written; the dashboard is extra
            print(f"W&B sweep summary not logged ({type(e).__name__}: {e})", file=sys.stderr)

    def _at_exit(self) -> None:
        """The sweep stopped before its end (Ctrl-C, or a failed job re-raised by Hydra)."""
        if self.ended:
            return
        if self.running is not None:  # KeyboardInterrupt skips on_job_end
            _write_status(self.running, INTERRUPTED, "the sweep was interrupted during this job")
        md = self._refresh()
        if md is not None:
            print(f"\nSweep summary ({self.sweep_dir}/summary.md):\n{md}", file=sys.stderr)

    def _refresh(self) -> str | None:
        if self.sweep_dir is None or not self.sweep_dir.is_dir():
            return None
        return write_summary(self.sweep_dir)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bertprune.jobs.sweep <sweep_dir>")
    print(write_summary(sys.argv[1]))
