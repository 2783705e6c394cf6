"""DeepSparse as a worker process: one exported ONNX file compiled for static shapes, run on request.

DeepSparse 1.8 pins onnx < 1.15 and numpy < 2, which bertprune's locked environment does not allow, so it
lives in a venv of its own (``make setup-deepsparse``: ``.venv-deepsparse``) and this module runs there:
``<that venv>/bin/python bertprune/onnx/deepsparse_worker.py``. It imports only the standard library, numpy,
onnx and deepsparse (never the rest of bertprune); ``bertprune.onnx.deepsparse_runtime`` is the client side.

Protocol, on the worker's stdin/stdout (DeepSparse's own prints go to stderr): every message is a frame =
an 8-byte little-endian length + a JSON header, followed by the raw bytes of the arrays the header lists
(each an 8-byte length + C-order bytes). Requests and their replies:

* ``{"op": "load", "path", "sha256", "seq_lens", "batch_sizes", "num_cores"}`` -> the file's bytes are
  hashed and checked, its IR version lowered to 9 (``prepare``), one engine compiled per batch size and
  sequence length for inputs ``[batch, seq_len]``; with several lengths, each engine is timed and a length
  whose engine is slower than a longer one's is routed to that longer one (``routes``: a sparse engine can be
  slower at 32 tokens than at 64) -> ``{"ok", "inputs", "outputs", "version", "compile_s", "zeros", "ir",
  "batch_sizes", "seq_lens", "routes", "bucket_ms", "supported_ops", "avx", "vnni", "num_cores"}``.
* ``{"op": "run", "arrays": [...]}`` + the three MLPerf inputs (int64 ``[b, L]``, L one of the compiled
  lengths) -> each batch is padded to the smallest compiled batch size >= b (rows repeated, their outputs
  dropped), or cut into pieces of the largest one, and padded with masked columns to its route's length -> ``{"ok", "engine_s", "arrays": [...]}`` + one array per
  graph output, ``b`` rows each (engine_s: the worker's time for the request, padding included).
* ``{"op": "close"}`` (or end of input) -> exit 0.

A request that fails gets ``{"ok": false, "error": "..."}``; the worker stays up for the next one.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

INPUTS = ("input_ids", "input_mask", "segment_ids")  # the MLPerf BERT interface (bertprune.interface)
ROUTE_MARGIN = 0.10  # a length runs at a longer one only when that engine is > 10 % faster
IR_MAX = 9  # the ONNX Runtime inside DeepSparse 1.8 reads IR versions <= 9
_LEN = struct.Struct("<Q")


# -- framing (both sides use these; numpy is imported lazily so the client can import this module cheaply)
def write_frame(stream, header: dict, arrays=()) -> None:
    import numpy as np

    arrays = [np.ascontiguousarray(a) for a in arrays]
    header = {**header, "arrays": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays]}
    body = json.dumps(header).encode("utf-8")
    stream.write(_LEN.pack(len(body)) + body)
    for a in arrays:
        stream.write(_LEN.pack(a.nbytes))
        stream.write(memoryview(a).cast("B"))
    stream.flush()


def _read_exact(stream, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError(f"stream ended {left} bytes short of a {n}-byte message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(stream) -> tuple[dict, list] | None:
    """(header, arrays), or None at a clean end of the stream."""
    import numpy as np

    head = stream.read(_LEN.size)
    if not head:
        return None
    if len(head) < _LEN.size:
        head += _read_exact(stream, _LEN.size - len(head))
    header = json.loads(_read_exact(stream, _LEN.unpack(head)[0]).decode("utf-8"))
    arrays = []
    for spec in header.get("arrays", []):
        n = _LEN.unpack(_read_exact(stream, _LEN.size))[0]
        arrays.append(np.frombuffer(_read_exact(stream, n), dtype=np.dtype(spec["dtype"])).reshape(spec["shape"]))
    return header, arrays


# -- the model
def prepare(path: Path, out: Path, expected_sha256: str | None = None) -> tuple[list[str], float, int]:
    """Check ``path`` (and its sha256 when given) has the MLPerf BERT inputs; write it to ``out`` with its IR
    version lowered to 9 when higher (the opset kept). Returns (input names in graph order, fraction of zeros
    in the MatMul/Gemm weights, original IR version)."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise ValueError(f"{path}: sha256 {digest} differs from the {expected_sha256} its export recorded; "
                         "the file changed after export: export it again")
    model = onnx.load_from_string(data) if not Path(f"{path}.data").is_file() else onnx.load(str(path))
    names = [x.name for x in model.graph.input]
    if sorted(names) != sorted(INPUTS):
        raise ValueError(f"{path} has inputs {names}; expected the MLPerf BERT interface {list(INPUTS)} "
                         "(export.py writes it)")
    matmul_inputs = {x for node in model.graph.node if node.op_type in ("MatMul", "Gemm") for x in node.input}
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name in matmul_inputs]
    zeros = sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.size for w in weights))
    ir = model.ir_version
    model.ir_version = min(ir, IR_MAX)
    large = model.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit: weights beside the file
    onnx.save(model, str(out), save_as_external_data=large, location=f"{Path(out).name}.data" if large else None)
    return names, zeros, ir


