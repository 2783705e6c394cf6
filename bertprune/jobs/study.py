"""A sweep as tables for a study (the notebooks under notebooks/ read sweeps through this module).

    from bertprune.jobs import study
    sweep = study.find_sweep()                  # the newest sweep under multirun/ (or pass a folder)
    jobs = study.load_jobs(sweep)               # one row per job: swept keys, results.json, status
    bench = study.load_bench(sweep)             # LoadGen rows joined to their job (bench/summary.json)
    lat = study.load_latencies(sweep)           # LoadGen's latency percentiles per variant x scenario
    front = study.pareto_front(points, "latency_p90_ms", "metric_value", lower_is_better=False)

Everything is read from the sweep's files (results.json, .hydra/overrides.yaml, the bench folder's
summary.json); ``wandb_summaries`` reads the jobs' W&B runs instead (offline run files, or the W&B API for
runs that were logged online).
"""

from __future__ import annotations

import json
from pathlib import Path

from bertprune import results as R
from bertprune.jobs.sweep import OK, RESULTS, metric_of, tidy

PERCENTILES = (("latency_min_ms", 0.0), ("latency_p50_ms", 50.0), ("latency_p90_ms", 90.0),
               ("latency_p95_ms", 95.0), ("latency_p97_ms", 97.0), ("latency_p99_ms", 99.0),
               ("latency_p999_ms", 99.9), ("latency_max_ms", 100.0))


def find_sweep(sweep: str | Path | None = None, root: str | Path | None = None) -> Path:
    """``sweep`` itself (checked), else the newest folder under ``<root>/multirun`` holding a summary.csv
    (root: the checkout, also when the notebook runs from notebooks/)."""
    if sweep:
        path = Path(sweep).expanduser()
        if not (path / "summary.csv").is_file():
            raise FileNotFoundError(f"sweep={sweep}: no summary.csv there; give the folder a `prune.py -m ...` "
                                    "sweep wrote (it prints it), e.g. multirun/prune/<task>-<model>/<time>")
        return path
    root = Path(root) if root else Path.cwd()
    if root.name == "notebooks":
        root = root.parent
    found = [p.parent for p in (root / "multirun").rglob("summary.csv") if any(p.parent.glob(f"*/{RESULTS}"))]
    if not found:
        raise FileNotFoundError(f"no sweep under {root / 'multirun'}: run `make demo` or `python prune.py -m "
                                "constraint=0.4,0.5,0.6` first, or set sweep= to a sweep folder")
    return max(found, key=lambda p: (p / "summary.csv").stat().st_mtime)


def figures_dir(sweep: str | Path) -> Path:
    """``<sweep>/figures``, where the notebooks save their PNGs (created)."""
    out = Path(sweep) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_jobs(sweep: str | Path):
    """One row per job (failed ones too): ``job``, the swept keys, ``status``, then every results.json entry
    (the per-layer lists as lists) and ``job_dir``."""
    import pandas as pd

    sweep = Path(sweep)
    table = tidy(sweep)
    grid = table[["job", *_keys_of(table), "status", "error"]]
    rows = []
    for job in grid["job"]:
        try:
            results = json.loads((sweep / job / RESULTS).read_text())
        except (OSError, ValueError):
            results = {}
        rows.append({"job": job, "job_dir": str(sweep / job), **results})
    full = pd.DataFrame(rows)
    dup = [c for c in full.columns if c in grid.columns and c != "job"]
    return grid.merge(full.drop(columns=dup), on="job", how="left")


def swept_columns(sweep: str | Path) -> list[str]:
    """The keys the sweep varies (its tidy table's columns between ``job`` and ``metric``)."""
    return _keys_of(tidy(Path(sweep)))


def _keys_of(table) -> list[str]:
    cols = list(table.columns)
    return cols[1:cols.index("metric")]


def metric_name(jobs) -> str:
    """The task metric of the sweep's finished jobs (results.json's ``metric``)."""
    for _, r in jobs[jobs["status"] == OK].iterrows():
        if m := metric_of({k: v for k, v in r.items() if isinstance(k, str)}):
            return m
    raise ValueError("no finished job in the sweep: nothing to plot")


def lower_is_better(metric: str) -> bool:
    return metric == "mse"


def bench_dir(sweep: str | Path) -> Path | None:
    """Where bench.py wrote the sweep's LoadGen results: ``<sweep>/bench`` (make demo), else None."""
    d = Path(sweep) / "bench"
    return d if (d / "summary.json").is_file() else None


