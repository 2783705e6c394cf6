"""Latency lookup tables measured on the runtime that serves the model (docs/method.md, "Latency cost model").

``measure_table(model, kind, settings)`` times, on ONNX Runtime (the provider of ``settings.device``) or
PyTorch, at the scenario's batch size, the served sequence length and the benchmark's thread count:

* copies of ``model`` whose every layer keeps h of the H heads with the FFN pruned away (``mha``), and n
  of the F neurons with the attention pruned away (``ffn``), at the sample counts of ``sample_counts``;
  whole models, so their weights stream through the caches as the served model's do;
* the model with every head and neuron pruned (``skeleton_ms``, the count 0 of both blocks) and the
  dense model (``dense_ms``).

Each sample is exported exactly as the served model is (``bertprune.onnx.export.export_onnx``) and all
samples are timed interleaved (round-robin, median of every call), so a noisy neighbour slows them
alike. The table is plain JSON in ``<cache>/latency/<key>.json``, keyed by the model geometry, the
runtime and its version, the provider, the device name, the threads, the batch and the sequence
length (``table_key``); ``bertprune.core.cost.LatencyCost.from_table`` fits it. ``latency_cost`` is
the ``cost=latency`` factory (``conf/cost/latency.yaml``); ``time_served`` times an exported model
with the same settings (the measured latency in results.json).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bertprune.core.cost import LatencyCost, MacCost
from bertprune.scenarios import ScenarioSettings
from bertprune.tasks.kinds import get_kind

log = logging.getLogger(__name__)

FORMAT = "bertprune.latency.lut/2"
RUNTIMES = ("onnxruntime", "torch")
SCENARIO_NAMES = ("single_stream", "offline", "multi_stream", "server")


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured: what the benchmark serves the model with.

    runtime: onnxruntime | torch; device: cpu | cuda | auto (ONNX Runtime's provider, as
    ``hardware.runtime_device``); batch_size, seq_len: the served input ``[batch, seq]``; threads: intra-op
    threads (None = the runtime's default, as the benchmark's ``intra_op_threads: null``); points: sample
    counts per block; min_time_s: timing per sample (split over ``rounds`` interleaved rounds)."""

    runtime: str = "onnxruntime"
    device: str = "cpu"
    batch_size: int = 1
    seq_len: int = 128
    threads: int | None = None
    points: int = 9
    min_time_s: float = 0.3
    rounds: int = 5
    scenario: str | None = None

    def __post_init__(self) -> None:
        check_settings(self)


def _fail(key: str, value, expected: str) -> None:
    raise ValueError(f"cost.{key}={value!r}: expected {expected}")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_settings(s: LatencySettings) -> None:
    """One error naming the ``cost.<key>`` of a bad value (cheap: nothing is imported or run)."""
    if s.runtime not in RUNTIMES:
        _fail("runtime", s.runtime, f"one of {', '.join(RUNTIMES)}")
    if s.device not in ("auto", "cpu", "cuda"):
        _fail("device", s.device, "cpu, cuda or auto (the ONNX Runtime provider, as hardware.runtime_device)")
    if not _positive_int(s.batch_size):
        _fail("batch_size", s.batch_size, "an integer >= 1 (or null for the scenario's batch size)")
    if not _positive_int(s.seq_len):
        _fail("served_seq_len", s.seq_len, "an integer >= 1 (or null for the task's max_length)")
    if s.threads is not None and not _positive_int(s.threads):
        _fail("threads", s.threads, "an integer >= 1 (or null for the scenario's intra_op_threads)")
    if not (_positive_int(s.points) and s.points >= 2):
        _fail("points", s.points, "an integer >= 2 (sample counts per block, 0 and the full width included)")
    if not (isinstance(s.min_time_s, (int, float)) and s.min_time_s > 0):
        _fail("min_time_s", s.min_time_s, "a number of seconds > 0")
    if not _positive_int(s.rounds):
        _fail("rounds", s.rounds, "an integer >= 1")
    if s.scenario is not None and s.scenario not in SCENARIO_NAMES:
        _fail("scenario", s.scenario, f"one of {', '.join(SCENARIO_NAMES)}")


