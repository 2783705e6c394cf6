"""Experiment loggers: Weights & Biases (offline unless the user configured W&B), CSV, or none.

The ``logger`` config group names one factory here (``_target_``): ``wandb_loggers`` = a W&B run plus
the CSV log (the fallback when W&B cannot start); ``csv_loggers`` = the CSV log only; ``no_loggers`` =
nothing is logged (results.json is still written: it is the job's result, not a log). Each takes the
run's ``RUNTIME_ARGS`` and returns a list of Lightning loggers.

What a prune job puts on its W&B run besides the final numbers (``JobLoggers.log_study``; all wandb's own
features, offline by default, ``wandb sync <job>/wandb/offline-run-*`` uploads them): the stage series
(``stage/<metric>`` against ``stage/index``, dense -> ... -> pruned), the kept structure per layer (table
``structure`` and heatmap ``structure_heatmap``), the checkpoint and ONNX exports as artifacts by reference
with their lineage. ``write_back`` resumes the same run (by id, from results.json's ``wandb/*``) to add the
LoadGen results that ``bench.py`` measured later; ``log_sweep_table`` gives a sweep its summary run;
``read_offline_run`` reads an offline run's records back (tests, notebooks)."""

from __future__ import annotations

import logging
import os
import re
import struct
import time
import zlib
from pathlib import Path

from bertprune import results as R

log = logging.getLogger(__name__)


def wandb_mode(requested: str | None) -> str:
    """online only when asked for or when the user configured W&B (API key / WANDB_MODE); else offline,
    so that a machine with no network never hangs on a login."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


RUNTIME_ARGS = ("save_dir", "name", "group", "config")  # what a job passes; the rest comes from the config


def no_loggers(save_dir: str, name: str, group: str | None = None, config: dict | None = None) -> list:
    """``logger=none``: nothing is logged."""
    return []


def csv_loggers(save_dir: str, name: str, group: str | None = None, config: dict | None = None) -> list:
    """``logger=csv``: ``<save_dir>/csv/metrics.csv``."""
    from pytorch_lightning.loggers import CSVLogger

    return [CSVLogger(save_dir=save_dir, name="csv", version="")]


def wandb_loggers(save_dir: str, name: str, group: str | None = None, config: dict | None = None,
                  project: str = "bertprune", entity: str | None = None, mode: str | None = None) -> list:
    """``logger=wandb``: the CSV log and a W&B run (``mode`` null: see ``wandb_mode``); a W&B run that cannot
    start leaves the CSV log alone, with a warning."""
    loggers = csv_loggers(save_dir, name)
    try:
        from pytorch_lightning.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        wl = WandbLogger(project=project, entity=entity, name=name, group=group, save_dir=save_dir,
                         mode=wandb_mode(mode), config=config, reinit="finish_previous")
        _ = wl.experiment  # start now so a failure falls back to CSV here, not mid-run
        loggers.append(wl)
    except Exception as e:  # no network, bad key …: never lose the run over logging
        log.warning("W&B logging disabled (%s); metrics still go to CSV in %s", e, save_dir)
    return loggers


def make_loggers(logger_cfg, save_dir: str, name: str, group: str | None = None, config: dict | None = None):
    """The Lightning loggers of one run, built by the factory ``logger_cfg`` names (``_target_``)."""
    from hydra.utils import instantiate

    factory = instantiate(logger_cfg, _partial_=True)  # the run's arguments are passed as they are
    return factory(save_dir=save_dir, name=name, group=group, config=config)


def finish_wandb(exit_code: int = 0, error: str | None = None) -> None:
    """End the current W&B run (sweeps run many jobs in one process); exit_code != 0 marks it failed."""
    try:
        import wandb

        if wandb.run is not None:
            if error:
                wandb.run.summary["error"] = error
            wandb.finish(exit_code=exit_code)
    except Exception:  # pragma: no cover - logging must never break a run
        pass


class JobLoggers:
    """The loggers of one job as a context: ``open`` them once the inputs are checked, ``log`` the
    results; leaving the context always ends the W&B run, with exit code 1 if the job raised (255 if it
    was interrupted), so a failed job leaves a run marked failed, never a missing or dangling one."""

    def __init__(self) -> None:
        self.loggers: list = []

    def open(self, logger_cfg, save_dir: str, name: str, group: str | None = None, config: dict | None = None):
        self.loggers = make_loggers(logger_cfg, save_dir, name=name, group=group, config=config)
        return self.loggers

    @property
    def run(self):
        """The job's wandb run, or None (logger=csv / none, or W&B could not start)."""
        for lg in self.loggers:
            if type(lg).__name__ == "WandbLogger":
                return lg.experiment
        return None

    def run_info(self) -> dict:
        """results.json's ``wandb/*`` entries (id, project, folder, mode, group): what ``write_back`` resumes."""
        run = self.run
        if run is None:
            return {}
        return {R.WANDB_RUN_ID: run.id, R.WANDB_PROJECT: run.project, R.WANDB_ENTITY: run.entity or None,
                R.WANDB_DIR: str(Path(run.dir).parents[2]), R.WANDB_GROUP: run.group or None,
                R.WANDB_MODE: "offline" if run.offline else "online"}

    def log_study(self, results: dict, stages: list[tuple[str, dict]], head_mask=None, neuron_mask=None,
                  run_dir: str | Path | None = None) -> None:
        """The study view of a prune job on its W&B run (nothing without one): the stage series, the kept
        structure, the artifacts. ``stages``: (name, {metric: value}) in order, the pruned model last."""
        run = self.run
        if run is None:
            return
        try:
            log_stages(run, stages)
            log_structure(run, results, head_mask, neuron_mask)
            if run_dir is not None:
                log_artifacts(run, Path(run_dir), results)
        except Exception as e:  # noqa: BLE001 - never lose the job's results over its dashboard
            log.warning("W&B study logging failed (%s: %s); results.json is complete", type(e).__name__, e)

    def log(self, metrics: dict) -> None:
        """The numeric entries of ``metrics``."""
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        for lg in self.loggers:
            lg.log_metrics(numeric)
            lg.save()

    def __enter__(self) -> "JobLoggers":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.loggers:
            if exc_type is None:
                finish_wandb()
            else:
                code = 255 if issubclass(exc_type, KeyboardInterrupt) else 1
                finish_wandb(code, f"{exc_type.__name__}: {exc}")
        return False


