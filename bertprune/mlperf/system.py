"""The machine a benchmark ran on, as MLPerf's ``systems/<system>.json`` describes it.

``detect()`` reads what the machine can tell (``lscpu``, /proc, /sys, ``nvidia-smi``, the Python packages);
``describe()`` turns it into the checker's flat field set, with what no probe can read (cooling, the cloud
instance, the cost per hour, a DIMM layout without DMI access) taken from the ``system`` config and marked
``not given (...)`` when missing, so a reader sees it was not measured. A ``description_file`` (e.g. the
``system_desc.json`` MLCommons' ``mlperf-sysinfo capture`` writes) fills fields too: its non-empty values
win over detection (docs/mlperf.md, "System description").
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bertprune.io import safe_name

DIVISION = "open"
NOT_GIVEN = "not given (set bench.py system.{key}=...)"
# SystemConfig key -> the systems/<system>.json field it fills
GIVEN_FIELDS = {"memory_configuration": "host_memory_configuration", "cooling": "cooling",
                "cloud_instance": "cloud_instance_type", "cost_per_hour": "cost_per_hour_usd"}
SYS = Path("/sys")


@dataclass
class SystemConfig:
    """What no probe can read (bench.py's ``system`` config); None = not given."""

    cooling: str | None = None  # e.g. air, liquid
    cloud_instance: str | None = None  # e.g. n2-standard-2; also in system_type_detail
    cost_per_hour: float | None = None  # USD per hour of the whole machine: the summary's samples per dollar
    memory_configuration: str | None = None  # e.g. "8x 32 GB DDR5-4800"; read from DMI where it is accessible
    status: str = "available"  # available | preview | rdi
    system_type: str = "edge"  # edge | datacenter
    description_file: str | None = None  # a system_desc.json whose non-empty fields win over detection

    def __post_init__(self) -> None:
        if self.cost_per_hour is not None and not float(self.cost_per_hour) > 0:
            raise ValueError(f"system.cost_per_hour={self.cost_per_hour} must be > 0 (USD per hour) or null")
        if self.status not in ("available", "preview", "rdi"):
            raise ValueError(f"system.status={self.status!r}; expected available, preview or rdi")
        if self.system_type not in ("edge", "datacenter"):
            raise ValueError(f"system.system_type={self.system_type!r}; expected edge or datacenter")
        if self.description_file and not Path(self.description_file).is_file():
            raise FileNotFoundError(f"system.description_file={self.description_file} is not a file; give the "
                                    "system_desc.json of `mlperf-sysinfo capture`, or null")


@dataclass
class Machine:
    """What the machine told. Counts are None when no probe answered."""

    cpu_model: str = "unknown"
    sockets: int | None = None
    cores_per_socket: int | None = None
    threads: int | None = None  # logical CPUs of the machine
    usable_threads: int | None = None  # logical CPUs this process may run on (affinity, container limits)
    threads_per_core: int = 1
    max_mhz: float | None = None
    mhz_is_current: bool = False  # only the current clock was readable
    caches: str | None = None
    numa_nodes: int | None = None
    memory_gb: float | None = None
    memory_configuration: str | None = None
    storage_type: str | None = None
    storage_gb: float | None = None
    nics: list[dict] = field(default_factory=list)  # [{"name", "type", "speed_mbit"}]
    gpus: list[dict] = field(default_factory=list)  # [{"name", "memory_mb", "max_sm_mhz", "pcie"}]
    gpu_driver: str | None = None
    os: str = ""
    hostname: str = ""

    @property
    def cores(self) -> int | None:
        """Physical cores of the machine."""
        return self.sockets * self.cores_per_socket if self.sockets and self.cores_per_socket else None

    @property
    def usable_cores(self) -> int:
        """Physical cores this process may use (its logical CPUs / threads per core, at least 1)."""
        threads = self.usable_threads or self.threads or os.cpu_count() or 1
        return max(1, threads // max(1, self.threads_per_core))


def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _lscpu() -> dict[str, str]:
    """``lscpu``'s fields ({"Model name": ..., "Socket(s)": ...}); {} without lscpu."""
    text = _run(["lscpu", "-J"])
    if text:
        try:
            return {e["field"].rstrip(":"): str(e["data"]) for e in json.loads(text)["lscpu"] if e.get("data")}
        except (ValueError, KeyError, TypeError):
            pass
    text = _run(["lscpu"]) or ""
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def _int(text: str | None) -> int | None:
    m = re.match(r"\s*(\d+)", text or "")
    return int(m.group(1)) if m else None


def _cpu(m: Machine) -> None:
    info = _lscpu()
    cpuinfo = _read(Path("/proc/cpuinfo")) or ""
    models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    m.cpu_model = info.get("Model name") or (models[0].strip() if models else platform.processor() or platform.machine())
    m.sockets = _int(info.get("Socket(s)")) or max(1, len(set(re.findall(r"^physical id\s*:\s*(\d+)$", cpuinfo, re.M))))
    m.threads = _int(info.get("CPU(s)")) or os.cpu_count()
    m.threads_per_core = _int(info.get("Thread(s) per core")) or 1
    m.cores_per_socket = _int(info.get("Core(s) per socket")) or _int(
        (re.findall(r"^cpu cores\s*:\s*(\d+)$", cpuinfo, re.M) or [None])[0])
    try:
        m.usable_threads = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        m.usable_threads = m.threads
    # maximum clock: cpufreq, lscpu, the model name's "@ 2.20GHz"; else the current clock, said so
    khz = _int(_read(SYS / "devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))
    at = re.search(r"@\s*([\d.]+)\s*GHz", m.cpu_model)
    if khz:
        m.max_mhz = khz / 1000
    elif info.get("CPU max MHz"):
        m.max_mhz = float(info["CPU max MHz"])
    elif at:
        m.max_mhz = float(at.group(1)) * 1000
    else:
        mhz = re.findall(r"^cpu MHz\s*:\s*([\d.]+)$", cpuinfo, re.M)
        m.max_mhz, m.mhz_is_current = (float(mhz[0]), True) if mhz else (None, False)
    levels = [f"{k.split(' ')[0]}: {info[k]}" for k in ("L1d cache", "L1i cache", "L2 cache", "L3 cache") if info.get(k)]
    m.caches = "; ".join(levels) or ((re.findall(r"^cache size\s*:\s*(.+)$", cpuinfo, re.M) or [None])[0])
    m.numa_nodes = _int(info.get("NUMA node(s)")) or len(list((SYS / "devices/system/node").glob("node[0-9]*"))) or None


def _memory(m: Machine) -> None:
    kb = _int((re.findall(r"^MemTotal:\s+(\d+)", _read(Path("/proc/meminfo")) or "", re.M) or [None])[0])
    m.memory_gb = round(kb / 2**20, 1) if kb else None
    dmi = _run(["dmidecode", "-t", "memory"])  # root and a DMI table: the DIMMs
    if dmi:
        sizes = re.findall(r"^\s*Size:\s*(\d+\s*[GM]B)", dmi, re.M)
        kind = (re.findall(r"^\s*Type:\s*(DDR\w*)", dmi, re.M) or [""])[0]
        speed = (re.findall(r"^\s*Speed:\s*(\d+ MT/s)", dmi, re.M) or [""])[0]
        if sizes:
            m.memory_configuration = f"{len(sizes)}x {sizes[0]} {kind} {speed}".strip()


def _storage(m: Machine, path: Path) -> None:
    """Type and size of the disk holding ``path`` (the benchmark's output folder)."""
    m.storage_gb = round(shutil.disk_usage(path).total / 2**30)
    try:
        dev = os.stat(path).st_dev
        block = (SYS / "dev/block" / f"{os.major(dev)}:{os.minor(dev)}").resolve()
    except OSError:
        return
    disk = block if (block / "queue").is_dir() else block.parent  # a partition's queue is its disk's
    rotational = _read(disk / "queue/rotational")
    name = disk.name
    if name.startswith("nvme"):
        m.storage_type = "NVMe SSD"
    elif rotational is not None:
        virtual = name.startswith(("vd", "xvd"))
        m.storage_type = ("virtual disk" if virtual else "HDD" if rotational == "1" else "SSD") + f" ({name})"
    elif name.startswith(("overlay", "dm-", "loop")) or not name:
        m.storage_type = None


def _network(m: Machine) -> None:
    for nic in sorted((SYS / "class/net").glob("*")):
        if nic.name == "lo" or not (nic / "device").exists():  # virtual interfaces have no device
            continue
        kind = "Wi-Fi" if (nic / "wireless").exists() else "Ethernet" if _read(nic / "type") == "1" else "other"
        speed = _int(_read(nic / "speed"))
        m.nics.append({"name": nic.name, "type": kind, "speed_mbit": speed if speed and speed > 0 else None})


def _gpus(m: Machine) -> None:
    q = _run(["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.sm,pcie.link.gen.max,pcie.link.width.max,"
              "driver_version", "--format=csv,noheader,nounits"])
    if q:
        for line in q.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 6:
                m.gpus.append({"name": parts[0], "memory_mb": _int(parts[1]), "max_sm_mhz": _int(parts[2]),
                               "pcie": f"PCIe Gen{parts[3]} x{parts[4]}" if _int(parts[3]) else None})
                m.gpu_driver = parts[5]
        return
    try:  # no nvidia-smi: what torch sees
        import torch

        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            m.gpus.append({"name": props.name, "memory_mb": props.total_memory // 2**20, "max_sm_mhz": None,
                           "pcie": None})
    except Exception:  # noqa: BLE001 - no CUDA: no GPUs
        pass


def _os_name() -> str:
    text = _read(Path("/etc/os-release")) or ""
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', text, re.M)
    return f"{pretty.group(1)} (kernel {platform.release()})" if pretty else platform.platform()


def detect(path: str | Path = ".") -> Machine:
    """Everything the machine tells about itself (``path``: where the results are written, for the disk)."""
    m = Machine(os=_os_name(), hostname=socket.gethostname())
    _cpu(m)
    _memory(m)
    _storage(m, Path(path))
    _network(m)
    _gpus(m)
    return m


def default_system_name(machine: Machine | None = None) -> str:
    machine = machine or detect()
    cpu = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*$", "", machine.cpu_model).strip()
    return safe_name(f"{machine.hostname}-{cpu}".replace(" ", "-").lower()).strip("-_")


def package_versions() -> dict[str, str]:
    """The installed versions of the packages a result depends on (absent ones left out)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("onnxruntime", "onnxruntime-gpu", "torch", "transformers", "mlcommons-loadgen", "numpy", "bertprune"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def describe(system_name: str, submitter: str, providers: set[str], config: SystemConfig | None = None,
             machine: Machine | None = None) -> dict[str, str]:
    """``systems/<system>.json``: the checker's fields (every value a non-empty string; the checker reads a
    number 0 as empty) plus ``host_processor_vcpu_count``, ``cloud_instance_type``, ``cost_per_hour_usd`` and
    ``not_detected`` (the fields that came from neither the machine nor the config)."""
    config = config or SystemConfig()
    m = machine or detect()
    missing: list[str] = []

    def given(key: str, value):
        if value is None or value == "":
            missing.append(key)
            return NOT_GIVEN.format(key=key)
        return value

    versions = package_versions()
    gpu = bool(m.gpus) and "CUDAExecutionProvider" in providers
    g = m.gpus[0] if m.gpus else {}
    nic_types = sorted({n["type"] for n in m.nics})
    speeds = sorted({n["speed_mbit"] for n in m.nics if n["speed_mbit"]})
    ort = versions.get("onnxruntime") or versions.get("onnxruntime-gpu") or "?"
    deepsparse = sorted(p for p in providers if p.startswith("DeepSparse"))  # runtime=deepsparse's runs
    freq = (f"{m.max_mhz:.0f} MHz" + (" (current clock; the maximum is not exposed)" if m.mhz_is_current else "")
            if m.max_mhz else "not exposed by the machine")
    desc = {
        "division": DIVISION, "submitter": submitter, "status": config.status, "system_name": system_name,
        "system_type": config.system_type,
        "system_type_detail": (f"cloud instance {config.cloud_instance}" if config.cloud_instance else
                               "single machine running the bertprune LoadGen harness"),
        "number_of_nodes": 1, "host_processor_model_name": m.cpu_model,
        "host_processors_per_node": m.sockets or 1,
        "host_processor_core_count": m.cores_per_socket or m.threads or 1,
        "host_processor_vcpu_count": m.threads or 1,
        "host_processor_frequency": freq,
        "host_processor_caches": m.caches or "not exposed by the machine",
        "host_processor_interconnect": (f"{m.numa_nodes} NUMA nodes" if (m.numa_nodes or 1) > 1 else
                                        "single socket, one NUMA node" if (m.sockets or 1) == 1 else "one NUMA node"),
        "host_memory_capacity": f"{m.memory_gb} GB" if m.memory_gb else "not exposed by the machine",
        "host_memory_configuration": given("memory_configuration", config.memory_configuration or m.memory_configuration),
        "host_storage_type": m.storage_type or "not exposed by the machine",
        "host_storage_capacity": f"{m.storage_gb} GB" if m.storage_gb else "not exposed by the machine",
        "host_networking": (", ".join(nic_types) + (f" {'/'.join(str(s) for s in speeds)} Mbit/s" if speeds else "")
                            if m.nics else "none"),
        "host_networking_topology": "single node: no inter-node network",
        "host_network_card_count": str(len(m.nics)) + (f" ({', '.join(n['name'] for n in m.nics)})" if m.nics else ""),
        "accelerators_per_node": len(m.gpus) if gpu else 0,
        "accelerator_model_name": g.get("name", "N/A") if gpu else "N/A",
        "accelerator_frequency": f"{g['max_sm_mhz']} MHz" if gpu and g.get("max_sm_mhz") else "N/A",
        "accelerator_host_interconnect": (g.get("pcie") or "PCIe") if gpu else "N/A",
        "accelerator_interconnect": "N/A", "accelerator_interconnect_topology": "N/A",
        "accelerator_memory_capacity": f"{g['memory_mb'] / 1024:.0f} GB" if gpu and g.get("memory_mb") else "N/A",
        "accelerator_memory_configuration": "not reported by the driver" if gpu else "N/A",
        "accelerator_on-chip_memories": "N/A",
        "cooling": given("cooling", config.cooling),
        "hw_notes": ("GPU used through ONNX Runtime's CUDA provider" if gpu else "CPU only (no accelerator used)"),
        "framework": ", ".join(p.lower() for p in deepsparse) if deepsparse else f"onnxruntime {ort}",
        "operating_system": m.os,
        "other_software_stack": ", ".join([f"Python {platform.python_version()}"] +
                                          [f"{k} {v}" for k, v in versions.items() if not k.startswith("onnxruntime")] +
                                          ([f"NVIDIA driver {m.gpu_driver}"] if m.gpu_driver else [])),
        "sw_notes": (f"{', '.join(deepsparse)} (sparse CPU engine) in its own venv, compiled for static shapes; "
                     "harness in bertprune's environment" if deepsparse else
                     f"execution providers: {', '.join(sorted(providers)) or 'CPUExecutionProvider'}"),
        "cloud_instance_type": given("cloud_instance", config.cloud_instance),
        "cost_per_hour_usd": given("cost_per_hour", config.cost_per_hour),
    }
    if config.description_file:  # e.g. mlperf-sysinfo's capture: its non-empty answers win
        theirs = json.loads(Path(config.description_file).read_text())
        desc.update({k: v for k, v in theirs.items() if k in desc and isinstance(v, (str, int, float)) and str(v)})
        missing = [k for k in missing if desc[GIVEN_FIELDS[k]] == NOT_GIVEN.format(key=k)]
    out = {k: str(v) for k, v in desc.items()}
    out["not_detected"] = ", ".join(missing) or "none"
    return out
