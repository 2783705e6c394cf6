"""MLPerf LoadGen harness for exported variants (ONNX in the MLPerf Inference BERT interface).

Pieces, each usable on its own (no Hydra here)::

    discover_variants / check_variant     which ONNX files to run, checked against the task
    prepare_features / load_features      the QSL's data: the task's validation features, cached
    OrtSUT                                LoadGen SUT over one ONNX Runtime session
    calibrate / loadgen_config            expected QPS / latency so short local runs come out VALID
    run_loadgen                           one variant x scenario x mode (runs in its own process); it
                                          hashes the ONNX bytes it loads and checks them against the export
    run_isolated                          launch run_loadgen in a subprocess (progress logged, a default
                                          time limit: default_time_limit), with one retune retry
    parse_summary / read_accuracy_log / task_metrics   read LoadGen's logs back

Why one process per run: ``TestSettings.FromConfig`` loads LoadGen's built-in mlperf.conf (official
seeds, 600 s minimum) only the first time it is called in a process, so every variant x scenario x
mode runs as ``python -m bertprune.mlperf.harness --spec run_spec.json``.

Output rows handed to LoadGen: classification/regression -> the float32 logits ``[num_labels]``;
QA -> start/end logits stacked as float32 ``[seq, 2]`` (what MLPerf's reference BERT harness logs).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

# Config-group name -> LoadGen scenario name.
SCENARIOS = {"offline": "Offline", "single_stream": "SingleStream", "multi_stream": "MultiStream", "server": "Server"}
MODES = ("performance", "accuracy")
INPUT_NAMES = ("input_ids", "input_mask", "segment_ids")
QA_OUTPUT_NAMES = ("output_start_logits", "output_end_logits")
LOGITS_OUTPUT = "logits"
LOADGEN_MODEL = "bert"  # the model key of LoadGen's mlperf.conf
BERT_PERFORMANCE_SAMPLE_COUNT = 10833  # mlperf.conf: bert.*.performance_sample_count_override
BERT_SERVER_TARGET_LATENCY_MS = 130  # mlperf.conf: bert.Server.target_latency
# The submission checker asks bert-99 SingleStream for 1024 queries; mlperf.conf leaves LoadGen's 100.
SUBMISSION_MIN_QUERY_COUNT = {"SingleStream": 1024}

# Calibration -> LoadGen targets. LoadGen pre-generates its queries from these, so:
OFFLINE_QPS_MARGIN = 1.5  # Offline issues 1.1 x min_duration x expected_qps samples: overestimating is safe
LATENCY_MARGIN = 0.5  # Single/MultiStream: an expected latency below the real one is safe
SERVER_LOAD = 0.5  # Server: offer half the measured capacity ...
SERVER_LATENCY_FACTOR = 20  # ... and (local runs) allow 20 x the single-query latency, at least 130 ms

RESULT_FILE = "result.json"
SPEC_FILE = "run_spec.json"
HARNESS_LOG = "harness.log"


def _atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Scenarios


def scenario_key(name: str) -> str:
    """``offline`` / ``Offline`` / ``single-stream`` ... -> the config-group name (``single_stream``)."""
    canon = {k: k for k in SCENARIOS} | {v.lower(): k for k, v in SCENARIOS.items()}
    key = canon.get(str(name).strip().lower().replace("-", "_"))
    if key is None:
        raise ValueError(f"unknown scenario {name!r}; expected one of {sorted(SCENARIOS)} "
                         f"(LoadGen names {sorted(SCENARIOS.values())})")
    return key


@dataclass
class ScenarioSettings:
    """One LoadGen scenario as configured in ``conf/scenario/<name>.yaml``.

    target_qps: Offline = LoadGen's expected QPS, Server = the offered load; None = calibrate.
    target_latency_ms: Single/MultiStream = LoadGen's expected latency (None = calibrate);
    Server = the latency bound (None = 130 ms of mlperf.conf; local runs raise it to
    20 x the measured latency when the model is too slow for 130 ms).
    min_duration_ms / min_query_count apply to local runs only; ``submission=True`` uses mlperf.conf.
    """

    name: str
    loadgen: str | None = None
    batch_size: int = 1
    workers: int = 1
    intra_op_threads: int | None = None
    target_qps: float | None = None
    target_latency_ms: float | None = None
    samples_per_query: int | None = None
    min_duration_ms: int = 10000
    min_query_count: int | None = None
    calibration_s: float = 1.0

    def __post_init__(self):
        self.name = scenario_key(self.name)
        expected = SCENARIOS[self.name]
        if self.loadgen is None:
            self.loadgen = expected
        elif self.loadgen != expected:
            raise ValueError(f"scenario {self.name}: loadgen={self.loadgen!r} but the {self.name} scenario is "
                             f"LoadGen's {expected!r}")
        for key in ("batch_size", "workers"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"scenario {self.name}: {key}={getattr(self, key)} must be >= 1")
        for key in ("target_qps", "target_latency_ms"):
            value = getattr(self, key)
            if value is not None and not float(value) > 0:
                raise ValueError(f"scenario {self.name}: {key}={value} must be > 0 (or null to calibrate)")
        if self.min_duration_ms < 0:
            raise ValueError(f"scenario {self.name}: min_duration_ms={self.min_duration_ms} must be >= 0")
        if self.samples_per_query is not None and self.samples_per_query < 1:
            raise ValueError(f"scenario {self.name}: samples_per_query must be >= 1")

    @classmethod
    def from_config(cls, name: str, cfg: Mapping | None = None) -> "ScenarioSettings":
        data = dict(cfg or {})
        data.pop("name", None)
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"scenario {name}: unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(name=name, **data)

    @property
    def query_size(self) -> int:
        """Samples per LoadGen query in Single/MultiStream (MultiStream: mlperf.conf's 8 unless set)."""
        if self.loadgen == "MultiStream":
            return self.samples_per_query or 8
        return 1


def resolve_scenarios(scenarios) -> list[ScenarioSettings]:
    """Names, a {name: settings} mapping (the composed ``scenario`` config group) or ScenarioSettings."""
    if scenarios is None:
        scenarios = []
    if isinstance(scenarios, str):
        scenarios = [scenarios]
    if isinstance(scenarios, Mapping):
        out = [ScenarioSettings.from_config(k, v) for k, v in scenarios.items()]
    else:
        out = [s if isinstance(s, ScenarioSettings) else ScenarioSettings(name=s) for s in scenarios]
    if not out:
        raise ValueError(f"no scenario selected; choose some, e.g. scenario=[offline,single_stream] "
                         f"(available: {sorted(SCENARIOS)})")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"scenario listed twice: {names}")
    return out


def resolve_modes(mode: str) -> list[str]:
    if mode == "both":
        return list(MODES)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; expected performance, accuracy or both")
    return [mode]


# ----------------------------------------------------------------------------------------------
# Variants (exported ONNX folders) and their interface