# ----------------------------------------------------------------------------------------------
# The study view of a job on its W&B run (wandb's own step metrics, tables, images and artifacts)

STAGE_STEP = "stage/index"


def log_stages(run, stages: list[tuple[str, dict]]) -> None:
    """Each stage's metrics as one point of a series against ``stage/index`` (0 = dense), so a line plot of
    ``stage/<metric>`` shows the stages in order; the ``stages`` table names the indices."""
    import wandb

    run.define_metric(STAGE_STEP)
    run.define_metric("stage/*", step_metric=STAGE_STEP)
    rows = []
    for i, (name, values) in enumerate(stages):
        numeric = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        run.log({STAGE_STEP: i, **{f"stage/{k}": v for k, v in numeric.items()}})
        rows += [[i, name, k, v] for k, v in numeric.items()]
    run.log({"stages": wandb.Table(columns=["index", "stage", "metric", "value"], data=rows)})


def log_structure(run, results: dict, head_mask=None, neuron_mask=None) -> None:
    """Kept heads / FFN neurons per layer: the ``structure`` table and the ``structure_heatmap`` image
    (which heads of each layer are kept, and the kept FFN fraction)."""
    import wandb

    heads, ffn = results.get(R.HEADS_PER_LAYER), results.get(R.FFN_PER_LAYER)
    if not heads or not ffn:
        return
    num_heads = int(head_mask.shape[1]) if head_mask is not None else max(heads)
    ffn_dim = int(neuron_mask.shape[1]) if neuron_mask is not None else max(ffn)
    rows = [[i, h, num_heads, f, ffn_dim, h / num_heads, f / ffn_dim] for i, (h, f) in enumerate(zip(heads, ffn))]
    run.log({"structure": wandb.Table(columns=["layer", "heads_kept", "heads", "neurons_kept", "neurons",
                                               "heads_fraction", "neurons_fraction"], data=rows)})
    run.log({"structure_heatmap": wandb.Image(structure_figure(heads, ffn, num_heads, ffn_dim, head_mask))})