def scenario_serving(name: str) -> tuple[int, int | None]:
    """(batch size, intra-op threads) of the LoadGen scenario ``name`` as ``conf/scenario/<name>.yaml`` sets
    them (SingleStream 1; Offline its configured batch), i.e. what ``bench.py`` serves the model with."""
    if name not in SCENARIO_NAMES:
        _fail("scenario", name, f"one of {', '.join(SCENARIO_NAMES)}")
    sc = ScenarioSettings.named(name)
    return (sc.query_size if sc.loadgen == "SingleStream" else int(sc.batch_size)), sc.intra_op_threads


# ----------------------------------------------------------------------------------------------
# Where it runs


def device_name(provider: str) -> str:
    """The processor (CPU providers) or GPU name the table was measured on."""
    if provider.startswith("CUDA") or provider == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_runtime(s: LatencySettings) -> dict:
    """The runtime that will run: name + version, provider, device name, threads as set (None = default)."""
    if s.runtime == "onnxruntime":
        from bertprune.onnx.runtime import choose_providers, onnxruntime

        provider = choose_providers(s.device)[0]
        version = f"onnxruntime {onnxruntime().__version__}"
    else:
        if s.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("cost.device=cuda with cost.runtime=torch needs a CUDA GPU visible to torch; use "
                               "cost.device=cpu")
        provider = "cuda" if s.device == "cuda" or (s.device == "auto" and torch.cuda.is_available()) else "cpu"
        version = f"torch {torch.__version__}"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"runtime": version, "provider": provider, "device_name": device_name(provider),
            "threads": s.threads, "cpus": cpus}


def geometry(model, kind) -> dict:
    """What the latency of ``model`` depends on besides the runtime: family, shape, head, vocabulary."""
    from bertprune.models.adapters import adapter_for

    a = adapter_for(model)
    c = model.config
    return {"family": a.family, "model_type": getattr(c, "model_type", None), "num_layers": a.num_layers(c),
            "num_heads": a.num_heads(c), "hidden_size": a.hidden_size(c), "ffn_width": a.ffn_width(c),
            "head_size": a.head_size(c), "vocab_size": int(c.vocab_size), "kind": get_kind(kind).name,
            "num_labels": int(getattr(c, "num_labels", 0) or 0), "dtype": str(next(model.parameters()).dtype)}


def table_key(geo: dict, rt: dict, s: LatencySettings) -> dict:
    """The cache key: geometry, runtime + version, provider, device name, threads, batch, seq, sampling."""
    return {"format": FORMAT, "geometry": geo, **{k: rt[k] for k in ("runtime", "provider", "device_name", "cpus")},
            "threads": s.threads, "batch_size": s.batch_size, "seq_len": s.seq_len, "points": s.points,
            "min_time_s": s.min_time_s, "rounds": s.rounds}


def cache_path(key: dict, cache_root: str | Path | None = None) -> Path:
    from bertprune.resources import cache_dir, config_key

    root = Path(cache_root) if cache_root is not None else cache_dir() / "latency"
    g = key["geometry"]
    return root / f"{g['family']}-L{g['num_layers']}H{g['num_heads']}F{g['ffn_width']}-b{key['batch_size']}" \
                  f"-s{key['seq_len']}-{config_key(key)}.json"


# ----------------------------------------------------------------------------------------------
# Sample models


def sample_counts(width: int, points: int) -> list[int]:
    """``points`` counts spread evenly over 0..width (0 and width included), and 1: a block's first unit costs
    a launch (its kernels run at all), a jump no straight line from 0 reproduces. Every count when
    width + 1 <= points + 1."""
    if width + 1 <= points + 1:
        return list(range(width + 1))
    return sorted({0, 1} | {round(i * width / (points - 1)) for i in range(points)})


def _shrunk(model, num_layers: int, heads: list[int], neurons: list[int]):
    """A copy of ``model`` with its first ``num_layers`` layers keeping ``heads[l]`` / ``neurons[l]`` units (the first ones)."""
    from bertprune.core.physical import prune_physically
    from bertprune.models.adapters import adapter_for

    m = copy.deepcopy(model).cpu().eval()
    a = adapter_for(m)
    enc = a.encoder(m)
    enc.layer = torch.nn.ModuleList(list(enc.layer)[:num_layers])
    setattr(m.config, a.layers_key, num_layers)
    H, F = a.num_heads(m.config), a.ffn_width(m.config)
    hm, nm = torch.zeros(num_layers, H), torch.zeros(num_layers, F)
    for i, (h, n) in enumerate(zip(heads, neurons)):
        hm[i, :h], nm[i, :n] = 1, 1
    return prune_physically(m, hm, nm).eval()