@dataclass
class Variant:
    """One exported model: ``model.onnx`` and its ``model.json`` sidecar (``meta``; {} if absent)."""

    name: str
    onnx: Path
    meta: dict = field(default_factory=dict)

    @property
    def precision(self) -> str:
        return self.meta.get("precision") or ("int8" if "int8" in self.name else "fp32")

    @property
    def mac_ratio(self) -> float | None:
        value = self.meta.get("mac_ratio")
        return None if value is None else float(value)

    @property
    def file_size(self) -> int:
        """Bytes on disk: the .onnx plus its external-data file if the exporter wrote one."""
        size = self.onnx.stat().st_size
        data = self.onnx.with_name(self.onnx.name + ".data")
        if data.is_file():
            size += data.stat().st_size
        return size

    @property
    def tokenizer_candidates(self) -> list[Path]:
        """Where the sidecar says the tokenizer is: ``tokenizer`` (relative to the variant folder, so a
        copied or moved sweep still finds it; absolute in older exports), then ``tokenizer_absolute``
        (its place at export time)."""
        out = []
        for key in ("tokenizer", "tokenizer_absolute"):
            value = self.meta.get(key)
            if value:
                path = Path(value)
                out.append(path if path.is_absolute() else self.onnx.parent / path)
        return out

    @property
    def tokenizer(self) -> Path | None:
        """The first of ``tokenizer_candidates`` that exists (else the first one; None if the sidecar names none)."""
        cands = self.tokenizer_candidates
        return next((c for c in cands if c.exists()), cands[0] if cands else None)

    @property
    def sha256(self) -> str | None:
        """The ONNX file's sha256 as its export recorded it (None without a sidecar)."""
        return self.meta.get("sha256") or None

    def check_sha256(self) -> str:
        """Hash the ONNX file now; raise if it differs from the sha256 its sidecar recorded. Returns the hash."""
        from bertprune.resources import sha256_file

        digest = sha256_file(self.onnx)
        if self.sha256 and digest != self.sha256:
            raise ValueError(sha256_mismatch(self.onnx, digest, self.sha256))
        return digest


def sha256_mismatch(path, found: str, recorded: str) -> str:
    return (f"{path} has sha256 {found} but its export recorded {recorded} (model.json): the file was replaced "
            "or modified after export, so its results would be reported for another model. Re-export the "
            "variant (python export.py ...), or restore the exported file.")


def load_variant(path: str | Path) -> Variant:
    """A ``.onnx`` file (sidecar ``<stem>.json`` optional) or a folder holding ``model.onnx``."""
    path = Path(path)
    if path.is_dir():
        onnx_path = path / "model.onnx"
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{path} holds no model.onnx; pass an exported variant folder, a sweep "
                                    "folder or a .onnx file")
    else:
        onnx_path = path
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    if onnx_path.suffix != ".onnx":
        raise ValueError(f"{onnx_path} is not a .onnx file")
    sidecar = onnx_path.with_suffix(".json")
    meta: dict = {}
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{sidecar}: sidecar is not valid JSON ({e}); re-export the variant") from e
        if not isinstance(meta, dict):
            raise ValueError(f"{sidecar}: sidecar must be a JSON object")
    default = onnx_path.parent.name if onnx_path.name == "model.onnx" else onnx_path.stem
    return Variant(name=str(meta.get("variant") or default), onnx=onnx_path, meta=meta)


def _hidden(path: Path, root: Path) -> bool:
    # atomic_dir writes into ".<name>.tmp-*" siblings: never benchmark a half-written export
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def discover_variants(source) -> list[Variant]:
    """Variants under ``source``: a .onnx file, a variant folder, a sweep folder (every
    ``**/model.json`` next to a ``model.onnx``), or a list of those. Names are made unique; order:
    dense first, then MACs kept descending, FP32 before INT8."""
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    variants: list[Variant] = []
    for src in sources:
        src = Path(src)
        if not src.exists():
            raise FileNotFoundError(f"bench source not found: {src} (expected a .onnx file, an exported variant "
                                    "folder or a sweep folder)")
        if src.is_file() or (src / "model.onnx").is_file():
            variants.append(load_variant(src))
            continue
        found = sorted(p.parent for p in src.rglob("model.json")
                       if (p.parent / "model.onnx").is_file() and not _hidden(p, src))
        if not found:
            raise FileNotFoundError(f"no exported variants under {src}: looked for **/model.json next to a "
                                    "model.onnx (run export first, or pass a .onnx file)")
        variants.extend(load_variant(d) for d in found)
    # dense first, then by MACs kept (descending), FP32 before INT8
    variants.sort(key=lambda v: (-(v.mac_ratio if v.mac_ratio is not None else 1.0), v.precision != "fp32",
                                 str(v.onnx)))
    _unique_names(variants)
    return variants


def _unique_names(variants: list[Variant]) -> None:
    counts: dict[str, int] = {}
    for v in variants:
        counts[v.name] = counts.get(v.name, 0) + 1
    for v in variants:
        if counts[v.name] > 1:  # e.g. two sweeps with the same constraint: add the job folder
            job = v.onnx.parent.parent.name if v.onnx.name == "model.onnx" else v.onnx.parent.name
            v.name = f"{v.name}@{job}"
    seen: dict[str, int] = {}
    for v in variants:
        n = seen.get(v.name, 0)
        seen[v.name] = n + 1
        if n:
            v.name = f"{v.name}#{n + 1}"


@dataclass
class Signature:
    """What the harness needs to know about an ONNX file's interface."""

    seq_len: int | None  # None: dynamic sequence dimension (length bucketing allowed)
    outputs: list[str]
    output_dims: int | None  # classification: num_labels when static


def _dims(value_info) -> tuple:
    shape = value_info.type.tensor_type.shape
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in shape.dim)


