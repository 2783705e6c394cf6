"""DeepSparse, the sparse CPU engine, as a LoadGen runtime (``python bench.py runtime=deepsparse``).

DeepSparse 1.8 needs onnx < 1.15 and numpy < 2, so it cannot live in bertprune's locked environment: it has
its own venv (``make setup-deepsparse`` -> ``.venv-deepsparse``) and runs there as a worker process
(``bertprune.onnx.deepsparse_worker``). :class:`DeepSparseSession` is the harness's side: it starts the
worker, has it compile the exported file for static shapes (one engine per batch size the scenario runs),
and answers ``run(output_names, feeds)`` like an ONNX Runtime session, so the same SUT drives either.

Static shapes: DeepSparse is fast only when compiled for them, so the engine is compiled for a few sequence
lengths (``compile_seq_lens``: 32, 64, ... up to the task's max_length, or ``deepsparse_seq_lens``) and each batch is cut to the shortest
compiled length that holds its longest member (ONNX Runtime cuts to that member exactly); a short batch is
padded to a compiled batch size. The worker times every engine once compiled and runs a length at a longer
one where that engine is faster (DeepSparse's sparse kernels can be slower at 32 tokens than at 64). Tasks whose outputs are per token (QA) run at the full length only.
DeepSparse is CPU-only; its Community License allows evaluation and research, not production.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from bertprune.onnx import deepsparse_worker as protocol
from bertprune.interface import INPUTS

log = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime", "deepsparse")
VENV = ".venv-deepsparse"  # make setup-deepsparse; relative to the folder holding the bertprune package
SETUP = "make setup-deepsparse (a venv with deepsparse==1.8.0 beside .venv)"
WORKER = Path(protocol.__file__)


def default_python() -> str:
    """``<repo>/.venv-deepsparse/bin/python``: where ``make setup-deepsparse`` puts it."""
    return os.path.join(Path(__file__).resolve().parents[2], VENV, "bin", "python")


def resolve_python(python: str | None) -> str:
    return os.path.abspath(os.path.expanduser(python)) if python else default_python()  # no resolve(): a venv's
    # python is a symlink whose target knows nothing of the venv


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("NM_DISABLE_ANALYTICS", "1")  # DeepSparse would try to report usage over the network
    env.pop("PYTHONPATH", None)  # bertprune's environment must not leak into DeepSparse's
    return env


def check_runtime(runtime: str, python: str | None = None, device: str = "cpu") -> dict | None:
    """Check ``runtime`` before any run: onnxruntime -> None; deepsparse -> the interpreter at ``python``
    (None: ``default_python()``) imports deepsparse, onnx and numpy, and the device is the CPU. Returns
    {"python", "deepsparse", "onnx", "numpy", "cpu"} versions. One error naming the value and the fix."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r}; expected one of {RUNTIMES}")
    if runtime == "onnxruntime":
        if python:  # most likely runtime=deepsparse was forgotten: measuring ONNX Runtime instead would mislead
            raise ValueError(f"deepsparse_python={python!r} is set but runtime=onnxruntime, which does not use it; "
                             "add runtime=deepsparse to run DeepSparse, or drop deepsparse_python")
        return None
    if device == "cuda":
        raise ValueError("runtime=deepsparse runs on the CPU only, but hardware.runtime_device=cuda; use hardware=cpu "
                         "(or runtime=onnxruntime for the GPU)")
    exe = resolve_python(python)
    if not os.path.isfile(exe) or not os.access(exe, os.X_OK):
        raise FileNotFoundError(f"runtime=deepsparse: no Python interpreter at {exe} (deepsparse_python="
                                f"{python!r}); run {SETUP}, or set deepsparse_python= to the python of a venv "
                                "that has deepsparse")
    probe = ("import json, numpy, onnx, deepsparse\n"
             "from deepsparse.cpu import cpu_architecture\n"
             "a = cpu_architecture()\n"
             "print(json.dumps({'deepsparse': deepsparse.__version__, 'onnx': onnx.__version__, "
             "'numpy': numpy.__version__, 'cpu': f'{a.isa}' + (' VNNI' if a.vnni else '')}))")
    try:
        done = subprocess.run([exe, "-c", probe], capture_output=True, text=True, timeout=300, env=_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"runtime=deepsparse: {exe} could not be run ({e}); run {SETUP}") from e
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"runtime=deepsparse: {exe} cannot import deepsparse ({tail}); run {SETUP}, or set "
                           "deepsparse_python= to the python of a venv that has deepsparse")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    return {"python": exe, **info}