class Worker:
    def __init__(self):
        self.engines: dict[int, dict[int, object]] = {}  # seq_len -> batch size -> engine
        self.routes: dict[int, dict[int, int]] = {}  # seq_len -> batch size -> the length it runs at (>=)
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="bertprune-deepsparse-")

    def load(self, req: dict) -> dict:
        from deepsparse import __version__, compile_model

        sizes = sorted({int(b) for b in req["batch_sizes"]})
        if not sizes or sizes[0] < 1:
            raise ValueError(f"batch_sizes={req['batch_sizes']}: expected positive batch sizes")
        lens = sorted({int(n) for n in (req.get("seq_lens") or [req["seq_len"]])})
        if lens[0] < 1:
            raise ValueError(f"seq_lens={lens}: expected positive sequence lengths")
        low = Path(self._tmp.name) / "model.onnx"
        self.inputs, zeros, ir = prepare(Path(req["path"]), low, req.get("sha256"))
        t0 = time.perf_counter()
        cores = req.get("num_cores")
        for n in lens:
            for b in sizes:
                self.engines.setdefault(n, {})[b] = compile_model(str(low), batch_size=b, num_cores=cores,
                                                                  input_shapes=[[b, n]] * len(self.inputs))
                print(f"deepsparse worker: compiled batch {b} x {n} ({time.perf_counter() - t0:.1f} s so far)",
                      file=sys.stderr, flush=True)
        engine = self.engines[lens[-1]][sizes[-1]]
        self.outputs = list(engine.output_names)
        bucket_ms = self.time_buckets(int(req.get("timing_runs", 3))) if len(lens) > 1 else {}
        self.routes = {n: {b: self._route(n, b, bucket_ms) for b in sizes} for n in lens}
        return {"ok": True, "inputs": self.inputs, "outputs": self.outputs, "version": __version__,
                "compile_s": time.perf_counter() - t0, "zeros": zeros, "ir": ir, "batch_sizes": sizes,
                "seq_lens": lens, "routes": {str(n): {str(b): r for b, r in v.items()} for n, v in self.routes.items()},
                "bucket_ms": {str(n): {str(b): t for b, t in v.items()} for n, v in bucket_ms.items()},
                "supported_ops": float(engine.fraction_of_supported_ops), "avx": str(engine.cpu_avx_type),
                "vnni": bool(engine.cpu_vnni), "num_cores": int(engine.num_cores)}

    def time_buckets(self, runs: int) -> dict[int, dict[int, float]]:
        """Median ms of ``runs`` calls (after one warm-up) of every engine, on inputs of its compiled shape."""
        import numpy as np

        out: dict[int, dict[int, float]] = {}
        for n, by_size in self.engines.items():
            for b, engine in by_size.items():
                feeds = [np.full((b, n), 1000, np.int64), np.ones((b, n), np.int64), np.zeros((b, n), np.int64)]
                feeds = [feeds[INPUTS.index(name)] for name in self.inputs]
                engine.run(feeds)
                times = []
                for _ in range(max(1, runs)):
                    t0 = time.perf_counter()
                    engine.run(feeds)
                    times.append(1e3 * (time.perf_counter() - t0))
                out.setdefault(n, {})[b] = sorted(times)[len(times) // 2]
        return out

    @staticmethod
    def _route(n: int, b: int, bucket_ms: dict) -> int:
        """The length a length-``n`` piece of batch size ``b`` runs at: the fastest compiled length >= n, when
        it is faster than ``n``'s own engine by more than ``ROUTE_MARGIN`` (timings of a few calls are noisy,
        and a longer length needlessly taken costs time); else ``n`` (also when untimed)."""
        if not bucket_ms:
            return n
        best_ms, best = min((bucket_ms[m][b], m) for m in sorted(bucket_ms) if m >= n)
        return best if bucket_ms[n][b] > (1 + ROUTE_MARGIN) * best_ms else n

    def run(self, arrays: list) -> list:
        """``arrays``: input_ids, input_mask, segment_ids [b, L] (L a compiled length) -> the graph's outputs,
        b rows each."""
        import numpy as np

        if not self.engines:
            raise RuntimeError("run before load")
        feeds = dict(zip(INPUTS, arrays))
        b, n_tok = (int(d) for d in arrays[0].shape) if arrays[0].ndim == 2 else (0, 0)
        engines = self.engines.get(n_tok)
        for name, a in feeds.items():
            if engines is None or a.shape != (b, n_tok):
                raise ValueError(f"{name} has shape {list(a.shape)}; the engines are compiled for [batch, L] with "
                                 f"L in {sorted(self.engines)}")
        largest = max(engines)
        pieces = []
        for start in range(0, b, largest):
            n = min(largest, b - start)
            size = min(s for s in engines if s >= n)
            rows = np.arange(start, start + size)
            rows[n:] = start  # padding: repeats of the piece's first row, dropped below
            run_len = self.routes.get(n_tok, {}).get(size, n_tok)
            piece = [np.ascontiguousarray(feeds[k][rows]) for k in self.inputs]
            if run_len > n_tok:  # masked columns (ids, mask and segment 0): the outputs of the shorter length
                piece = [np.pad(a, ((0, 0), (0, run_len - n_tok))) for a in piece]
            outs = self.engines[run_len][size].run(piece)
            pieces.append([np.asarray(o)[:n] for o in outs])
        return [np.concatenate([p[i] for p in pieces]) if len(pieces) > 1 else pieces[0][i]
                for i in range(len(self.outputs))]


def serve(stdin, stdout) -> int:
    worker = Worker()
    while True:
        try:
            msg = read_frame(stdin)
        except EOFError:
            return 1
        if msg is None:
            return 0
        header, arrays = msg
        op = header.get("op")
        if op == "close":
            write_frame(stdout, {"ok": True})
            return 0
        try:
            if op == "load":
                write_frame(stdout, worker.load(header))
            elif op == "run":
                t0 = time.perf_counter()
                outs = worker.run(arrays)
                write_frame(stdout, {"ok": True, "engine_s": time.perf_counter() - t0}, outs)
            else:
                raise ValueError(f"unknown op {op!r}; expected load, run or close")
        except Exception as e:  # noqa: BLE001 - reported to the client, which raises it
            traceback.print_exc(file=sys.stderr)
            write_frame(stdout, {"ok": False, "error": f"{type(e).__name__}: {e}"})


def main() -> int:
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # DeepSparse would try to report usage over the network
    protocol = os.fdopen(os.dup(1), "wb")  # the frames; anything else printed to stdout goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return serve(sys.stdin.buffer, protocol)


if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        del sys.path[0]  # run by path: this folder (bertprune/onnx) must not shadow installed packages
    sys.exit(main())