def inspect_onnx(path: Path):
    """(inputs, outputs) as lists of (name, elem_type, dims); dims None = symbolic."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, truncated file ...
        raise ValueError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e}); the file is corrupt "
                         "or not ONNX. Re-export it (python export.py ...).") from e
    if model.ir_version == 0 or not model.graph.output:
        raise ValueError(f"{path} is not a valid ONNX model (no IR version or no graph outputs); the file is "
                         "corrupt or empty. Re-export it.")
    init = {i.name for i in model.graph.initializer}
    ins = [(v.name, v.type.tensor_type.elem_type, _dims(v)) for v in model.graph.input if v.name not in init]
    outs = [(v.name, v.type.tensor_type.elem_type, _dims(v)) for v in model.graph.output]
    return ins, outs


def check_variant(variant: Variant, kind: str, num_labels: int, max_length: int, task_name: str | None = None
                  ) -> Signature:
    """Check the ONNX interface against the task before anything runs; one clear error otherwise.

    Inputs: exactly input_ids, input_mask, segment_ids, int64 [batch, seq] (seq == max_length if fixed).
    Outputs: qa -> output_start_logits, output_end_logits [batch, seq]; classification/regression ->
    logits [batch, num_labels].
    """
    INT64, FLOAT = 7, 1
    path = variant.onnx
    meta_task = variant.meta.get("task") or {}
    if task_name is not None and meta_task.get("name") and meta_task["name"] != task_name:
        raise ValueError(f"variant {variant.name} ({path}) was exported for task {meta_task['name']!r} but the "
                         f"bench task is {task_name!r}; pass task={meta_task['name']}")
    if meta_task.get("kind") and meta_task["kind"] != kind:
        raise ValueError(f"variant {variant.name} ({path}) is a {meta_task['kind']} model but the task is {kind}")
    ins, outs = inspect_onnx(path)
    names = [n for n, _, _ in ins]
    if sorted(names) != sorted(INPUT_NAMES):
        raise ValueError(f"{path}: inputs {names} do not match the MLPerf BERT interface, which needs exactly "
                         f"{list(INPUT_NAMES)} (int64 [batch, seq]). Export with bertprune.onnx.export.")
    seqs = set()
    for name, elem, dims in ins:
        if elem != INT64 or len(dims) != 2:
            raise ValueError(f"{path}: input {name} must be int64 [batch, seq], got elem_type={elem} rank={len(dims)}")
        seqs.add(dims[1])
    if len(seqs) != 1:
        raise ValueError(f"{path}: inputs disagree on the sequence dimension: {sorted(map(str, seqs))}")
    seq_len = seqs.pop()
    if seq_len is not None and seq_len != max_length:
        raise ValueError(f"{path}: fixed sequence length {seq_len} but the task's max_length is {max_length}; "
                         "re-export with the task's length or a dynamic sequence dimension")
    out_names = [n for n, _, _ in outs]
    if kind == "qa":
        if tuple(out_names[:2]) != QA_OUTPUT_NAMES:
            raise ValueError(f"{path}: outputs {out_names}; a question-answering model must output "
                             f"{list(QA_OUTPUT_NAMES)} (float32 [batch, seq]). Is this a classification model?")
        for name, elem, dims in outs[:2]:
            if len(dims) != 2 or elem != FLOAT:
                raise ValueError(f"{path}: output {name} must be float32 [batch, seq], got rank {len(dims)}")
        return Signature(seq_len=seq_len, outputs=list(QA_OUTPUT_NAMES), output_dims=None)
    match = [o for o in outs if o[0] == LOGITS_OUTPUT]
    if not match:
        raise ValueError(f"{path}: outputs {out_names}; a {kind} model must output '{LOGITS_OUTPUT}' "
                         f"[batch, {num_labels}]. Is this a question-answering model? (then pass task=squad)")
    _, elem, dims = match[0]
    if len(dims) != 2 or elem != FLOAT:
        raise ValueError(f"{path}: output logits must be float32 [batch, num_labels], got rank {len(dims)}")
    if dims[1] is not None and dims[1] != num_labels:
        raise ValueError(f"{path}: logits have {dims[1]} columns but the task has num_labels={num_labels}")
    return Signature(seq_len=seq_len, outputs=[LOGITS_OUTPUT], output_dims=dims[1])


# ----------------------------------------------------------------------------------------------
# Features (the QSL's data)

FEATURES_FORMAT = "bertprune.mlperf.harness.features/1"


@dataclass
class Features:
    """Model inputs for every validation sample. N samples, L = max_length.

    input_ids, input_mask, segment_ids: int64 [N, L] (padding on the right); labels: [N]
    (classification int64, regression float32); qa: ``squad`` (SquadFeatures) + ``examples``.
    """

    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    labels: np.ndarray | None = None
    squad: object | None = None
    examples: list | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        """Real tokens per sample [N]."""
        if getattr(self, "_lengths", None) is None:
            self._lengths = self.input_mask.sum(axis=1).astype(np.int64)
        return self._lengths


def _tokenizer_fingerprint(tokenizer) -> str:
    from bertprune.resources import sha256_file

    p = Path(str(tokenizer))
    if not p.is_dir():
        return str(tokenizer)  # a hub name
    files = sorted(f for f in p.iterdir() if f.name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                                                        "special_tokens_map.json", "merges.txt", "vocab.json"))
    return ",".join(f"{f.name}:{sha256_file(f)[:16]}" for f in files) or str(p.resolve())


def features_key(task, tokenizer) -> str:
    """Cache key: the task config, the data file's content and the tokenizer's files."""
    from bertprune.resources import config_key, sha256_file

    data = {"format": FEATURES_FORMAT, "task": asdict(task), "tokenizer": _tokenizer_fingerprint(tokenizer)}
    for key in ("data_file", "validation_file"):
        value = getattr(task, key, None)
        if value and Path(value).is_file():
            data[f"{key}_sha256"] = sha256_file(value)
    return config_key(data)


def prepare_features(task, tokenizer, cache_root: str | Path | None = None) -> Path:
    """Build (or reuse) the validation features of ``task`` with ``tokenizer`` (a folder or hub name).

    Returns the cache base path ``<cache>/features/<task>-<key>`` (files ``.npz``; qa adds ``.json``
    with the SQuAD maps and ``.examples.json``). Written atomically: the ``.npz`` appears last.
    """
    from bertprune.resources import cache_dir

    root = Path(cache_root) if cache_root is not None else cache_dir() / "features"
    root.mkdir(parents=True, exist_ok=True)
    base = root / f"{task.name}-{features_key(task, tokenizer)}"
    if Path(f"{base}.npz").is_file():
        return base
    from bertprune.models import load_tokenizer

    tok = load_tokenizer(str(tokenizer))
    tmp = root / f".{base.name}.tmp-{os.getpid()}"
    if task.kind == "qa":
        _build_squad_features(task, tok, tmp)
        suffixes = (".examples.json", ".json", ".npz")
    else:
        _build_text_features(task, tok, tmp)
        suffixes = (".npz",)
    for suffix in suffixes:  # .npz last: its presence marks a complete cache entry
        os.replace(f"{tmp}{suffix}", f"{base}{suffix}")
    log.info("features for %s cached at %s.npz", task.name, base)
    return base


def _build_text_features(task, tok, tmp: Path) -> None:
    from bertprune.tasks.data import load_task_data

    val = load_task_data(task)["validation"]
    texts = [list(val[f]) for f in task.text_fields]
    enc = tok(*texts, truncation=True, max_length=task.max_length, padding="max_length", return_tensors="np")
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)
    seg = np.asarray(enc["token_type_ids"], dtype=np.int64) if "token_type_ids" in enc else np.zeros_like(ids)
    labels = np.asarray(val["label"], dtype=np.float32 if task.kind == "regression" else np.int64)
    np.savez(f"{tmp}.npz", input_ids=ids, input_mask=mask, segment_ids=seg, labels=labels)


def _build_squad_features(task, tok, tmp: Path) -> None:
    from bertprune.tasks.squad import featurize, load_squad, load_squad_hub

    examples = load_squad(task.data_file) if task.data_file else load_squad_hub()
    feats = featurize(examples, tok, max_seq_length=task.max_length, doc_stride=task.doc_stride,
                      max_query_length=task.max_query_length, progress=False)
    feats.save(f"{tmp}.npz")
    Path(f"{tmp}.examples.json").write_text(json.dumps([asdict(e) for e in examples]), encoding="utf-8")


def load_features(base: str | Path, kind: str) -> Features:
    """Inverse of ``prepare_features`` (arrays loaded with ``allow_pickle=False``)."""
    base = str(base)
    if base.endswith(".npz"):
        base = base[:-4]
    if not Path(f"{base}.npz").is_file():
        raise FileNotFoundError(f"features not found: {base}.npz")
    if kind == "qa":
        from bertprune.tasks.squad import SquadExample, SquadFeatures

        sq = SquadFeatures.load(f"{base}.npz")
        examples = [SquadExample(**e) for e in json.loads(Path(f"{base}.examples.json").read_text(encoding="utf-8"))]
        return Features(sq.input_ids, sq.input_mask, sq.segment_ids, squad=sq, examples=examples)
    with np.load(f"{base}.npz", allow_pickle=False) as z:
        return Features(z["input_ids"], z["input_mask"], z["segment_ids"], labels=z["labels"])


# ----------------------------------------------------------------------------------------------
# System under test


def plan_batches(indices: np.ndarray, batch_size: int, lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """Positions into ``indices`` grouped in batches of ``batch_size`` (the last one partial).

    With ``lengths`` [N] (real tokens per QSL index), positions are sorted by (length, index) first,
    so each batch holds similar lengths and can be trimmed to its longest member.
    """
    order = np.arange(len(indices))
    if lengths is not None and len(indices) > 1:
        order = np.lexsort((indices, lengths[indices]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def loadgen_complete(samples: Sequence, outputs: np.ndarray | None) -> None:
    """Report ``samples`` done to LoadGen; row i of ``outputs`` (C-contiguous) is sample i's response.

    ``outputs`` stays referenced until QuerySamplesComplete returns (LoadGen copies the bytes it logs).
    outputs=None (inference failed) completes the samples with empty responses so the test never hangs.
    """
    import mlperf_loadgen as lg

    if outputs is None:
        responses = [lg.QuerySampleResponse(s.id, 0, 0) for s in samples]
    else:
        base, row = outputs.ctypes.data, outputs[0].nbytes
        responses = [lg.QuerySampleResponse(s.id, base + i * row, row) for i, s in enumerate(samples)]
    lg.QuerySamplesComplete(responses)


class OrtSUT:
    """LoadGen system under test over one ONNX Runtime session.

    * Offline: the query's samples are sorted by length (dynamic classification models), cut into
      batches of ``batch_size`` (trimmed to their longest real length) and run by ``workers`` threads.
    * SingleStream: one sample per query, run inline in issue_queries.
    * MultiStream: the query's samples batched (``batch_size``), inline.
    * Server: queries go to a queue; ``workers`` threads each take what is queued (up to
      ``batch_size`` samples, never waiting for more) and run it.
    Every sample is completed exactly once, including a last partial batch and failed batches.
    ``complete(samples, outputs)`` defaults to :func:`loadgen_complete` (tests pass a recorder).
    """

    def __init__(self, session, features: Features, scenario: ScenarioSettings, kind: str,
                 seq_len: int | None = None, complete: Callable | None = None):
        self.session = session
        self.features = features
        self.scenario = scenario
        self.kind = kind
        self.output_names = list(QA_OUTPUT_NAMES) if kind == "qa" else [LOGITS_OUTPUT]
        # QA logits are per token [seq]: keep the full length; classification may trim if seq is dynamic
        self.trim = kind != "qa" and seq_len is None
        self.batch_size = int(scenario.batch_size)
        self._complete = complete or loadgen_complete
        self._threaded = scenario.loadgen in ("Offline", "Server")
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self.completed = 0
        self.batches = 0

    # -- lifecycle
    def start(self) -> "OrtSUT":
        if self._threaded and not self._threads:
            for i in range(self.scenario.workers):
                t = threading.Thread(target=self._worker, name=f"sut-worker-{i}", daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()
        self._threads = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- QSL callbacks (features already live in RAM)
    def load_samples(self, indices) -> None:
        pass

    def unload_samples(self, indices) -> None:
        pass

    # -- inference
    def infer(self, indices: np.ndarray) -> np.ndarray:
        """Outputs for QSL ``indices`` [B]: float32 [B, num_labels] or (qa) [B, seq, 2], C-contiguous."""
        f = self.features
        length = max(1, int(f.lengths[indices].max())) if self.trim else f.max_length
        feeds = {"input_ids": f.input_ids[indices, :length], "input_mask": f.input_mask[indices, :length],
                 "segment_ids": f.segment_ids[indices, :length]}
        outs = self.session.run(self.output_names, feeds)
        if self.kind == "qa":
            return np.ascontiguousarray(np.stack(outs[:2], axis=-1), dtype=np.float32)
        return np.ascontiguousarray(outs[0], dtype=np.float32)

    def batches_for(self, indices: np.ndarray, batch_size: int | None = None) -> list[np.ndarray]:
        return plan_batches(indices, batch_size or self.batch_size, self.features.lengths if self.trim else None)

    def _process(self, samples: Sequence) -> None:
        idx = np.fromiter((s.index for s in samples), dtype=np.int64, count=len(samples))
        try:
            out = self.infer(idx)
        except Exception as e:  # never leave LoadGen waiting: complete, remember, raise after the test
            log.exception("inference failed for a batch of %d samples", len(samples))
            with self._lock:
                self.errors.append(f"{type(e).__name__}: {e}")
            out = None
        self._complete(samples, out)
        with self._lock:
            self.completed += len(samples)
            self.batches += 1

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.scenario.loadgen == "Server":  # dynamic batching: take what is queued, never wait
                while len(item) < self.batch_size:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._queue.put(None)  # leave the stop signal for a worker
                        break
                    item = item + more
            self._process(item)

    def issue_queries(self, samples) -> None:
        samples = list(samples)
        if not samples:
            return
        kind = self.scenario.loadgen
        if kind == "Server":
            self._queue.put(samples)
            return
        idx = np.fromiter((s.index for s in samples), dtype=np.int64, count=len(samples))
        for batch in self.batches_for(idx):
            chunk = [samples[i] for i in batch]
            if kind == "Offline":
                self._queue.put(chunk)
            else:
                self._process(chunk)

    def flush_queries(self) -> None:
        """Nothing is held back waiting for a fuller batch, so there is nothing to flush."""

    def run_all(self, indices: np.ndarray | None = None, batch_size: int | None = None) -> np.ndarray:
        """Direct evaluation (no LoadGen): outputs for ``indices`` (default all), in index order."""
        n = len(self.features)
        indices = np.arange(n) if indices is None else np.asarray(indices)
        out = None
        for batch in self.batches_for(indices, batch_size):
            rows = self.infer(indices[batch])
            if out is None:
                out = np.empty((len(indices), *rows.shape[1:]), dtype=np.float32)
            out[batch] = rows
        return out


# ----------------------------------------------------------------------------------------------
# Calibration and LoadGen settings


@dataclass
class Calibration:
    """ORT timed directly with the scenario's batching. latency_s: per query (min / median)."""

    throughput: float  # samples/s
    latency_min_s: float
    latency_median_s: float
    queries: int
    seconds: float


