"""The ``hardware/`` config group: where the work runs, checked before any long computation."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

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
    check_launcher()
    if hw.get("num_threads"):
        torch.set_num_threads(int(hw["num_threads"]))
    elif (n := parallel_jobs()) > 1:  # jobs side by side (hydra/launcher=joblib): share the cores, don't oversubscribe
        torch.set_num_threads(max(1, usable_cpus() // n))
        log.info("%d jobs run side by side: %d torch thread(s) in this one (hardware.num_threads sets it)", n,
                 torch.get_num_threads())
    return torch.device("cuda" if accel == "gpu" else "cpu")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _launcher_target() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().launcher.get("_target_", "")) if HydraConfig.initialized() else ""
    except Exception:  # noqa: BLE001 - no Hydra config: no launcher
        return ""


def check_launcher() -> None:
    """The re-launch trap: under the submitit (SLURM) launcher every SLURM task runs the whole job, and the
    job starts its own processes (ddp_spawn), so more than one task per job would run it several times."""
    ntasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if ntasks > 1 and "SLURM_PROCID" in os.environ and "submitit" in _launcher_target().lower():
        raise RuntimeError(f"this job runs as {ntasks} SLURM tasks (hydra.launcher.tasks_per_node x nodes): each "
                           "would run the whole job, and the job starts one process per device itself (ddp_spawn). "
                           "Set hydra.launcher.tasks_per_node=1 and hydra.launcher.nodes=1 (hydra/launcher=slurm "
                           "does), and hydra.launcher.gpus_per_node to the GPUs that hardware=multi_gpu should use.")


def parallel_jobs() -> int:
    """How many jobs the Hydra launcher runs at once beside this one: the joblib launcher's ``n_jobs``
    (-1: one per CPU), 1 for the basic launcher, a SLURM job (its own cores) or outside Hydra."""
    if "joblib" not in _launcher_target().lower():
        return 1
    try:
        from hydra.core.hydra_config import HydraConfig

        n = int(HydraConfig.get().launcher.get("n_jobs") or 1)
    except Exception:  # noqa: BLE001 - no n_jobs: one job
        return 1
    return usable_cpus() if n < 0 else max(1, n)


def trainer_kwargs(hw) -> dict:
    return dict(accelerator=hw.get("accelerator", "cpu"), devices=hw.get("devices", 1),
                strategy=hw.get("strategy", "auto"), precision=hw.get("precision", "32-true"))