def structure_figure(heads, ffn, num_heads: int, ffn_dim: int, head_mask=None):
    """A matplotlib figure: kept heads (layer x head, the mask itself when given) beside the kept FFN fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    L = len(heads)
    if head_mask is not None:
        grid = np.asarray(head_mask.detach().cpu().float() if hasattr(head_mask, "detach") else head_mask, float)
    else:
        grid = np.array([[1.0 if j < h else 0.0 for j in range(num_heads)] for h in heads])
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 0.35 * L + 1.5), gridspec_kw={"width_ratios": [max(num_heads, 2), 3]})
    a.imshow(grid, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    a.set(xlabel="head", ylabel="layer", title=f"kept heads ({sum(heads)}/{L * num_heads})")
    b.imshow(np.array(ffn, float)[:, None] / ffn_dim, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i, f in enumerate(ffn):
        b.text(0, i, str(f), ha="center", va="center", fontsize=7)
    b.set(xticks=[], yticks=[], title=f"FFN kept of {ffn_dim}")
    fig.tight_layout()
    return fig


def artifact_name(kind: str, run_dir: Path, results: dict) -> str:
    """A W&B artifact name (letters, digits, - _ .): ``<kind>-<task>-<model>-<job folder>``."""
    raw = f"{kind}-{results.get('task', 'task')}-{results.get('model', 'model')}-{run_dir.name}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw)[:128]


def log_artifacts(run, run_dir: Path, results: dict) -> None:
    """The teacher (input), the pruned checkpoint and each ONNX export (outputs) as artifacts. Large files go
    by reference (``file://``: W&B records path, size and checksum, uploads nothing); the ONNX sidecar
    (model.json, small) is stored. Lineage: online the teacher is the run's input (``use_artifact``);
    offline W&B refuses ``use_artifact``, so each artifact's metadata names what it was made from."""
    import wandb

    teacher = results.get("teacher")
    teacher_ref = {"path": str(teacher)} if teacher else {}
    if teacher and not run.offline:
        t = wandb.Artifact(artifact_name("teacher", Path(str(teacher)), results), type="model",
                           metadata={"role": "teacher", **teacher_ref})
        t.add_reference(Path(str(teacher)).resolve().as_uri())
        run.use_artifact(t)
    made = {}
    pruned = results.get("pruned_dir")
    if pruned and Path(pruned).is_dir():
        a = wandb.Artifact(artifact_name("pruned", run_dir, results), type="model",
                           metadata={"role": "pruned", "derived_from": {"teacher": teacher_ref},
                                     **_variant_meta(results)})
        a.add_reference(Path(pruned).resolve().as_uri())
        made["pruned"] = run.log_artifact(a, aliases=["latest", run_dir.name[:120]]).name
    for key, folder in (("onnx", "onnx"), ("int8", "onnx_int8")):
        onnx = results.get(R.export_key(key, "path"))
        if not onnx or not Path(onnx).is_file():
            continue
        a = wandb.Artifact(artifact_name(key, run_dir, results), type="onnx",
                           metadata={"role": key, "derived_from": {"pruned": made.get("pruned"), "teacher": teacher_ref},
                                     **_variant_meta(results)})
        a.add_reference(Path(onnx).resolve().as_uri(), name=Path(onnx).name)
        for extra in sorted(Path(onnx).parent.iterdir()):
            if extra.name.endswith(".onnx.data"):
                a.add_reference(extra.resolve().as_uri(), name=extra.name)
            elif extra.suffix == ".json":
                a.add_file(str(extra), name=extra.name)
        made[key] = run.log_artifact(a, aliases=["latest", run_dir.name[:120]]).name


def _variant_meta(results: dict) -> dict:
    keys = (R.CONSTRAINT, R.MAC_RATIO, R.METHOD, R.METRIC, R.eval_key(results.get(R.METRIC)))
    return {k.replace("/", "_"): results[k] for k in keys if k in results}


# ----------------------------------------------------------------------------------------------
# LoadGen results, later, on the run that made the variant; the sweep's summary run


def write_back(results_path: str | Path, metrics: dict, files: dict | None = None) -> str | None:
    """Resume the W&B run named by a job's results.json (``wandb/run_id``; offline runs resume offline) and
    add ``metrics`` (LoadGen's ``bench/...``) to its history and summary, plus ``files`` ({name in the
    artifact: path}) as a ``bench`` artifact (small files stored, large ones by reference). Returns the run
    id, or None when the job logged no W&B run."""
    import json

    results = json.loads(Path(results_path).read_text())
    run_id = results.get(R.WANDB_RUN_ID)
    if not run_id or not metrics:
        return None
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(id=run_id, resume="allow", project=results.get(R.WANDB_PROJECT),
                     entity=results.get(R.WANDB_ENTITY), dir=results.get(R.WANDB_DIR) or str(Path(results_path).parent),
                     mode=wandb_mode(None) if results.get(R.WANDB_MODE) == "online" else "offline",
                     group=results.get(R.WANDB_GROUP), job_type="bench", reinit="finish_previous")
    try:
        numeric = {k: (float(v) if not isinstance(v, bool) else int(v)) for k, v in metrics.items()
                   if isinstance(v, (int, float))}
        run.log(numeric)
        run.summary.update({k: v for k, v in metrics.items() if v is not None})
        existing = {name: Path(f) for name, f in (files or {}).items() if f and Path(f).is_file()}
        if existing:
            a = wandb.Artifact(artifact_name("bench", Path(results_path).parent, results), type="bench",
                               metadata={"derived_from": {"onnx": results.get(R.export_key("onnx", "path")),
                                                          "int8": results.get(R.export_key("int8", "path"))}})
            for name, f in existing.items():
                if f.stat().st_size < 1_000_000:
                    a.add_file(str(f), name=name)
                else:
                    a.add_reference(f.resolve().as_uri(), name=name)
            run.log_artifact(a)
    finally:
        run.finish()
    return run_id


def log_sweep_table(sweep_dir: str | Path, logger_cfg, group: str, tables: dict) -> str | None:
    """One W&B run for the sweep (job_type ``sweep-summary``, the jobs' group) holding ``tables``
    ({name: pandas DataFrame}); only with ``logger=wandb``. Returns the run id."""
    if not str((logger_cfg or {}).get("_target_", "")).endswith("wandb_loggers"):
        return None
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project=logger_cfg.get("project") or "bertprune", entity=logger_cfg.get("entity"),
                     dir=str(sweep_dir), mode=wandb_mode(logger_cfg.get("mode")), group=group,
                     job_type="sweep-summary", name=f"sweep-{Path(sweep_dir).name}", reinit="finish_previous")
    try:
        for name, df in tables.items():
            run.log({name: wandb.Table(dataframe=df.astype(object).where(df.notna(), None))})
        run.summary["jobs"] = int(len(next(iter(tables.values())))) if tables else 0
        return run.id
    finally:
        run.finish()