def calibrate(sut: OrtSUT, seconds: float = 1.0, seed: int = 0) -> Calibration:
    """Time the SUT's own batching for ~``seconds`` on random samples (one warm-up query first)."""
    n = len(sut.features)
    rng = np.random.default_rng(seed)
    sc = sut.scenario
    if sc.loadgen == "Offline":
        pool = rng.permutation(n)[: max(16 * sut.batch_size, 256)]
        groups = [pool[b] for b in sut.batches_for(pool)]
    else:
        per_query = sc.query_size if sc.loadgen != "Server" else 1
        groups = [rng.integers(0, n, size=per_query) for _ in range(256)]
    sut.infer(groups[0])  # warm-up
    times, samples, t_end = [], 0, time.perf_counter() + seconds
    while True:
        for g in groups:
            t0 = time.perf_counter()
            if sc.loadgen == "MultiStream":
                for b in sut.batches_for(g):
                    sut.infer(g[b])
            else:
                sut.infer(g)
            times.append(time.perf_counter() - t0)
            samples += len(g)
            if time.perf_counter() >= t_end and len(times) >= 3:
                break
        if time.perf_counter() >= t_end and len(times) >= 3:
            break
    total = float(np.sum(times))
    return Calibration(throughput=samples / total, latency_min_s=float(np.min(times)),
                       latency_median_s=float(np.median(times)), queries=len(times), seconds=total)


