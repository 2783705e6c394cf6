"""The ``hardware/`` config group: where the work runs, checked before any long computation."""

from __future__ import annotations

import torch

ACCELERATORS = ("cpu", "gpu")


def check_hardware(hw) -> torch.device:
    """Validate a hardware config and return the torch device the algorithm core should use."""
    accel = hw.get("accelerator", "cpu")
    if accel not in ACCELERATORS:
        raise ValueError(f"hardware.accelerator={accel!r}; expected one of {ACCELERATORS}")
    devices = hw.get("devices", 1)
    if accel == "gpu":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"hardware={hw.get('name', 'gpu')} needs a CUDA GPU, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}). Run with hardware=cpu, or install a CUDA build of torch on a GPU machine.")
        if isinstance(devices, int) and devices > torch.cuda.device_count():
            raise RuntimeError(f"hardware.devices={devices} but only {torch.cuda.device_count()} GPU(s) are visible")
    elif not isinstance(devices, int) or devices < 1:
        raise ValueError(f"hardware.devices={devices!r}: on CPU give the number of processes (>= 1)")
    if hw.get("num_threads"):
        torch.set_num_threads(int(hw["num_threads"]))
    return torch.device("cuda" if accel == "gpu" else "cpu")


def trainer_kwargs(hw) -> dict:
    return dict(accelerator=hw.get("accelerator", "cpu"), devices=hw.get("devices", 1),
                strategy=hw.get("strategy", "auto"), precision=hw.get("precision", "32-true"))