# ----------------------------------------------------------------------------------------------
# Reading an offline run back (its ``run-<id>.wandb`` record log: W&B's LevelDB-style framing)

_BLOCK, _HEADER = 32768, 7


class _Torn(Exception):
    """The record log ends inside a chunk: the writer is still at it, or it was killed mid-write."""


def _records(path: Path, data: bytes):
    """The log's records in order. A chunk whose checksum does not match is corruption (ValueError naming
    the offset); a log that ends inside a chunk raises ``_Torn`` after the complete records before it."""
    from wandb.proto import wandb_internal_pb2 as pb

    if len(data) < _HEADER and b":W&B".startswith(data[:4]):
        raise _Torn  # created, its header not (or not wholly) written yet
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (no :W&B header)")
    pos, buf = _HEADER, b""
    while pos < len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        if pos + _HEADER > len(data):
            raise _Torn
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        if len(chunk) < length:
            raise _Torn
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: corrupt record at byte {pos} (checksum mismatch); "
                             "the file was damaged after W&B wrote it")
        pos += _HEADER + length
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""
    if buf:
        raise _Torn


def _parse_run(path: Path, out: dict) -> bool:
    """Fill ``out`` from the log at ``path``; False when the log ends inside a record."""
    import json

    def value(item):
        return "/".join(item.nested_key) if item.nested_key else item.key, json.loads(item.value_json)

    try:
        for r in _records(path, path.read_bytes()):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out.update(id=r.run.run_id, job_type=r.run.job_type, group=r.run.run_group)
                out["config"].update(dict(value(i) for i in r.run.config.update))
            elif kind == "config":
                out["config"].update(dict(value(i) for i in r.config.update))
            elif kind == "history":
                out["history"].append(dict(value(i) for i in r.history.item))
            elif kind == "summary":
                out["summary"].update(dict(value(i) for i in r.summary.update))
            elif kind == "artifact":
                a = r.artifact
                out["artifacts"].append({"name": a.name, "type": a.type,
                                         "metadata": json.loads(a.metadata or "{}"),
                                         "entries": [(e.path, e.ref) for e in a.manifest.contents]})
            elif kind == "exit":
                out["exit_code"] = r.exit.exit_code
    except _Torn:
        return False
    return True