def loadgen_config(sc: ScenarioSettings, calib: Calibration | None, total_samples: int, submission: bool
                   ) -> tuple[str, dict, dict]:
    """(user.conf text, exact TestSettings attributes, the targets used).

    user.conf takes whole milliseconds for latencies: a sub-millisecond expected latency is set on
    TestSettings directly (noted in user.conf).
    """
    S = sc.loadgen
    lines = [f"# bertprune {'submission' if submission else 'local (short, not for submission)'} run: "
             f"{S} of model '{LOADGEN_MODEL}'; mlperf.conf is built into LoadGen."]
    exact: dict = {}
    used: dict = {}

    def put(key: str, value) -> None:
        lines.append(f"{LOADGEN_MODEL}.{S}.{key} = {value}")

    perf_count = min(total_samples, BERT_PERFORMANCE_SAMPLE_COUNT)
    if perf_count != BERT_PERFORMANCE_SAMPLE_COUNT:
        put("performance_sample_count_override", perf_count)
    used["performance_sample_count"] = perf_count
    if not submission:
        put("min_duration", int(sc.min_duration_ms))
        used["min_duration_ms"] = int(sc.min_duration_ms)
        if sc.min_query_count is not None:
            put("min_query_count", int(sc.min_query_count))
            used["min_query_count"] = int(sc.min_query_count)
    elif S in SUBMISSION_MIN_QUERY_COUNT:
        put("min_query_count", SUBMISSION_MIN_QUERY_COUNT[S])
        used["min_query_count"] = SUBMISSION_MIN_QUERY_COUNT[S]

    if S in ("Offline", "Server"):
        qps = sc.target_qps
        if qps is None and calib is not None:
            qps = calib.throughput * (OFFLINE_QPS_MARGIN if S == "Offline" else SERVER_LOAD)
        if qps is not None:
            put("target_qps", f"{qps:.6g}")
            used["target_qps"] = float(f"{qps:.6g}")
    if S in ("SingleStream", "MultiStream"):
        if S == "MultiStream" and sc.samples_per_query is not None:
            put("samples_per_query", int(sc.samples_per_query))
        ms = sc.target_latency_ms
        if ms is None and calib is not None:
            ms = calib.latency_min_s * 1e3 * LATENCY_MARGIN
        if ms is not None:
            if ms >= 1:
                put("target_latency", int(ms))  # floor: a lower expected latency is safe
                used["target_latency_ms"] = int(ms)
            else:
                attr = "single_stream_expected_latency_ns" if S == "SingleStream" else "multi_stream_expected_latency_ns"
                exact[attr] = max(1, int(ms * 1e6))
                lines.append(f"# {S} expected latency {ms:.4f} ms is set on TestSettings.{attr} "
                             "(user.conf takes whole milliseconds)")
                used["target_latency_ms"] = ms
    if S == "Server":
        ms = sc.target_latency_ms
        if ms is None and not submission and calib is not None:
            ms = max(BERT_SERVER_TARGET_LATENCY_MS, SERVER_LATENCY_FACTOR * calib.latency_median_s * 1e3)
            if ms <= BERT_SERVER_TARGET_LATENCY_MS:
                ms = None  # mlperf.conf's 130 ms already fits
        if ms is not None:
            put("target_latency", int(math.ceil(ms)))
            used["target_latency_ms"] = int(math.ceil(ms))
        else:
            used["target_latency_ms"] = BERT_SERVER_TARGET_LATENCY_MS
    return "\n".join(lines) + "\n", exact, used


# ----------------------------------------------------------------------------------------------
# Reading LoadGen's logs

_NS_KEYS = {"50.00 percentile latency (ns)": "latency_p50_ms", "90.00 percentile latency (ns)": "latency_p90_ms",
            "95.00 percentile latency (ns)": "latency_p95_ms", "97.00 percentile latency (ns)": "latency_p97_ms",
            "99.00 percentile latency (ns)": "latency_p99_ms", "99.90 percentile latency (ns)": "latency_p999_ms",
            "Mean latency (ns)": "latency_mean_ms", "Min latency (ns)": "latency_min_ms",
            "Max latency (ns)": "latency_max_ms"}


