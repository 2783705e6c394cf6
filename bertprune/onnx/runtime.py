"""ONNX Runtime sessions with execution providers chosen explicitly.

onnxruntime-gpu lists CUDA/TensorRT providers even on machines without a usable GPU, so the list of
*available* providers says nothing; a CUDA provider is used only when torch sees a CUDA device and
the session really comes up on it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")


def onnxruntime():
    """The ``onnxruntime`` module, or one clear error saying which extra installs it."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("ONNX Runtime is not installed; it is an extra of bertprune: pip install 'bertprune[cpu]' "
                          "(onnxruntime) or 'bertprune[gpu]' (onnxruntime-gpu) — one of the two, never both — or "
                          "`make setup` (ORT=gpu for the GPU wheel)") from e
    return ort


def cuda_usable() -> bool:
    import torch

    ort = onnxruntime()

    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


def choose_providers(device: str = "auto") -> list[str]:
    """Providers for ``device``: cpu -> CPU; cuda -> CUDA (error if unusable); auto -> CUDA if usable else CPU."""
    if device not in DEVICES:
        raise ValueError(f"hardware.runtime_device={device!r}; expected one of {DEVICES}")
    onnxruntime()  # installed at all? (checked up front by every job that runs ONNX)
    if device == "cpu" or (device == "auto" and not cuda_usable()):
        return ["CPUExecutionProvider"]
    if not cuda_usable():
        raise RuntimeError("hardware.runtime_device=cuda needs a CUDA GPU visible to torch and onnxruntime-gpu's CUDA provider; "
                           "none is usable here. Use hardware=cpu (or hardware.runtime_device=cpu / auto).")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def make_session(path, device: str = "auto", intra_op_threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` and the provider it actually runs on.

    path: the .onnx file, or its bytes (what the harness hashed is then exactly what runs)."""
    ort = onnxruntime()

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    opts.log_severity_level = 3
    providers = choose_providers(device)
    model = bytes(path) if isinstance(path, (bytes, bytearray, memoryview)) else str(path)
    session = ort.InferenceSession(model, sess_options=opts, providers=providers)
    used = session.get_providers()[0]
    if providers[0] != used:
        log.warning("Asked for %s, ONNX Runtime runs on %s", providers[0], used)
    return session, used


@contextlib.contextmanager
def quiet():
    """Silence the exporter's and quantizer's chatter (hundreds of INFO lines, benign warnings about
    dynamic-axis names) without touching the caller's logging configuration afterwards."""
    previous = logging.root.manager.disable
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = registration.level
    logging.disable(logging.INFO)
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        logging.disable(previous)
        registration.setLevel(level)