def sample_models(model, kind, s: LatencySettings) -> list[tuple[str, int, object]]:
    """(block, count, model builder) of every sample: ``mha``/``ffn`` (every layer alike, counts > 0),
    ``skeleton`` (count 0 of both) and ``dense``."""
    from bertprune.models.adapters import adapter_for

    a = adapter_for(model)
    L, H, F = a.dense_shape(model.config)
    out = [("mha", h, lambda h=h: _shrunk(model, L, [h] * L, [0] * L)) for h in sample_counts(H, s.points) if h]
    out += [("ffn", n, lambda n=n: _shrunk(model, L, [0] * L, [n] * L)) for n in sample_counts(F, s.points) if n]
    out += [("skeleton", 0, lambda: _shrunk(model, L, [0] * L, [0] * L)),
            ("dense", 0, lambda: copy.deepcopy(model).cpu().eval())]
    return out


# ----------------------------------------------------------------------------------------------
# Timing


def _inputs(config, s: LatencySettings) -> dict[str, torch.Tensor]:
    """Served-shaped inputs ``[batch, seq]``: random ids, every position real (the QSL pads to seq)."""
    g = torch.Generator().manual_seed(0)
    low = min(1000, config.vocab_size - 1)
    ids = torch.randint(low, config.vocab_size, (s.batch_size, s.seq_len), generator=g)
    return {"input_ids": ids, "input_mask": torch.ones_like(ids), "segment_ids": torch.zeros_like(ids)}


class Runner:
    """One inference of one model with the settings' runtime, provider, threads and input shape."""

    def __init__(self, model, kind, s: LatencySettings, workdir: Path | None = None, onnx_path: Path | None = None):
        self.settings = s
        kind = get_kind(kind)
        feeds = _inputs(model.config if model is not None else _Vocab(), s)
        if s.runtime == "onnxruntime":
            from bertprune.onnx.export import export_onnx
            from bertprune.onnx.runtime import make_session

            if onnx_path is None:
                onnx_path = Path(tempfile.mkstemp(suffix=".onnx", dir=workdir)[1])
                export_onnx(model, onnx_path, kind, s.seq_len if kind.fixed_seq_len else None)
            self.session, self.provider = make_session(onnx_path, s.device, s.threads)
            self.feeds = {k: v.numpy() for k, v in feeds.items()}
            self.outputs = list(kind.onnx_outputs)
            self._run = lambda: self.session.run(self.outputs, self.feeds)
        else:
            from bertprune.onnx.wrapper import MLPerfWrapper

            dev = torch.device("cuda" if resolve_runtime(s)["provider"] == "cuda" else "cpu")
            self.provider = str(dev)
            self.module = MLPerfWrapper(model.to(dev).eval(), kind).eval()
            self.feeds = tuple(v.to(dev) for v in feeds.values())

            def run():
                with torch.inference_mode():
                    self.module(*self.feeds)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
            self._run = run

    def __call__(self) -> float:
        t = time.perf_counter()
        self._run()
        return time.perf_counter() - t


class _Vocab:  # an exported file's inputs need only a vocabulary bound (ids below 1000 are always valid)
    vocab_size = 1001