def _number(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else value


def parse_summary(path: str | Path) -> dict:
    """``mlperf_log_summary.txt`` -> {scenario, mode, result ('VALID'/'INVALID'/None), valid, reasons,
    errors, warnings, throughput (samples/s), latency_p*_ms, raw: {line key: value}}.

    reasons: the unmet conditions ("Min duration satisfied : NO"), LoadGen's recommendations and
    early-stopping notes when INVALID, plus the errors of ``mlperf_log_detail.txt`` if any.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "mlperf_log_summary.txt"
    if not path.is_file():
        raise FileNotFoundError(f"LoadGen summary not found: {path} (did the run finish?)")
    raw: dict = {}
    unmet, recs, early = [], [], []
    section = None
    errors = warnings = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        s = line.strip()
        if not s or s.startswith("===="):
            continue
        if s == "Recommendations:":
            section = recs
            continue
        if s == "Early Stopping Result:":
            section = early
            continue
        if s.startswith("* ") and section is not None:
            section.append(s[2:].strip())
            continue
        section = None
        m = re.match(r"(\d+) (ERROR|WARNING)S? encountered", s, re.I)
        if m:
            if m.group(2).upper() == "ERROR":
                errors = int(m.group(1))
            else:
                warnings = int(m.group(1))
            continue
        m = re.match(r"^(.+?)\s*:\s*(.+)$", s)
        if m:
            key, value = m.group(1).strip(), m.group(2).strip()
            raw.setdefault(key, _number(value))
            if key.endswith("satisfied") and value.upper().startswith("NO"):
                unmet.append(f"{key}: NO")
    result = raw.get("Result is")
    out = {"scenario": raw.get("Scenario"), "mode": raw.get("Mode"), "result": result,
           "valid": None if result is None else result == "VALID", "errors": errors, "warnings": warnings,
           "raw": raw}
    reasons = unmet + recs
    if result == "INVALID" and unmet and any("Early stopping" in u for u in unmet):
        reasons += early
    if errors:
        reasons += [f"LoadGen error: {e}" for e in detail_errors(path.parent)]
    out["reasons"] = reasons
    for key, name in _NS_KEYS.items():
        if isinstance(raw.get(key), (int, float)):
            out[name] = raw[key] / 1e6
    scen = out["scenario"]
    qps = raw.get("QPS w/o loadgen overhead")
    if scen == "Offline":
        out["throughput"] = raw.get("Samples per second")
        for k in [k for k in out if k.startswith("latency_")]:
            out.pop(k)  # one query: its "latency" is the run's duration
    elif scen == "Server":
        out["throughput"] = raw.get("Completed samples per second", raw.get("Scheduled samples per second"))
    elif scen == "MultiStream":  # no QPS line: samples per query / mean query latency
        mean = out.get("latency_mean_ms")
        out["throughput"] = int(raw.get("samples_per_query", 8)) * 1e3 / mean if mean else None
    else:
        out["throughput"] = qps
    return out


def detail_errors(log_dir: str | Path, limit: int = 10) -> list[str]:
    """Messages of the entries flagged ``is_error`` in ``mlperf_log_detail.txt``."""
    path = Path(log_dir) / "mlperf_log_detail.txt"
    msgs: list[str] = []
    if not path.is_file():
        return msgs
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"is_error": true' not in line:
            continue
        try:
            entry = json.loads(line.split(":::MLLOG", 1)[1])
            msgs.append(f"{entry.get('key')}: {entry.get('value')}")
        except (IndexError, json.JSONDecodeError):
            msgs.append(line.strip()[:300])
        if len(msgs) >= limit:
            break
    return msgs


def read_accuracy_log(path: str | Path, total: int, row_shape: tuple) -> np.ndarray:
    """``mlperf_log_accuracy.json`` -> float32 [total, *row_shape], row i = QSL sample i.

    Every QSL index must appear (accuracy mode covers the whole data set); an index logged twice must
    carry the same bytes.
    """
    path = Path(path)
    entries = json.loads(path.read_text(encoding="utf-8"))
    out = np.zeros((total, *row_shape), dtype=np.float32)
    seen = np.zeros(total, dtype=bool)
    want = int(np.prod(row_shape)) * 4
    for e in entries:
        i, data = int(e["qsl_idx"]), bytes.fromhex(e["data"])
        if not 0 <= i < total:
            raise ValueError(f"{path}: qsl_idx {i} outside the {total} samples")
        if len(data) != want:
            raise ValueError(f"{path}: sample {i} has {len(data)} bytes, expected {want} (float32 {row_shape})")
        row = np.frombuffer(data, dtype=np.float32).reshape(row_shape)
        if seen[i] and not np.array_equal(out[i], row):
            raise ValueError(f"{path}: sample {i} logged twice with different outputs")
        out[i], seen[i] = row, True
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise ValueError(f"{path}: {len(missing)} of {total} samples missing from the accuracy log "
                         f"(first: {missing[:5].tolist()})")
    return out


def primary_metric(kind: str) -> str:
    return {"qa": "f1", "regression": "mse"}.get(kind, "accuracy")


def task_metrics(kind: str, outputs: np.ndarray, features: Features) -> dict:
    """classification -> {"accuracy": %}; regression -> {"mse"}; qa -> {"exact_match", "f1", "targets"}.

    outputs: [N, num_labels] or (qa) [N, seq, 2].
    """
    if kind == "qa":
        from bertprune.tasks.squad import MLPERF_BERT, postprocess, squad_v1_metrics, target_report

        preds = postprocess(features.examples, features.squad, outputs[..., 0], outputs[..., 1],
                            n_best_size=MLPERF_BERT["n_best_size"], max_answer_length=MLPERF_BERT["max_answer_length"])
        m = squad_v1_metrics(preds, features.examples)
        return {"exact_match": m["exact_match"], "f1": m["f1"], "total": m["total"], "targets": target_report(m["f1"])}
    if kind == "regression":
        return {"mse": float(np.mean((outputs[:, 0] - features.labels) ** 2))}
    return {"accuracy": 100.0 * float(np.mean(outputs.argmax(axis=-1) == features.labels))}


def _full_precision(x: float) -> str:
    """``x`` as the shortest decimal that reads back to the same float, never in exponent notation
    (the checker's patterns read ``[\\d.]+``)."""
    return np.format_float_positional(float(x), trim="0")


def accuracy_txt(kind: str, metrics: dict) -> str:
    """One JSON line the MLPerf submission checker parses (``{"exact_match": .., "f1": ..}`` for SQuAD), at
    full precision: rounding could lift an F1 just under a target over it (89.965255 -> 89.9653 > 89.96526)."""
    keys = ("exact_match", "f1") if kind == "qa" else (primary_metric(kind),)
    return "{" + ", ".join(f'"{k}": {_full_precision(metrics[k])}' for k in keys) + "}"


# ----------------------------------------------------------------------------------------------
# One run (child process)


@dataclass
class RunSpec:
    """Everything one LoadGen run needs; written as ``run_spec.json`` next to its logs."""

    variant: str
    onnx: str
    kind: str
    num_labels: int
    seq_len: int | None
    features: str
    scenario: dict
    mode: str
    out_dir: str
    device: str = "auto"
    submission: bool = False
    onnx_sha256: str | None = None  # what the export recorded; the run fails if the file it loads differs

    @classmethod
    def load(cls, path: str | Path) -> "RunSpec":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def run_loadgen(spec: RunSpec) -> dict:
    """Run one variant x scenario x mode under LoadGen in *this* process (call once per process).

    Writes LoadGen's logs, ``user.conf``, (accuracy mode) ``accuracy.txt`` and ``result.json`` into
    ``spec.out_dir`` and returns the result dict.
    """
    import mlperf_loadgen as lg

    from bertprune.onnx.runtime import make_session

    if spec.mode not in MODES:
        raise ValueError(f"mode={spec.mode!r}; expected one of {MODES}")
    sc = ScenarioSettings(**spec.scenario)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    progress = Progress(out)
    features = load_features(spec.features, spec.kind)
    model_bytes, onnx_sha256 = load_onnx_bytes(spec.onnx, spec.onnx_sha256)
    has_external_data = Path(f"{spec.onnx}.data").is_file()  # then ONNX Runtime must read it next to the file
    session, provider = make_session(spec.onnx if has_external_data else model_bytes, spec.device,
                                     sc.intra_op_threads)
    del model_bytes
    sut = OrtSUT(session, features, sc, spec.kind, spec.seq_len)
    progress.start(sut, len(features))
    accuracy = spec.mode == "accuracy"
    calib = None
    if sc.loadgen in ("Offline", "Server"):
        needs = sc.target_qps is None or (sc.loadgen == "Server" and sc.target_latency_ms is None
                                          and not spec.submission and not accuracy)
    else:
        needs = sc.target_latency_ms is None and not accuracy
    # Server calibrates in accuracy mode too: mlperf.conf's 1 QPS would take a second per sample
    if needs and (not accuracy or sc.loadgen == "Server"):
        progress.phase = "calibrating"
        calib = calibrate(sut, sc.calibration_s)
        log.info("calibration: %.1f samples/s, latency min %.3f ms median %.3f ms", calib.throughput,
                 calib.latency_min_s * 1e3, calib.latency_median_s * 1e3)
    conf_text, exact, used = loadgen_config(sc, calib, len(features), spec.submission)
    conf = out / "user.conf"
    conf.write_text(conf_text, encoding="utf-8")

    settings = lg.TestSettings()
    if settings.FromConfig(str(conf), LOADGEN_MODEL, sc.loadgen) != 0:
        raise RuntimeError(f"LoadGen could not read {conf}")
    settings.scenario = getattr(lg.TestScenario, sc.loadgen)
    settings.mode = lg.TestMode.AccuracyOnly if accuracy else lg.TestMode.PerformanceOnly
    for key, value in exact.items():
        setattr(settings, key, value)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(out)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False

    perf_count = used["performance_sample_count"]
    qsl = lg.ConstructQSL(len(features), perf_count, sut.load_samples, sut.unload_samples)
    lg_sut = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)
    t0 = time.time()
    progress.phase = "loadgen"
    try:
        with sut:
            lg.StartTestWithLogSettings(lg_sut, qsl, settings, log_settings)
    finally:
        lg.DestroySUT(lg_sut)
        lg.DestroyQSL(qsl)
        progress.phase = "scoring"
    loadgen_s = time.time() - t0
    if sut.errors:
        raise RuntimeError(f"inference failed during the LoadGen run ({len(sut.errors)} batches): {sut.errors[0]}")

    summary = parse_summary(out / "mlperf_log_summary.txt")
    result = {"variant": spec.variant, "scenario": sc.loadgen, "mode": spec.mode, "status": "ok",
              "onnx": spec.onnx, "onnx_sha256": onnx_sha256,
              "provider": provider, "settings": used, "submission": spec.submission,
              "calibration": None if calib is None else asdict(calib),
              "summary": {k: v for k, v in summary.items() if k != "raw"},
              "samples_completed": sut.completed, "batches": sut.batches,
              "loadgen_seconds": loadgen_s, "seconds": None, "log_dir": str(out)}
    if accuracy:
        result["accuracy"] = accuracy_report(out, sut, spec.kind)
        (out / "accuracy.txt").write_text(accuracy_txt(spec.kind, result["accuracy"]["loadgen"]) + "\n",
                                          encoding="utf-8")
        result["summary"]["valid"] = summary["errors"] == 0
    result["seconds"] = time.time() - t_start
    progress.stop()
    _atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=2, default=float))
    return result


