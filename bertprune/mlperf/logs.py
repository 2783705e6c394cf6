"""Reading LoadGen's logs back: ``mlperf_log_summary.txt`` (result, reasons, throughput, latencies),
``mlperf_log_detail.txt`` (errors, RNG seeds), ``mlperf_log_accuracy.json`` (every sample's output row);
and writing ``accuracy.txt``, the metric line the MLPerf submission checker parses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from bertprune.tasks.kinds import QuestionAnswering, QuestionAnsweringV2, get_kind

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


def logged_seeds(log_dir) -> dict:
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


# accuracy.txt's keys per kind, in the order the checker's reference scripts print them (default: the
# kind's primary metric). SQuAD v1.1 (and v2.0): {"exact_match": .., "f1": ..}.
ACCURACY_TXT_KEYS = {QuestionAnswering.name: ("exact_match", "f1"), QuestionAnsweringV2.name: ("exact_match", "f1")}


def _full_precision(x: float) -> str:
    """``x`` as the shortest decimal that reads back to the same float, never in exponent notation
    (the checker's patterns read ``[\\d.]+``)."""
    return np.format_float_positional(float(x), trim="0")


def accuracy_txt(kind: str, metrics: dict, metric: str | None = None) -> str:
    """One JSON line the MLPerf submission checker parses (``{"exact_match": .., "f1": ..}`` for SQuAD), at
    full precision: rounding could lift an F1 just under a target over it (89.965255 -> 89.9653 > 89.96526)."""
    kind = get_kind(kind)
    keys = ACCURACY_TXT_KEYS.get(kind.name, (metric or kind.primary_metric,))  # metric: the task's primary one
    return "{" + ", ".join(f'"{k}": {_full_precision(metrics[k])}' for k in keys) + "}"
