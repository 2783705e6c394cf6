"""The LoadGen system under test: one ONNX Runtime session, the scenario's batching, every sample
completed exactly once.

Output rows handed to LoadGen are what the task kind's ``stack_outputs`` makes of the session's outputs:
classification/regression -> the float32 logits ``[num_labels]``; qa -> start/end logits stacked as
float32 ``[seq, 2]`` (what MLPerf's reference BERT harness logs).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Sequence

import numpy as np

from bertprune.scenarios import ScenarioSettings
from bertprune.interface import INPUTS
from bertprune.tasks.features import Features
from bertprune.tasks.kinds import get_kind

log = logging.getLogger(__name__)


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

    def __init__(self, session, features: Features, scenario: ScenarioSettings, kind,
                 onnx_seq_len: int | None = None, complete: Callable | None = None):
        self.session = session
        self.features = features
        self.scenario = scenario
        self.kind = get_kind(kind)
        self.output_names = list(self.kind.onnx_outputs)
        # a fixed-length kind (QA: logits per token [seq]) keeps the full length; the others may trim
        # each batch to its longest member when the graph's sequence dimension is dynamic
        self.trim = not self.kind.fixed_seq_len and onnx_seq_len is None
        self._bucket = getattr(session, "bucket_length", None)  # engines compiled for a few fixed lengths
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
        if self._bucket is not None:  # a static-shape engine (DeepSparse): the shortest compiled length that fits
            length = self._bucket(length)
        feeds = {name: getattr(f, name)[indices, :length] for name in INPUTS}
        return self.kind.stack_outputs(self.session.run(self.output_names, feeds))

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
        loadgen = self.scenario.loadgen
        if loadgen == "Server":
            self._queue.put(samples)
            return
        idx = np.fromiter((s.index for s in samples), dtype=np.int64, count=len(samples))
        for batch in self.batches_for(idx):
            chunk = [samples[i] for i in batch]
            if loadgen == "Offline":
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