def time_interleaved(runners: list[Runner], s: LatencySettings, progress: bool = False, desc: str = "timing"
                     ) -> list[float]:
    """Median milliseconds per call of each runner, timed round-robin: ``s.rounds`` rounds, each giving every
    runner about ``s.min_time_s / s.rounds`` seconds, so load from elsewhere hits all of them alike."""
    from tqdm.auto import tqdm

    threads = torch.get_num_threads()
    if s.runtime == "torch" and s.threads:
        torch.set_num_threads(s.threads)
    try:
        per_call = []
        for r in runners:  # warm-up (first calls allocate) and the calls per round
            r(), r()
            per_call.append(min(r() for _ in range(3)))
        reps = [max(3, int(s.min_time_s / s.rounds / max(t, 1e-6))) for t in per_call]
        times: list[list[float]] = [[] for _ in runners]
        bar = tqdm(total=s.rounds * len(runners), desc=desc, disable=not progress, leave=False)
        for _ in range(s.rounds):
            for i, r in enumerate(runners):
                times[i].extend(r() for _ in range(reps[i]))
                bar.update()
        bar.close()
    finally:
        torch.set_num_threads(threads)
    return [1e3 * statistics.median(t) for t in times]


def measure_table(model, kind, s: LatencySettings, progress: bool = True) -> dict:
    """Measure the lookup table of ``model`` (plain data; see the module docstring). Exports and times
    ``2·points + 2`` models (fewer when H <= points); the measuring time is in ``measure_s``. ``mha`` /
    ``ffn`` hold whole-model times (``sample_layers`` = L layers alike), the count 0 = the skeleton."""
    from tqdm.auto import tqdm

    from bertprune.onnx.runtime import quiet

    t0 = time.perf_counter()
    rt = resolve_runtime(s)
    geo = geometry(model, kind)
    samples = sample_models(model, kind, s)
    runners: list[Runner] = []
    with tempfile.TemporaryDirectory(prefix="bertprune-lut-") as tmp:
        for block, count, build in tqdm(samples, desc=f"latency LUT ({s.runtime}, b{s.batch_size} s{s.seq_len})",
                                        disable=not progress):
            with quiet():
                runners.append(Runner(build(), kind, s, Path(tmp)))
        build_s = time.perf_counter() - t0
        ms = time_interleaved(runners, s, progress, desc="latency LUT timing")
        del runners
    table: dict = {"key": table_key(geo, rt, s), "geometry": geo, **rt, "settings": asdict(s),
                   "sample_layers": geo["num_layers"], "mha": {"counts": [], "ms": []}, "ffn": {"counts": [], "ms": []}}
    for (block, count, _), t in zip(samples, ms):
        if block not in ("mha", "ffn"):
            table[f"{block}_ms"] = t
    for (block, count, _), t in zip(samples, ms):
        if block in ("mha", "ffn"):
            if not table[block]["counts"]:
                table[block]["counts"].append(0)
                table[block]["ms"].append(table["skeleton_ms"])
            table[block]["counts"].append(count)
            table[block]["ms"].append(t)
    table["build_s"] = round(build_s, 3)
    table["measure_s"] = round(time.perf_counter() - t0, 3)
    log.info("latency LUT measured in %.1f s (%d samples; dense %.3f ms, skeleton %.3f ms)", table["measure_s"],
             len(samples), table["dense_ms"], table["skeleton_ms"])
    return table


def load_or_measure(model, kind, s: LatencySettings, cache: bool = True, cache_root: str | Path | None = None,
                    progress: bool = True) -> tuple[dict, bool]:
    """(table, came from the cache). A cached table is used only when its stored key equals this one."""
    from bertprune.io import atomic_write_json

    key = table_key(geometry(model, kind), resolve_runtime(s), s)
    path = cache_path(key, cache_root)
    if cache and path.is_file():
        try:
            table = json.loads(path.read_text())
            if table.get("key") == key:
                log.info("latency LUT from the cache: %s (measured in %.1f s)", path, table.get("measure_s", 0))
                return table, True
            log.warning("%s holds another key; measuring again", path)
        except (OSError, ValueError) as e:
            log.warning("unreadable latency LUT %s (%s); measuring again", path, e)
    table = measure_table(model, kind, s, progress=progress)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, table)
    return table, False


def time_served(onnx_or_model, kind, s: LatencySettings, dense=None) -> dict:
    """Measured ms of a served model with the table's settings: an exported ``.onnx`` (onnxruntime) or a
    PyTorch model (torch). ``dense``: the dense model too, timed interleaved with it (``dense_ms``)."""
    with tempfile.TemporaryDirectory(prefix="bertprune-lat-") as tmp:
        def runner(x):
            if isinstance(x, (str, Path)):
                return Runner(None, kind, s, onnx_path=Path(x))
            with _quiet_export():
                return Runner(copy.deepcopy(x).cpu().eval(), kind, s, Path(tmp))
        runners = [runner(onnx_or_model)] + ([runner(dense)] if dense is not None else [])
        ms = time_interleaved(runners, s)
    return {"ms": ms[0], **({"dense_ms": ms[1]} if dense is not None else {})}