def load_onnx_bytes(path, expected_sha256: str | None = None) -> tuple[bytes, str]:
    """The ONNX file's bytes and their sha256, the exact bytes the session is built from; raises if
    ``expected_sha256`` (what its export recorded) differs."""
    import hashlib

    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise ValueError(sha256_mismatch(path, digest, expected_sha256))
    return data, digest


PROGRESS_FILE = "progress.json"


class Progress:
    """The child's progress, rewritten to ``<out>/progress.json`` every second by a daemon thread:
    {phase, completed (samples the SUT finished this phase), samples (data set size), elapsed_s}."""

    def __init__(self, out: Path, every_s: float = 1.0):
        self.path, self.every_s, self.phase = Path(out) / PROGRESS_FILE, every_s, "loading"
        self.t0 = time.time()
        self._sut, self._samples, self._stop = None, None, threading.Event()
        self._write()

    def start(self, sut, samples: int) -> None:
        self._sut, self._samples = sut, samples
        threading.Thread(target=self._loop, name="progress", daemon=True).start()

    def stop(self) -> None:
        self.phase = "done"
        self._stop.set()
        self._write()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._write()

    def _write(self) -> None:
        data = {"phase": self.phase, "completed": getattr(self._sut, "completed", 0), "samples": self._samples,
                "elapsed_s": round(time.time() - self.t0, 1)}
        try:
            _atomic_write_text(self.path, json.dumps(data))
        except OSError:  # progress is informative only
            pass


