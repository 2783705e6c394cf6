"""MLPerf LoadGen scenarios: the settings of ``conf/scenario/<name>.yaml`` and the one mapping between the
config-group names (``offline``, ``single_stream``, ``multi_stream``, ``server``) and LoadGen's
(``Offline``, ``SingleStream``, ``MultiStream``, ``Server``).

Config, command line and result keys of callbacks use the group name; past ``ScenarioSettings`` the code
uses LoadGen's name (``settings.loadgen``), which is also what folders and summaries show.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

from omegaconf import OmegaConf

from bertprune.resources import CONF_DIR

# Config-group name -> LoadGen scenario name.
SCENARIOS = {"offline": "Offline", "single_stream": "SingleStream", "multi_stream": "MultiStream", "server": "Server"}


MODES = ("performance", "accuracy")


def scenario_key(name: str) -> str:
    """``offline`` / ``Offline`` / ``single-stream`` ... -> the config-group name (``single_stream``)."""
    canon = {k: k for k in SCENARIOS} | {v.lower(): k for k, v in SCENARIOS.items()}
    key = canon.get(str(name).strip().lower().replace("-", "_"))
    if key is None:
        raise ValueError(f"unknown scenario {name!r}; expected one of {sorted(SCENARIOS)} "
                         f"(LoadGen names {sorted(SCENARIOS.values())})")
    return key


@dataclass
class ScenarioSettings:
    """One LoadGen scenario as configured in ``conf/scenario/<name>.yaml``.

    target_qps: Offline = LoadGen's expected QPS, Server = the offered load; None = calibrate.
    target_latency_ms: Single/MultiStream = LoadGen's expected latency (None = calibrate);
    Server = the latency bound (None = 130 ms of mlperf.conf; local runs raise it to
    20 x the measured latency when the model is too slow for 130 ms).
    min_duration_ms / min_query_count apply to local runs only; ``submission=True`` uses mlperf.conf.
    """

    name: str
    loadgen: str | None = None
    batch_size: int = 1
    workers: int = 1
    intra_op_threads: int | None = None
    target_qps: float | None = None
    target_latency_ms: float | None = None
    samples_per_query: int | None = None
    min_duration_ms: int = 10000
    min_query_count: int | None = None
    calibration_s: float = 1.0

    def __post_init__(self):
        self.name = scenario_key(self.name)
        expected = SCENARIOS[self.name]
        if self.loadgen is None:
            self.loadgen = expected
        elif self.loadgen != expected:
            raise ValueError(f"scenario {self.name}: loadgen={self.loadgen!r} but the {self.name} scenario is "
                             f"LoadGen's {expected!r}")
        for key in ("batch_size", "workers"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"scenario {self.name}: {key}={getattr(self, key)} must be >= 1")
        for key in ("target_qps", "target_latency_ms"):
            value = getattr(self, key)
            if value is not None and not float(value) > 0:
                raise ValueError(f"scenario {self.name}: {key}={value} must be > 0 (or null to calibrate)")
        if self.min_duration_ms < 0:
            raise ValueError(f"scenario {self.name}: min_duration_ms={self.min_duration_ms} must be >= 0")
        if self.samples_per_query is not None and self.samples_per_query < 1:
            raise ValueError(f"scenario {self.name}: samples_per_query must be >= 1")

    @classmethod
    def from_config(cls, name: str, cfg: Mapping | None = None) -> "ScenarioSettings":
        data = dict(cfg or {})
        data.pop("name", None)
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"scenario {name}: unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(name=name, **data)

    @classmethod
    def named(cls, name: str, **overrides) -> "ScenarioSettings":
        """The settings of ``conf/scenario/<name>.yaml`` (what bench.py's ``scenario=[<name>]`` composes), with
        ``overrides``: a scenario given by name alone runs as configured (Offline at its batch size 32, with
        min_query_count 1), never at this class's bare defaults."""
        key = scenario_key(name)
        path = CONF_DIR / "scenario" / f"{key}.yaml"
        try:
            data = (OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}).get(key)
        except OSError as e:
            raise FileNotFoundError(f"scenario {key}: its settings file {path} is missing ({e}); reinstall "
                                    "bertprune (pip install -e .)") from e
        if not isinstance(data, Mapping):
            raise ValueError(f"scenario {key}: {path} holds no '{key}:' mapping of settings")
        return cls.from_config(key, {**data, **overrides})

    @property
    def query_size(self) -> int:
        """Samples per LoadGen query in Single/MultiStream (MultiStream: mlperf.conf's 8 unless set)."""
        if self.loadgen == "MultiStream":
            return self.samples_per_query or 8
        return 1


def resolve_scenarios(scenarios) -> list[ScenarioSettings]:
    """Names (each as its ``conf/scenario/<name>.yaml`` says: ``ScenarioSettings.named``), a {name: settings}
    mapping (the composed ``scenario`` config group) or ScenarioSettings."""
    if scenarios is None:
        scenarios = []
    if isinstance(scenarios, str):
        scenarios = [scenarios]
    if isinstance(scenarios, Mapping):
        out = [ScenarioSettings.from_config(k, v) for k, v in scenarios.items()]
    else:
        out = [s if isinstance(s, ScenarioSettings) else ScenarioSettings.named(s) for s in scenarios]
    if not out:
        raise ValueError(f"no scenario selected; choose some, e.g. scenario=[offline,single_stream] "
                         f"(available: {sorted(SCENARIOS)})")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"scenario listed twice: {names}")
    return out


def resolve_modes(mode: str) -> list[str]:
    if mode == "both":
        return list(MODES)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; expected performance, accuracy or both")
    return [mode]


def loadgen_name(name: str) -> str:
    """Any spelling of a scenario (``offline``, ``Offline``, ``single-stream`` …) -> LoadGen's name."""
    return SCENARIOS[scenario_key(name)]
