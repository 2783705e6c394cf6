"""Benchmark exported variants with MLPerf LoadGen: ``bench(cfg)`` (Hydra) / ``run_bench(...)`` (plain).

validate and plan (``plan_bench``: modes, scenarios, device, every variant's interface, file hash and
tokenizer) -> one LoadGen run per variant x scenario x mode, each in its own process
(``bertprune.mlperf.runs``), logs under ``<output_dir>/<variant>/<Scenario>/<mode>/`` -> in ``output_dir``:

* ``summary.csv`` / ``summary.md`` / ``summary.json`` and ``bench.png`` (``bertprune.mlperf.report``) — one
  row per variant x scenario; a run that failed or never ran (interrupted) is a row with status ``failed``
  / ``interrupted``, never dropped. ``summary.json`` is written last and says ``"complete": true`` only
  when every run finished.
* ``submission/open/<submitter>/`` — the MLPerf Inference open-division tree (``bertprune.mlperf.submission``).

``bench`` exits non-zero (``python bench.py``) when any run failed; the summary is still written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from bertprune import results as R
from bertprune.io import atomic_write_text, safe_name
from bertprune.mlperf import qsl, runs as mlperf_runs
from bertprune.mlperf.report import BenchSummary, build_rows, csv_table, markdown_table, plot
from bertprune.mlperf.runs import RunSpec
from bertprune.scenarios import ScenarioSettings, resolve_modes, resolve_scenarios
from bertprune.mlperf.submission import mlperf_version, write_submission
from bertprune.mlperf.system import SystemConfig, detect
from bertprune import interface
from bertprune.onnx import variants
from bertprune.onnx.variants import Variant

log = logging.getLogger(__name__)

SUMMARY_FILES = ("summary.json", "summary.csv", "summary.md", "bench.png")


def bench(cfg) -> BenchSummary:
    """Hydra entry: ``cfg`` composed from ``conf/bench.yaml`` (source, task, scenario group, mode …)."""
    from omegaconf import OmegaConf

    from bertprune.tasks.data import Task

    task = Task.from_config(cfg.task)
    scenarios = OmegaConf.to_container(cfg.scenario, resolve=True) if cfg.get("scenario") else None
    system = SystemConfig(**OmegaConf.to_container(cfg.system, resolve=True)) if cfg.get("system") else None
    return run_bench(cfg.source, task, scenarios, mode=cfg.mode, output_dir=cfg.output_dir,
                     submission=bool(cfg.submission), device=cfg.hardware.runtime_device, tokenizer=cfg.get("tokenizer"),
                     system_name=cfg.get("system_name"), submitter=cfg.get("submitter") or "bertprune",
                     timeout_s=cfg.get("run_timeout_s"), system=system,
                     write_back=bool(cfg.get("wandb_write_back", True)), runtime=str(cfg.get("runtime", "onnxruntime")),
                     deepsparse_python=cfg.get("deepsparse_python"), deepsparse_seq_lens=_to_python(cfg.get("deepsparse_seq_lens")))


def _to_python(value):
    """A config value as plain Python (a ListConfig as a list)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def write_back_to_runs(plans, scenarios, modes, rows, runs: dict, out: Path) -> list[str]:
    """The LoadGen results of each variant exported by a prune job (``<job>/onnx``, ``<job>/onnx_int8``) on
    that job's W&B run, resumed by the id in its results.json, with the run folders' summaries as a
    ``bench`` artifact. Variants of jobs that logged no W&B run are left alone. Returns the run ids."""
    from bertprune.lightning.loggers import write_back

    by_job: dict[Path, list[str]] = {}
    for p in plans:
        job = Path(p.variant.onnx).resolve().parent.parent
        if (job / "results.json").is_file():
            by_job.setdefault(job, []).append(p.variant.name)
    ids = []
    for job, names in by_job.items():
        mine = [r for r in rows if r.variant in names]
        files = {"summary.json": out / "summary.json"}
        for (v, _, _), r in runs.items():
            if v in names and r.get("log_dir") and Path(r["log_dir"]).is_relative_to(out):
                log_file = Path(r["log_dir"]) / "mlperf_log_summary.txt"
                files[log_file.relative_to(out).as_posix()] = log_file
        try:
            run_id = write_back(job / "results.json", {R.BENCH_SUMMARY: str(out / "summary.json"),
                                                       **R.loadgen_entries(mine, scenarios, modes)}, files)
        except Exception as e:  # noqa: BLE001 - the benchmark's own results are on disk already
            log.warning("W&B write-back to %s failed (%s: %s)", job, type(e).__name__, e)
            continue
        if run_id:
            log.info("LoadGen results of %s written back to W&B run %s", ", ".join(names), run_id)
            ids.append(run_id)
    return ids


@dataclass
class _Plan:
    variant: Variant
    signature: interface.Signature
    tokenizer: str