def _bench_summary(sweep, where=None) -> dict | None:
    d = Path(where) if where else bench_dir(sweep)
    if d is None or not (d / "summary.json").is_file():
        return None
    return json.loads((d / "summary.json").read_text())


def _job_of(onnx: str | None, sweep: Path) -> str | None:
    """The sweep job a variant was exported by (``<sweep>/<job>/onnx*/model.onnx``); None for the dense one."""
    if not onnx:
        return None
    job = Path(onnx).resolve().parent.parent
    return job.name if job.parent == Path(sweep).resolve() and (job / RESULTS).is_file() else None


def load_bench(sweep: str | Path, where: str | Path | None = None):
    """bench.py's rows (one per variant x scenario) with ``job`` (the job that exported the variant; empty for
    the dense baseline) and ``onnx``; an empty frame when bench.py has not run on the sweep."""
    import pandas as pd

    summary = _bench_summary(sweep, where)
    if summary is None:
        return pd.DataFrame()
    onnx = {(r["variant"], r["scenario"]): r.get("onnx") for r in summary.get("runs", [])}
    rows = []
    for r in summary["rows"]:
        path = onnx.get((r["variant"], r["scenario"]))
        rows.append({**r, "onnx": path, "job": _job_of(path, Path(sweep))})
    return pd.DataFrame(rows)


def load_latencies(sweep: str | Path, where: str | Path | None = None):
    """LoadGen's latency distribution of each performance run, long form: ``variant``, ``scenario``,
    ``percentile`` (0 = min, 100 = max), ``latency_ms``; empty without bench results. Offline issues one
    query (its latency is the run's length), so it has no distribution; SingleStream, MultiStream and Server
    have one."""
    import pandas as pd

    summary = _bench_summary(sweep, where)
    rows = []
    for run in (summary or {}).get("runs", []):
        if run.get("mode") != "performance" or run.get("status") != "ok":
            continue
        s = run.get("summary") or {}
        rows += [{"variant": run["variant"], "scenario": run["scenario"], "percentile": q, "latency_ms": s[k]}
                 for k, q in PERCENTILES if s.get(k) is not None]
    return pd.DataFrame(rows, columns=["variant", "scenario", "percentile", "latency_ms"])


def pareto_front(df, cost: str, quality: str, lower_is_better: bool = False):
    """The rows no other row beats on both ``cost`` (lower is better) and ``quality`` (higher is better,
    or lower with ``lower_is_better``), sorted by cost."""
    d = df.dropna(subset=[cost, quality]).sort_values([cost, quality], ascending=[True, lower_is_better])
    keep, best = [], None
    for i, r in d.iterrows():
        q = r[quality]
        if best is None or (q < best if lower_is_better else q > best):
            keep.append(i)
            best = q
    return d.loc[keep]


def kept_structure(jobs, which: str = "heads"):
    """Kept heads (``which="heads"``) or FFN neurons per layer: a DataFrame, one row per finished job (its
    folder name), one column per layer."""
    import pandas as pd

    key = R.HEADS_PER_LAYER if which == "heads" else R.FFN_PER_LAYER
    done = jobs[(jobs["status"] == OK) & jobs[key].notna()] if key in jobs else jobs.iloc[0:0]
    return pd.DataFrame([list(v) for v in done[key]], index=list(done["job"]),
                        columns=[f"layer {i}" for i in range(len(done[key].iloc[0]))] if len(done) else [])


def wandb_summaries(sweep: str | Path):
    """The final summary of each job's W&B run, one row per job: read from the offline run files in the job
    folders, or through the W&B API for a job whose run was logged online (needs a network and a key)."""
    import pandas as pd

    from bertprune.lightning.loggers import offline_runs

    rows = []
    for results_file in sorted(Path(sweep).glob(f"*/{RESULTS}")):
        r = json.loads(results_file.read_text())
        if not r.get(R.WANDB_RUN_ID):
            continue
        if r.get(R.WANDB_MODE) == "online":
            import wandb

            run = wandb.Api().run(f"{r.get(R.WANDB_ENTITY) or wandb.Api().default_entity}/{r[R.WANDB_PROJECT]}/"
                                  f"{r[R.WANDB_RUN_ID]}")
            summary = dict(run.summary)
        else:
            summary = {}
            for part in offline_runs(results_file.parent / "wandb", r[R.WANDB_RUN_ID]):
                summary.update(part["summary"])
        rows.append({"job": results_file.parent.name, "run_id": r[R.WANDB_RUN_ID], **summary})
    return pd.DataFrame(rows)