def compile_batch_sizes(loadgen: str, batch_size: int) -> list[int]:
    """The batch sizes the engine is compiled for in one scenario (a shorter batch is padded to the next):
    SingleStream 1; Offline and MultiStream their batch size; Server every power of two up to its batch size
    and the batch size itself (its workers take whatever is queued, often one sample)."""
    if loadgen == "SingleStream":
        return [1]
    if loadgen == "Server":
        return sorted({2 ** i for i in range(batch_size.bit_length()) if 2 ** i <= batch_size} | {batch_size})
    return [batch_size]


MIN_SEQ_LEN = 32  # the shortest compiled length (a length bucket): 32, 64, 128, ... up to max_length


SEQ_LENS_CHOICES = "null/auto (32, 64, ... up to max_length), full (max_length only) or a list such as [32,64]"


def check_seq_lens(requested, max_length: int, fixed: bool = False, runtime: str = "deepsparse") -> None:
    """One error naming the value and the fix, before any run, for ``deepsparse_seq_lens``: null / ``auto``,
    ``full`` or a list of lengths in [1, max_length]; a fixed-length graph (QA, a static export) takes only its
    own length; any value but null with ``runtime=onnxruntime`` (which cuts each batch to its longest member
    itself) is refused rather than ignored."""
    if requested is None:
        return
    if runtime != "deepsparse":
        raise ValueError(f"deepsparse_seq_lens={requested!r} is set but runtime={runtime}, which does not use it; add "
                         "runtime=deepsparse, or drop deepsparse_seq_lens")
    if isinstance(requested, str):
        if requested not in ("auto", "full"):
            raise ValueError(f"deepsparse_seq_lens={requested!r}; expected {SEQ_LENS_CHOICES}")
        return
    try:
        lens = [int(n) for n in requested]
        ok = lens and all(float(n) == int(n) for n in requested)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"deepsparse_seq_lens={requested!r}; expected {SEQ_LENS_CHOICES}")
    bad = [n for n in lens if not 1 <= n <= int(max_length)]
    if bad:
        raise ValueError(f"deepsparse_seq_lens={list(requested)}: {bad} outside [1, {int(max_length)}] (task.max_length); "
                         "give lengths up to the task's max_length (it is always compiled)")
    if fixed and set(lens) != {int(max_length)}:
        raise ValueError(f"deepsparse_seq_lens={list(requested)}, but this graph runs at its full length {int(max_length)} "
                         "only (per-token outputs, or a static export); use deepsparse_seq_lens=full or null")


def compile_seq_lens(max_length: int, fixed: bool = False, requested=None) -> list[int]:
    """The sequence lengths the engine is compiled for: ``max_length`` alone when the graph's length is fixed
    (QA's per-token outputs, a static export) or ``requested`` is ``full``; the ``requested`` lengths and
    ``max_length`` for a list; else (null / ``auto``) every power of two from ``MIN_SEQ_LEN`` below it, and it.
    A batch runs at the shortest one that holds its longest member (padding beyond a real length is masked,
    so the outputs are those of the full length)."""
    max_length = int(max_length)
    check_seq_lens(requested, max_length, fixed)
    if fixed or requested == "full":
        return [max_length]
    if requested is not None and not isinstance(requested, str):
        return sorted({int(n) for n in requested} | {max_length})
    return sorted({n for n in (MIN_SEQ_LEN * 2 ** i for i in range(16)) if n < max_length} | {max_length})