def plan_bench(source, task, scenarios, mode: str, tokenizer=None, device: str = "auto", runtime: str = "onnxruntime",
               deepsparse_python: str | None = None,
               deepsparse_seq_lens=None) -> tuple[list[_Plan], list[ScenarioSettings], list[str]]:
    """Validate everything before anything runs: modes, scenarios, the runtime (DeepSparse: its venv imports
    it) and device, every variant's ONNX interface against the task and its file against the sha256 its
    export recorded, and a tokenizer for each variant (``tokenizer`` given: it wins over the sidecars')."""
    from bertprune.onnx.deepsparse_runtime import check_runtime, check_seq_lens
    from bertprune.onnx.runtime import choose_providers
    from bertprune.tasks.kinds import get_kind

    modes = resolve_modes(mode)
    scen = resolve_scenarios(scenarios)
    check_seq_lens(deepsparse_seq_lens, task.max_length, get_kind(task.kind).fixed_seq_len, runtime)
    if check_runtime(runtime, deepsparse_python, device) is None:
        choose_providers(device)  # device=cuda without a usable GPU: one error here, not one per run
    plans = []
    for v in variants.discover_variants(source):
        sig = variants.check_variant(v, task.kind, task.num_labels, task.max_length, task.name)
        if sig.onnx_seq_len is not None:  # a static export: its own length only
            check_seq_lens(deepsparse_seq_lens, task.max_length, True, runtime)
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
              submitter: str = "bertprune", timeout_s: float | None = None, retries: int = 1,
              system: SystemConfig | None = None, write_back: bool = True, runtime: str = "onnxruntime",
              deepsparse_python: str | None = None, deepsparse_seq_lens=None) -> BenchSummary:
    """Benchmark every variant under ``source`` (a .onnx, a variant folder, a sweep folder or a list).

    task: a ``bertprune.tasks.data.Task``. scenarios: names, a {name: settings} mapping or ScenarioSettings.
    tokenizer: used for variants whose sidecar names none. system: what the machine cannot tell (cooling, cost
    per hour ...; ``bertprune.mlperf.system``). write_back: each variant's LoadGen results are added to the W&B
    run of the prune job that exported it (``write_back_to_runs``). runtime: onnxruntime, or deepsparse (the
    sparse CPU engine, a worker in the venv whose python is ``deepsparse_python``; bertprune.onnx.deepsparse_runtime),
    compiled for the lengths ``deepsparse_seq_lens`` says (None / "auto": 32, 64, ... up to max_length; "full";
    a list). Returns the summary (also written to disk).
    """
    system = system or SystemConfig()
    plans, scen, modes = plan_bench(source, task, scenarios, mode, tokenizer, device, runtime, deepsparse_python,
                                    deepsparse_seq_lens)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in SUMMARY_FILES:  # a stale summary must never pass for this run's
        (out / name).unlink(missing_ok=True)
    features = {t: str(qsl.prepare_features(task, t)) for t in sorted({p.tokenizer for p in plans})}

    runs: dict[tuple[str, str, str], dict] = {}
    interrupted = False
    todo = [(p, s, m) for p in plans for s in scen for m in modes]
    try:
        for i, (p, s, m) in enumerate(todo, 1):
            log.info("[%d/%d] %s %s %s", i, len(todo), p.variant.name, s.loadgen, m)
            spec = RunSpec(variant=p.variant.name, onnx=str(p.variant.onnx), kind=task.kind,
                           num_labels=task.num_labels, onnx_seq_len=p.signature.onnx_seq_len,
                           features=features[p.tokenizer], scenario=asdict(s), mode=m,
                           out_dir=str(out / safe_name(p.variant.name) / s.loadgen / m),
                           device=device, submission=submission, onnx_sha256=p.variant.sha256,
                           metrics=list(task.metrics) if task.metrics else None, runtime=runtime,
                           deepsparse_python=deepsparse_python, deepsparse_seq_lens=deepsparse_seq_lens)
            result = mlperf_runs.run_isolated(spec, timeout_s=timeout_s, retries=retries)
            runs[(p.variant.name, s.loadgen, m)] = result
            if result.get("status") != "ok":
                log.error("%s %s %s failed: %s", p.variant.name, s.loadgen, m, result.get("error"))
    except KeyboardInterrupt:
        interrupted = True
        log.error("interrupted: unfinished runs are marked 'interrupted' and the summary as incomplete")

    machine = detect(out)
    rows = build_rows(plans, scen, modes, runs, task.kind, task.primary_metric, cores=machine.usable_cores,
                      cost_per_hour=system.cost_per_hour)
    complete = not interrupted and all(r.status == "ok" for r in rows)
    version = mlperf_version(runs.values())
    summary = BenchSummary(rows=rows, complete=complete, output_dir=out, runs=list(runs.values()),
                           mlperf_version=version)
    summary.files["csv"] = str(atomic_write_text(out / "summary.csv", csv_table(rows)))
    summary.files["md"] = str(atomic_write_text(out / "summary.md", markdown_table(rows, complete)))
    summary.files["plot"] = plot(rows, out / "bench.png")
    summary.files["submission"] = str(write_submission(out / "submission", plans, scen, runs, task,
                                                       system_name=system_name, submitter=submitter,
                                                       submission=submission, version=version,
                                                       system=system, machine=machine))
    summary.files["json"] = str(atomic_write_text(out / "summary.json", json.dumps(
        {"complete": complete, "interrupted": interrupted, "task": task.name, "modes": modes, "runtime": runtime,
         "scenarios": [s.loadgen for s in scen], "submission": submission, "mlperf_version": version,
         "machine": asdict(machine), "cores_used": machine.usable_cores, "cost_per_hour": system.cost_per_hour,
         "rows": [asdict(r) for r in rows], "runs": list(runs.values()), "files": summary.files},
        indent=2, default=str)))
    print(summary.to_markdown())
    if write_back:
        summary.files["wandb_runs"] = write_back_to_runs(plans, scen, modes, rows, runs, out)
    if interrupted:
        raise KeyboardInterrupt
    return summary
