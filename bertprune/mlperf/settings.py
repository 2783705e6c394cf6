"""LoadGen's test settings for one run: calibration of the SUT, then ``user.conf`` and the exact
``TestSettings`` attributes, so short local runs come out VALID and submission runs follow mlperf.conf.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from bertprune.scenarios import ScenarioSettings
from bertprune.mlperf.sut import OrtSUT

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