def rescaled_to_now(predicted_ms: float, table_dense_ms: float, dense_now_ms: float) -> tuple[float, float]:
    """(drift, rescaled prediction): the dense model timed now over the table's dense time (> 1: the machine
    runs slower than when the table was measured), and ``predicted_ms`` scaled by it (= the predicted ratio
    to dense x the dense model now)."""
    drift = dense_now_ms / table_dense_ms
    return drift, predicted_ms * drift


def _quiet_export():
    from bertprune.onnx.runtime import quiet

    return quiet()


# ----------------------------------------------------------------------------------------------
# The cost=latency factory


def latency_cost(model, seq_len: float, task=None, served_seq_len: int | None = None, scenario: str = "single_stream",
                 batch_size: int | None = None, threads: int | None = None, runtime: str = "onnxruntime",
                 device: str = "cpu", points: int = 9, min_time_s: float = 0.3, rounds: int = 5, cache: bool = True,
                 progress: bool = True) -> LatencyCost:
    """``conf/cost/latency.yaml``'s target: the measured (or cached) table of ``model`` fitted as a LatencyCost.

    seq_len: S of the MAC figures reported beside latency; task: the job's ``Task`` (its kind, and its
    ``max_length`` = the served sequence length when ``served_seq_len`` is null); batch_size / threads:
    null = the scenario's (``conf/scenario/<scenario>.yaml``)."""
    s = settings_for(task, served_seq_len, scenario, batch_size, threads, runtime, device, points, min_time_s, rounds)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and s.seq_len > positions:
        _fail("served_seq_len", s.seq_len, f"at most the model's {positions} positions")
    kind = get_kind(task.kind if task is not None else "classification")
    table, cached = load_or_measure(model, kind, s, cache=cache, progress=progress)
    table = {**table, "cached": cached}
    return LatencyCost.from_table(table, mac=MacCost.for_model(model, seq_len))


def settings_for(task, served_seq_len, scenario, batch_size, threads, runtime, device, points, min_time_s=0.3,
                 rounds=5) -> LatencySettings:
    """The settings of ``cost=latency`` with its nulls filled from the scenario and the task (checked)."""
    if scenario not in SCENARIO_NAMES:
        _fail("scenario", scenario, f"one of {', '.join(SCENARIO_NAMES)}")
    sc_batch, sc_threads = scenario_serving(scenario)
    seq = served_seq_len if served_seq_len is not None else (int(task.max_length) if task is not None else None)
    if seq is None:
        _fail("served_seq_len", seq, "an integer >= 1 (null needs the task's max_length)")
    if task is not None and get_kind(task.kind).fixed_seq_len and seq != int(task.max_length):
        _fail("served_seq_len", seq, f"null or task.max_length={task.max_length}: a {task.kind} model is exported "
                                     "and served at exactly that length")
    return LatencySettings(runtime=str(runtime), device=str(device), batch_size=batch_size if batch_size is not None else sc_batch, seq_len=seq,
                           threads=threads if threads is not None else sc_threads, points=points,
                           min_time_s=min_time_s, rounds=rounds, scenario=scenario)


def check_cost(cost_cfg, task) -> LatencySettings | None:
    """For a ``cost`` config building ``latency_cost``: its settings, checked, and the runtime / provider
    resolved (one clear error before any long work); None for any other cost model."""
    from hydra.utils import get_object

    if get_object(str(cost_cfg._target_)) is not latency_cost:
        return None
    c = cost_cfg
    s = settings_for(task, c.get("served_seq_len"), str(c.get("scenario", "single_stream")), c.get("batch_size"),
                     c.get("threads"), str(c.get("runtime", "onnxruntime")), str(c.get("device", "cpu")),
                     c.get("points", 9), c.get("min_time_s", 0.3), c.get("rounds", 5))
    resolve_runtime(s)
    return s