def read_progress(out_dir) -> dict:
    try:
        return json.loads((Path(out_dir) / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def accuracy_report(out: Path, sut: OrtSUT, kind: str) -> dict:
    """LoadGen's accuracy log -> metric, next to a direct evaluation of the same session and features."""
    f = sut.features
    row_shape = (f.max_length, 2) if kind == "qa" else tuple(sut.infer(np.array([0])).shape[1:])
    via_loadgen = read_accuracy_log(out / "mlperf_log_accuracy.json", len(f), row_shape)
    direct = sut.run_all()
    m_lg, m_direct = task_metrics(kind, via_loadgen, f), task_metrics(kind, direct, f)
    key = primary_metric(kind)
    return {"metric": key, "loadgen": m_lg, "direct": m_direct, "samples": len(f),
            "equal": bool(m_lg[key] == m_direct[key]),
            "max_abs_diff": float(np.max(np.abs(via_loadgen - direct))) if len(f) else 0.0}


# ----------------------------------------------------------------------------------------------
# Parent side: one run per subprocess


def _failed(spec: RunSpec, error: str, status: str = "failed") -> dict:
    return {"variant": spec.variant, "scenario": SCENARIOS[scenario_key(spec.scenario["name"])], "mode": spec.mode,
            "status": status, "error": error, "log_dir": spec.out_dir, "summary": {}}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# Default time limit of one run (the run_timeout_s setting overrides it). A performance run lasts about its
# min duration (mlperf.conf's 600 s with submission=true); one that runs far longer is stuck, typically a
# Server run offered more queries per second than the model sustains (LoadGen waits for every query).
RUN_TIME_MARGIN = 4.0  # a performance run may take this many times its min duration ...
RUN_TIME_SLACK_S = 300.0  # ... plus this (model load, calibration, LoadGen's drain, a retuned target)
SUBMISSION_MIN_DURATION_S = 600.0  # mlperf.conf: *.min_duration = 600000 ms
STALL_S = 600.0  # any run, accuracy included: killed when no sample completes for this long
PROGRESS_EVERY_S = 30.0  # the parent logs the child's progress this often
POLL_S = 0.5


def default_time_limit(spec: RunSpec) -> tuple[float | None, str]:
    """(seconds, how it was derived) for one run: performance runs get
    RUN_TIME_MARGIN x min duration + RUN_TIME_SLACK_S; accuracy runs (one pass over the data set, however
    long it takes) get none, only the STALL_S guard."""
    if spec.mode != "performance":
        return None, "accuracy runs have no default limit"
    sc = ScenarioSettings(**spec.scenario)
    min_s = SUBMISSION_MIN_DURATION_S if spec.submission else sc.min_duration_ms / 1000
    limit = RUN_TIME_MARGIN * min_s + RUN_TIME_SLACK_S
    return limit, f"default limit {RUN_TIME_MARGIN:g} x min duration {min_s:g} s + {RUN_TIME_SLACK_S:g} s"


def _progress_text(p: dict, elapsed: float) -> str:
    done = p.get("completed") or 0
    rate = f", {done / elapsed:.1f} samples/s" if done and elapsed > 0 and p.get("phase") == "loadgen" else ""
    return f"{p.get('phase', 'starting')}, {elapsed:.0f} s, {done} samples completed{rate}"


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _watch(proc, spec: RunSpec, out: Path, limit: float | None, why: str) -> str | None:
    """Wait for the child; log its progress every PROGRESS_EVERY_S; kill it past ``limit`` or after STALL_S
    without a completed sample. Returns the reason it was killed, else None."""
    t0 = last_change = time.monotonic()
    next_report, last_done = t0 + PROGRESS_EVERY_S, -1
    name = f"{spec.variant} {SCENARIOS[scenario_key(spec.scenario['name'])]} {spec.mode}"
    while True:
        try:
            proc.wait(timeout=POLL_S)
            return None
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        p = read_progress(out)
        if p.get("completed") != last_done or p.get("phase") != "loadgen":
            last_done, last_change = p.get("completed"), now
        elapsed = now - t0
        if now >= next_report:
            log.info("%s: %s", name, _progress_text(p, elapsed))
            next_report += PROGRESS_EVERY_S
        reason = None
        if limit is not None and elapsed > limit:
            reason = f"timed out after {limit:.0f} s ({why}; set run_timeout_s to change it)"
        elif now - last_change > STALL_S:
            reason = f"stalled: no sample completed for {STALL_S:.0f} s"
        if reason:
            _stop(proc)
            reason += f"; killed at {_progress_text(p, elapsed)}"
            sc = spec.scenario
            if sc.get("loadgen", SCENARIOS[scenario_key(sc["name"])]) == "Server" and spec.mode == "performance":
                reason += (". A Server run that never ends is offered more queries per second than the model "
                           "sustains: lower scenario.server.target_qps (or leave it null to calibrate)")
            return reason


def run_subprocess(spec: RunSpec, timeout_s: float | None = None) -> dict:
    """Run ``spec`` in a fresh ``python -m bertprune.mlperf.harness`` process, logging its progress; a crash, a
    kill or a timeout gives a result with status "failed" and the reason (or the tail of ``harness.log``)
    as error. timeout_s: the run's time limit; None = ``default_time_limit(spec)``."""
    import shutil

    out = Path(spec.out_dir)
    if out.exists():
        shutil.rmtree(out)  # stale logs of an earlier run must not pass for this one's
    out.mkdir(parents=True)
    spec_path = out / SPEC_FILE
    spec_path.write_text(json.dumps(asdict(spec), indent=2), encoding="utf-8")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding this bertprune package
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "bertprune.mlperf.harness", "--spec", str(spec_path)]
    limit, why = (float(timeout_s), "run_timeout_s") if timeout_s else default_time_limit(spec)
    with open(out / HARNESS_LOG, "w", encoding="utf-8") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
        try:
            killed = _watch(proc, spec, out, limit, why)
        except BaseException:  # Ctrl-C: never leave the child running
            _stop(proc)
            raise
    if killed:
        return _failed(spec, f"{killed}; see {out / HARNESS_LOG}")
    result_path = out / RESULT_FILE
    if proc.returncode != 0 or not result_path.is_file():
        return _failed(spec, f"harness exited with {proc.returncode}: {_tail(out / HARNESS_LOG)}")
    return json.loads(result_path.read_text(encoding="utf-8"))


def retune(result: dict, scenario: dict) -> dict | None:
    """New calibrated targets for a performance run LoadGen called INVALID because of them, else None.

    Only values that were calibrated (null in the config) are changed.
    """
    summary = result.get("summary") or {}
    if result.get("mode") != "performance" or result.get("status") != "ok" or summary.get("valid") is not False:
        return None
    used = result.get("settings") or {}
    S = result["scenario"]
    reasons = " ".join(summary.get("reasons", []))
    new = dict(scenario)
    if S == "Offline" and scenario.get("target_qps") is None and "Min duration" in reasons:
        measured = summary.get("throughput") or 0
        new["target_qps"] = max(measured, used.get("target_qps", 0)) * OFFLINE_QPS_MARGIN * 1.5
    elif S in ("SingleStream", "MultiStream") and scenario.get("target_latency_ms") is None and "Min duration" in reasons:
        p50 = summary.get("latency_p50_ms") or used.get("target_latency_ms", 1.0)
        new["target_latency_ms"] = min(p50, used.get("target_latency_ms", p50)) * LATENCY_MARGIN * 0.5
    elif S == "Server" and scenario.get("target_qps") is None and used.get("target_qps"):
        new["target_qps"] = used["target_qps"] * 0.5
    else:
        return None
    return new


def run_isolated(spec: RunSpec, timeout_s: float | None = None, retries: int = 1) -> dict:
    """``run_subprocess`` plus up to ``retries`` re-runs with retuned targets when calibration missed."""
    result = run_subprocess(spec, timeout_s)
    for attempt in range(retries):
        new = retune(result, spec.scenario)
        if new is None:
            break
        log.warning("%s %s INVALID (%s); re-running with %s", spec.variant, result["scenario"],
                    "; ".join(result["summary"].get("reasons", [])),
                    {k: v for k, v in new.items() if v != spec.scenario.get(k)})
        spec = RunSpec(**{**asdict(spec), "scenario": new})
        result = run_subprocess(spec, timeout_s)
        result["retuned"] = attempt + 1
    return result


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One MLPerf LoadGen run (variant x scenario x mode) from a "
                                                 "run_spec.json; bertprune.jobs.bench writes the specs.")
    parser.add_argument("--spec", required=True, help="path of a run_spec.json (see RunSpec)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_loadgen(RunSpec.load(args.spec))
    s = result["summary"]
    print(f"{result['variant']} {result['scenario']} {result['mode']}: "
          f"{s.get('result') or ('ok' if s.get('valid') else 'errors')} throughput={s.get('throughput')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