class DeepSparseSession:
    """The worker process, seen as an ONNX Runtime session: ``run(output_names, feeds) -> [arrays]``.

    path: the exported .onnx (hashed again by the worker against ``sha256``); seq_len: the longest sequence
    length; seq_lens: the lengths compiled (``compile_seq_lens``; None: ``seq_len`` only), one of which every
    feed must have (``seq_lens``); batch_sizes: the engines to compile (``compile_batch_sizes``); num_cores:
    DeepSparse's cores (None: all). Calls from several threads are served one at a time (the engine uses
    every core it is given). ``info``: the worker's load reply (version, compile time, zeros, supported ops);
    ``stats()`` adds the time spent in the engine and in the process hop."""

    def __init__(self, path, seq_len: int, batch_sizes, python: str | None = None, num_cores: int | None = None,
                 sha256: str | None = None, seq_lens=None):
        self.python, self.seq_len = resolve_python(python), int(seq_len)
        self.seq_lens = sorted({int(n) for n in (seq_lens or [seq_len])})
        if self.seq_lens[-1] != self.seq_len or self.seq_lens[0] < 1:
            raise ValueError(f"seq_lens={self.seq_lens}: expected positive lengths whose longest is seq_len="
                             f"{self.seq_len}")
        self._lock = threading.Lock()
        self._proc = subprocess.Popen([self.python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      env=_env())
        try:
            self.info = self._call({"op": "load", "path": str(Path(path).resolve()), "sha256": sha256,
                                    "seq_lens": self.seq_lens, "batch_sizes": [int(b) for b in batch_sizes],
                                    "num_cores": num_cores})[0]
        except BaseException:
            self.close()
            raise
        self.info.pop("arrays", None)
        self.output_names = list(self.info["outputs"])
        self.calls, self.engine_s, self.roundtrip_s = 0, 0.0, 0.0
        log.info("DeepSparse %s: %s compiled for batch %s x length %s in %.1f s (%.1f%% of MatMul weights zero, "
                 "%.0f%% of ops supported, %s%s, %d cores)", self.info["version"], Path(path).name,
                 self.info["batch_sizes"], self.seq_lens, self.info["compile_s"], 100 * self.info["zeros"], 100 * self.info["supported_ops"],
                 self.info["avx"], " VNNI" if self.info["vnni"] else "", self.info["num_cores"])
        rerouted = {(n, b): r for n, v in (self.info.get("routes") or {}).items() for b, r in v.items() if int(r) != int(n)}
        for (n, b), r in rerouted.items():
            ms = self.info["bucket_ms"]
            log.info("DeepSparse: batch %s of length %s runs at length %s, whose engine is faster (%.1f ms vs %.1f ms)",
                     b, n, r, ms[str(r)][b], ms[n][b])

    def bucket_length(self, length: int) -> int:
        """The compiled length a batch whose longest member has ``length`` tokens runs at."""
        return next((n for n in self.seq_lens if n >= length), self.seq_lens[-1])

    def stats(self) -> dict:
        """The load reply plus, over every ``run`` so far: calls, the worker's engine seconds and the round-trip
        seconds seen here (their difference is what the process hop costs)."""
        hop = (self.roundtrip_s - self.engine_s) / self.calls if self.calls else None
        return {**self.info, "calls": self.calls, "engine_s": self.engine_s, "roundtrip_s": self.roundtrip_s,
                "hop_ms_per_call": None if hop is None else 1e3 * hop}

    @property
    def provider(self) -> str:
        """What a result's ``provider`` says (bertprune.mlperf.system reads it for the system description)."""
        return f"DeepSparse {self.info['version']}"

    def _call(self, header: dict, arrays=()) -> tuple[dict, list]:
        with self._lock:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the DeepSparse worker ({self.python}) exited with {self._proc.returncode}; "
                                   "its messages are above (stderr)")
            try:
                protocol.write_frame(self._proc.stdin, header, arrays)
                reply = protocol.read_frame(self._proc.stdout)
            except (BrokenPipeError, EOFError) as e:
                raise RuntimeError(f"the DeepSparse worker ({self.python}) died during {header['op']!r} ({e}); its "
                                   "messages are above (stderr)") from e
        if reply is None:
            raise RuntimeError(f"the DeepSparse worker ({self.python}) closed its output during {header['op']!r}")
        head, out = reply
        if not head.get("ok"):
            raise RuntimeError(f"DeepSparse worker: {head.get('error')}")
        return head, out

    def run(self, output_names, feeds: dict) -> list[np.ndarray]:
        arrays = [np.ascontiguousarray(feeds[name], dtype=np.int64) for name in INPUTS]
        if arrays[0].ndim != 2 or arrays[0].shape[1] not in self.seq_lens:
            raise ValueError(f"feeds of shape {list(arrays[0].shape)}: the DeepSparse engines are compiled for "
                             f"[batch, L] with L in {self.seq_lens} (static shapes: pad a batch to one of them, "
                             "bucket_length)")
        t0 = time.perf_counter()
        head, out = self._call({"op": "run"}, arrays)
        with self._lock:
            self.calls += 1
            self.engine_s += head.get("engine_s", 0.0)
            self.roundtrip_s += time.perf_counter() - t0
        by_name = dict(zip(self.output_names, out))
        return [by_name[n] for n in (output_names or self.output_names)]

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is None or proc.poll() is not None:
            return
        try:
            with self._lock:
                protocol.write_frame(proc.stdin, {"op": "close"})
                proc.stdin.close()
            proc.wait(timeout=30)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
