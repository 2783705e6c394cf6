"""The MLPerf Inference submission tree of a bench run, and what goes into it.

``submission/open/<submitter>/`` — an MLPerf Inference **v6.1** open-division tree (LoadGen 6.0.17
carries the v6.1 RNG seeds: check it with the submission checker's ``--version v6.1``):
``results/<system>/<model>/<Scenario>/{performance/run_1, accuracy, measurements.json, user.conf}``,
``systems/<system>.json``, ``src/README.md`` and ``model_mapping.json`` (custom name -> bert-99).
Accuracy logs are truncated and hashed into ``accuracy.txt`` as MLCommons' truncate_accuracy_log.py
does (the full logs stay in the run folders).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from bertprune.io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text, safe_name
from bertprune.mlperf.logs import logged_seeds
from bertprune.mlperf.system import DIVISION, Machine, SystemConfig, default_system_name, describe, detect
from bertprune.onnx.variants import Variant, unstructured_description
from bertprune.tasks.kinds import QuestionAnswering, get_kind

log = logging.getLogger(__name__)

LOADGEN_LOGS = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
BENCHMARK = "bert-99"  # the closed-division model class every variant maps to in model_mapping.json
BENCHMARK_KIND = QuestionAnswering  # bert-99's task kind (SQuAD v1.1; exactly: not v2.0); other kinds' trees never pass as bert-99
# The MLPerf Inference round whose RNG seeds LoadGen logs; the submission checker must be run with this
# --version. Identified from the seeds in the runs' logs (mlperf.conf's qsl/sample_index/schedule seeds).
MLPERF_SEEDS = {"v6.1": {"qsl_rng_seed": 2085463073848966840, "sample_index_rng_seed": 2747215439041700203,
                         "schedule_rng_seed": 16159082839903944936}}
# truncate_accuracy_log.py: logs of VIEWABLE_SIZE bytes or more keep their first and last VIEWABLE_SIZE bytes
ACCURACY_LOG_VIEWABLE = 4096


def measurements(variant: Variant, task, onnx_sha256: str | None = None) -> dict:
    """``measurements.json``: data types, and an honest account of the weights: where they started (the
    public name of the pre-trained model), whether bertprune fine-tuned the teacher, and every transformation
    after it (pruning, ONNX export, INT8)."""
    from bertprune.onnx.export import teacher_provenance

    meta = variant.meta
    prov = meta.get("starting_weights") or teacher_provenance(meta.get("teacher") or meta.get("source_checkpoint"))
    start = prov.get("starting_weights") or variant.onnx.name
    constraint = meta.get("constraint")
    unstructured = meta.get("unstructured")
    how = []  # how pruning changed the weights it kept, without retraining
    if constraint is not None:
        how.append("it rescales kept heads and neurons by least squares")
    if unstructured:
        how.append("one-shot unstructured pruning" + (" with the second-order update of the remaining weights"
                                                      if unstructured.get("method") == "obs" else
                                                      " that only sets weights to zero"))
    how = "; ".join(how) or "it does not change the weights"
    steps = []
    if prov.get("fine_tuned_by_bertprune"):
        ft = prov.get("fine_tuning") or {}
        steps.append(f"fine-tuned by bertprune (train.py) from {start} on task {ft.get('task') or task.name} "
                     f"({ft.get('epochs')} epochs, lr {ft.get('lr')}, batch size {ft.get('batch_size')}, "
                     f"seed {ft.get('seed')})")
        retraining = (f"yes: the dense teacher was fine-tuned from {start} by bertprune (train.py); pruning itself "
                      f"does not retrain ({how})")
    elif prov.get("fine_tuned_by_bertprune") is None:
        retraining = (f"unknown: the teacher {start} is not on this machine, so whether bertprune fine-tuned it "
                      "cannot be told; pruning itself does not retrain")
    elif constraint is not None or unstructured:
        retraining = (f"no: bertprune pruned {start} without retraining ({how}); it did not fine-tune that "
                      "starting checkpoint")
    else:
        retraining = f"no: bertprune exported {start} as it is (dense); it did not fine-tune it"
    if constraint is not None:
        steps.append(f"pruned (Kwon et al. 2022, retraining-free structured pruning of heads and FFN neurons; "
                     f"constraint={constraint}, mac_ratio={meta.get('mac_ratio')}, "
                     f"heads_per_layer={meta.get('heads_per_layer')}, ffn_per_layer={meta.get('ffn_per_layer')})")
    elif not unstructured:
        steps.append("not pruned (dense)")
    if unstructured:
        steps.append(f"{unstructured_description(unstructured)}; the zeros stay in dense tensors (the runtime "
                     "decides whether they give any speed)")
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
    return safe_name(f"{task.name}-{variant.name}")


def mlperf_version(runs) -> str | None:
    """The MLPerf Inference round whose seeds the runs' LoadGen logged (``MLPERF_SEEDS``): "v6.1" for
    LoadGen 6.0.17; "unknown" for seeds of another round (with a warning); None when no run logged any."""
    found = [logged_seeds(r["log_dir"]) for r in runs if r.get("status") == "ok" and r.get("log_dir")]
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
    import hashlib

    data = Path(src).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if len(data) >= ACCURACY_LOG_VIEWABLE:
        data = data[:ACCURACY_LOG_VIEWABLE] + b"\n\n...\n\n" + data[-ACCURACY_LOG_VIEWABLE:]
    atomic_write_bytes(dst, data)
    return digest


def write_submission(root: Path, plans, scenarios, runs: dict, task, system_name: str | None = None,
                     submitter: str = "bertprune", submission: bool = False, version: str | None = None,
                     system: SystemConfig | None = None, machine: Machine | None = None) -> Path:
    """The open-division tree for every finished run (built in a temp folder, moved into place).

    Accuracy: LoadGen's logs, ``mlperf_log_accuracy.json`` truncated and ``accuracy.txt`` (the metric line
    at full precision + ``hash=<sha256 of the full log>``), as MLCommons' truncate_accuracy_log.py leaves them.
    version: the MLPerf round the runs' seeds belong to (``mlperf_version``), named in src/README.md."""
    machine = machine or detect(root.parent)
    system_config, system = system, safe_name(system_name) if system_name else default_system_name(machine)
    base_rel = Path(DIVISION) / safe_name(submitter)
    providers = {r.get("provider") for r in runs.values() if r.get("provider")}
    mapping = {}
    with atomic_dir(root) as tmp:
        base = tmp / base_rel
        atomic_write_json(base / "systems" / f"{system}.json", describe(system, submitter, providers, system_config, machine))
        runtime = "deepsparse" if any(str(x).startswith("DeepSparse") for x in providers) else "onnxruntime"
        atomic_write_text(base / "src" / "README.md", _src_readme(task, submission, version, submitter, runtime))
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
                    atomic_write_text(dst / "accuracy.txt", f"{line}\n\nhash={digest}\n")
                shutil.copy2(Path(done[0]["log_dir"]) / "user.conf", sdir / "user.conf")
                sha = next((r.get("onnx_sha256") for r in done if r.get("onnx_sha256")), None)
                atomic_write_json(sdir / "measurements.json", measurements(p.variant, task, sha))
                atomic_write_text(sdir / "README.md",
                    f"# {model} {s.loadgen}\n\n{p.variant.onnx} (variant {p.variant.name}) on task {task.name}, "
                    f"run with `python bench.py source=<sweep> task={task.name} scenario=[{s.name}]"
                    f"{' submission=true' if submission else ''}{' runtime=deepsparse' if runtime == 'deepsparse' else ''}`.\n")
        atomic_write_json(base / "model_mapping.json", mapping)
    return root / base_rel