def read_offline_run(folder: str | Path, settle_s: float = 2.0, wait_s: float = 15.0) -> dict:
    """An offline run folder (``offline-run-<time>-<id>``) as plain data: ``id``, ``job_type``, ``group``,
    ``config``, ``history`` (list of rows), ``summary``, ``artifacts`` (name, type, metadata, entries
    [(path, ref)]), ``exit_code``, the media files under ``files/media`` and ``complete`` (the log holds
    the run's exit record and ends on a record boundary).

    W&B's service writes the log on its own after ``run.finish()`` returns, so a log without its exit record
    that changed less than ``settle_s`` ago is read again until it is complete, for at most ``wait_s``. An
    older incomplete log (a live or killed run) is returned as far as it goes, with ``complete`` False."""
    folder = Path(folder)
    files = list(folder.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{folder}: no run-*.wandb file (not a W&B offline run folder)")
    start, said = time.monotonic(), False
    while True:
        out = {"id": None, "job_type": None, "group": None, "config": {}, "history": [], "summary": {},
               "artifacts": [], "exit_code": None}
        whole = _parse_run(files[0], out)
        out["complete"] = whole and out["exit_code"] is not None
        recent = time.time() - files[0].stat().st_mtime < settle_s
        if out["complete"] or not recent:
            break
        if time.monotonic() - start > wait_s:
            log.warning("%s: still incomplete after %.0f s; read up to its last whole record", files[0], wait_s)
            break
        if not said:
            log.info("%s: W&B is still writing it; waiting up to %.0f s for its exit record", files[0], wait_s)
            said = True
        time.sleep(0.1)
    media = folder / "files" / "media"
    out["media"] = sorted(str(p.relative_to(folder / "files")) for p in media.rglob("*")
                          if p.is_file()) if media.is_dir() else []
    return out


def offline_runs(root: str | Path, run_id: str | None = None) -> list[dict]:
    """Every offline run under ``root`` (``**/wandb/offline-run-*``), oldest first; ``run_id``: that run's
    folders only (a resumed run has one folder per session)."""
    folders = sorted(Path(root).rglob("offline-run-*"), key=lambda p: p.name)
    runs = [read_offline_run(f) for f in folders if f.is_dir() and (run_id is None or f.name.endswith(run_id))]
    return runs
