"""One LoadGen run (variant x scenario x mode), each in its own process.

``run_loadgen(spec)`` runs in the child (``python -m bertprune.mlperf.runs --spec run_spec.json``): it loads
the features and the ONNX bytes (hashed and checked against the export), builds the SUT, calibrates,
runs LoadGen and writes ``result.json``. ``run_isolated(spec)`` is the parent side: it launches the
child, logs its progress, enforces a time limit (``default_time_limit``) and retries once with retuned
targets when calibration missed.

Why one process per run: ``TestSettings.FromConfig`` loads LoadGen's built-in mlperf.conf (official
seeds, 600 s minimum) only the first time it is called in a process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from bertprune.io import atomic_write_json, atomic_write_text
from bertprune.mlperf.logs import accuracy_txt, parse_summary, read_accuracy_log
from bertprune.mlperf.qsl import load_features
from bertprune.scenarios import MODES, ScenarioSettings, loadgen_name
from bertprune.mlperf.settings import LOADGEN_MODEL, calibrate, loadgen_config, retune
from bertprune.mlperf.sut import OrtSUT
from bertprune.onnx.variants import sha256_mismatch
from bertprune.tasks.kinds import get_kind, score

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
SPEC_FILE = "run_spec.json"
HARNESS_LOG = "harness.log"


@dataclass
class RunSpec:
    """Everything one LoadGen run needs; written as ``run_spec.json`` next to its logs."""

    variant: str
    onnx: str
    kind: str
    num_labels: int
    onnx_seq_len: int | None  # the graph's fixed sequence length, None = dynamic (interface.Signature)
    features: str
    scenario: dict
    mode: str
    out_dir: str
    device: str = "auto"
    submission: bool = False
    onnx_sha256: str | None = None  # what the export recorded; the run fails if the file it loads differs
    metrics: list[str] | None = None  # the task's metrics, primary first (Task.metric_names); None: the kind's
    runtime: str = "onnxruntime"  # onnxruntime | deepsparse (bertprune.onnx.deepsparse_runtime: a worker in its own venv)
    deepsparse_python: str | None = None  # runtime=deepsparse: that venv's python (None: .venv-deepsparse)
    deepsparse_seq_lens: str | list | None = None  # the lengths compiled (deepsparse_runtime.compile_seq_lens)

    @classmethod
    def load(cls, path: str | Path) -> "RunSpec":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def run_loadgen(spec: RunSpec) -> dict:
    """Run one variant x scenario x mode under LoadGen in *this* process (call once per process).

    Writes LoadGen's logs, ``user.conf``, (accuracy mode) ``accuracy.txt`` and ``result.json`` into
    ``spec.out_dir`` and returns the result dict.
    """
    if spec.mode not in MODES:
        raise ValueError(f"mode={spec.mode!r}; expected one of {MODES}")
    sc = ScenarioSettings(**spec.scenario)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    progress = Progress(out)
    features = load_features(spec.features)
    session, provider, onnx_sha256, seq_len = open_runtime(spec, sc, features.max_length)
    try:
        result = _run(spec, sc, out, t_start, progress, features, session, provider, onnx_sha256, seq_len)
    finally:
        if hasattr(session, "close"):
            session.close()
    return result


def open_runtime(spec: RunSpec, sc: ScenarioSettings, max_length: int):
    """(session, provider, sha256 of the file it runs, the graph's fixed sequence length or None) for
    ``spec.runtime``: an ONNX Runtime session built from the hashed bytes, or a DeepSparse worker compiled
    for [batch, L] at each length bucket L up to max_length (static shapes: the SUT cuts each batch to the
    shortest L that holds it; QA's per-token outputs keep max_length)."""
    from bertprune.onnx.runtime import make_session

    model_bytes, onnx_sha256 = load_onnx_bytes(spec.onnx, spec.onnx_sha256)
    if spec.runtime == "deepsparse":
        from bertprune.onnx.deepsparse_runtime import DeepSparseSession, compile_batch_sizes, compile_seq_lens
        from bertprune.tasks.kinds import get_kind

        del model_bytes  # the worker reads the file and checks the same sha256
        fixed = get_kind(spec.kind).fixed_seq_len or spec.onnx_seq_len is not None
        session = DeepSparseSession(spec.onnx, max_length, compile_batch_sizes(sc.loadgen, sc.batch_size),
                                    python=spec.deepsparse_python, num_cores=sc.intra_op_threads,
                                    sha256=onnx_sha256, seq_lens=compile_seq_lens(max_length, fixed, spec.deepsparse_seq_lens))
        return session, session.provider, onnx_sha256, max_length if fixed else None
    if spec.runtime != "onnxruntime":
        raise ValueError(f"runtime={spec.runtime!r}; expected onnxruntime or deepsparse")
    has_external_data = Path(f"{spec.onnx}.data").is_file()  # then ONNX Runtime must read it next to the file
    session, provider = make_session(spec.onnx if has_external_data else model_bytes, spec.device,
                                     sc.intra_op_threads)
    return session, provider, onnx_sha256, spec.onnx_seq_len


def _run(spec: RunSpec, sc: ScenarioSettings, out: Path, t_start: float, progress, features, session, provider,
         onnx_sha256: str, seq_len: int | None) -> dict:
    import mlperf_loadgen as lg

    sut = OrtSUT(session, features, sc, spec.kind, seq_len)
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
    conf = atomic_write_text(out / "user.conf", conf_text)

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
              "provider": provider, "runtime": spec.runtime,
              "runtime_info": session.stats() if hasattr(session, "stats") else None, "settings": used, "submission": spec.submission,
              "calibration": None if calib is None else asdict(calib),
              "summary": {k: v for k, v in summary.items() if k != "raw"},
              "samples_completed": sut.completed, "batches": sut.batches,
              "loadgen_seconds": loadgen_s, "seconds": None, "log_dir": str(out)}
    if accuracy:
        result["accuracy"] = accuracy_report(out, sut, spec.kind, spec.metrics)
        atomic_write_text(out / "accuracy.txt", accuracy_txt(spec.kind, result["accuracy"]["loadgen"],
                                                             result["accuracy"]["metric"]) + "\n")
        result["summary"]["valid"] = summary["errors"] == 0
    result["seconds"] = time.time() - t_start
    progress.stop()
    atomic_write_json(out / RESULT_FILE, result)
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
            atomic_write_json(self.path, data, indent=None)
        except OSError:  # progress is informative only
            pass


def read_progress(out_dir) -> dict:
    try:
        return json.loads((Path(out_dir) / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def accuracy_report(out: Path, sut: OrtSUT, kind, metrics=None) -> dict:
    """LoadGen's accuracy log -> the kind's metrics (``score``; ``metrics``: the task's names, primary first),
    next to a direct evaluation of the same session and features."""
    f, kind = sut.features, get_kind(kind)
    row_shape = tuple(sut.infer(np.array([0])).shape[1:])  # [num_labels] or (qa) [seq, 2]
    via_loadgen = read_accuracy_log(out / "mlperf_log_accuracy.json", len(f), row_shape)
    direct = sut.run_all()
    m_lg, m_direct = (score(kind, o, f.labels, metrics, examples=f.examples, squad=f.squad)
                      for o in (via_loadgen, direct))
    key = metrics[0] if metrics else kind.primary_metric
    return {"metric": key, "loadgen": m_lg, "direct": m_direct, "samples": len(f),
            "equal": bool(m_lg[key] == m_direct[key]),
            "max_abs_diff": float(np.max(np.abs(via_loadgen - direct))) if len(f) else 0.0}


def _failed(spec: RunSpec, error: str, status: str = "failed") -> dict:
    return {"variant": spec.variant, "scenario": loadgen_name(spec.scenario["name"]), "mode": spec.mode,
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
    name = f"{spec.variant} {loadgen_name(spec.scenario['name'])} {spec.mode}"
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
            if sc.get("loadgen", loadgen_name(sc["name"])) == "Server" and spec.mode == "performance":
                reason += (". A Server run that never ends is offered more queries per second than the model "
                           "sustains: lower scenario.server.target_qps (or leave it null to calibrate)")
            return reason


def run_subprocess(spec: RunSpec, timeout_s: float | None = None) -> dict:
    """Run ``spec`` in a fresh ``python -m bertprune.mlperf.runs`` process, logging its progress; a crash, a
    kill or a timeout gives a result with status "failed" and the reason (or the tail of ``harness.log``)
    as error. timeout_s: the run's time limit; None = ``default_time_limit(spec)``."""
    import shutil

    out = Path(spec.out_dir)
    if out.exists():
        shutil.rmtree(out)  # stale logs of an earlier run must not pass for this one's
    out.mkdir(parents=True)
    spec_path = out / SPEC_FILE
    atomic_write_json(spec_path, asdict(spec))
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding this bertprune package
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "bertprune.mlperf.runs", "--spec", str(spec_path)]
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