def _copy(src: Path, dst: Path, names) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        if (src / n).is_file():
            shutil.copy2(src / n, dst / n)


def _src_readme(task, submission: bool, version: str | None = None, submitter: str = "bertprune",
                runtime: str = "onnxruntime") -> str:
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
        + ("DeepSparse (Neural Magic's sparse CPU engine, compiled for static shapes) under MLPerf LoadGen.\n\n"
           if runtime == "deepsparse" else "ONNX Runtime under MLPerf LoadGen.\n\n")
        + seeds + check +
        f"Reproduce: `python prune.py -m constraint=...`, `python export.py ...`, then "
        f"`python bench.py source=<sweep folder> task={task.name} scenario=[offline,single_stream]"
        f"{' submission=true' if submission else ''}{' runtime=deepsparse' if runtime == 'deepsparse' else ''}`.\n\n"
        + ("" if submission else "These are LOCAL runs (short min_duration): not valid for an official submission; "
                                 "rerun with submission=true.\n")
        + ("" if type(get_kind(task.kind)) is BENCHMARK_KIND else
           f"\nNote: task {task.name} is not SQuAD v1.1, so this tree can never pass as bert-99: its performance "
           "runs hold fewer than the 10,833 performance samples bert-99 needs (the task's validation set), its "
           "accuracy run does not cover SQuAD v1.1's 10,833 samples and its metric is not SQuAD v1.1 F1. model_mapping.json "
           "maps to bert-99 only to keep the tree's shape; the layout, system description, seeds and logs are "
           "still checked.\n"))
