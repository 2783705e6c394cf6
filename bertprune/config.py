"""Typed schemas of the configs in conf/ (Hydra structured configs) and the checks Hydra cannot express.

Each primary config names its schema first in its defaults list (``conf/prune.yaml``: ``prune_schema``
…). Composition then refuses, with an error naming the key and before anything runs:

* unknown keys (``+constriant=0.5``; without ``+`` Hydra already refuses a key that does not exist),
* wrong types (``num_samples=abc``, ``constraint=abc``),
* values outside a fixed choice (``quantize=int4``, ``hardware.runtime_device=tpu``,
  ``hardware.accelerator=tpu``, ``tuning.teacher=x``, ``bench.yaml``'s ``mode``) and group options that do
  not exist (``logger=bogus``, ``cost=energy``). Choices are ``StrEnum`` members: they compare equal to
  their strings (``accelerator == "cpu"``).

Components are data: the ``cost`` group, the ``logger`` group and a model's ``random_init`` name the
class or function that builds them (``_target_``), which the jobs instantiate; ``check_target`` refuses,
before any work, a target that cannot be imported or a key it does not take.

``validate_*`` checks ranges and strings with a fixed vocabulary that Hydra cannot express
(``eval_batch_size >= 1``, Lightning's precision names …), also before any teacher is trained or data
is loaded. The ``task`` group stays a plain mapping at composition, because its keys depend on the
task's source (a schema would add every absent key, and the composed task is part of the teacher's
cache key); ``validate_task`` checks it against :class:`bertprune.tasks.data.Task`, whose fields are the schema.

``register()`` (called by the root entry points, ``bench_prune`` and the tests) registers the
schemas and the ``${pkg:...}`` resolver; every composition of conf/ needs it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from bertprune.resources import packaged_path

# Lightning's precision strings (lightning_fabric.connector._PRECISION_INPUT)
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
              "32-true", "64-true", "64", "32", "16", "bf16")
WANDB_MODES = ("online", "offline", "disabled", "shared")


class Quantize(StrEnum):
    int8 = "int8"


class RuntimeDevice(StrEnum):
    """ONNX Runtime execution provider: auto = CUDA when usable, else CPU."""
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class LatencyRuntime(StrEnum):
    """What cost=latency measures its lookup table on (the runtime the model is served on)."""
    onnxruntime = "onnxruntime"
    torch = "torch"


class BenchRuntime(StrEnum):
    """What bench.py's LoadGen runs drive (bertprune.onnx.deepsparse_runtime: DeepSparse in its own venv)."""
    onnxruntime = "onnxruntime"
    deepsparse = "deepsparse"


class Scenario(StrEnum):
    """LoadGen scenarios (conf/scenario/): cost=latency reads the batch size and threads of one."""
    single_stream = "single_stream"
    offline = "offline"
    multi_stream = "multi_stream"
    server = "server"


class Accelerator(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


class UnstructuredMethod(StrEnum):
    none = "none"  # no unstructured step (the default: the Kwon pipeline alone)
    obs = "obs"  # the Optimal BERT Surgeon (block Fisher inverse, saliency, optimal update)
    magnitude = "magnitude"  # global |w| (the baseline)


class SparsityPattern(StrEnum):
    unstructured = "unstructured"  # single weights
    block4 = "block4"  # groups of 4 consecutive input weights (VNNI)
    nm_2_4 = "nm_2_4"  # 2 zeros in every 4 consecutive weights (N:M 2:4)


class SparsitySchedule(StrEnum):
    cubic = "cubic"
    linear = "linear"


class BenchMode(StrEnum):
    performance = "performance"
    accuracy = "accuracy"
    both = "both"


# ----------------------------------------------------------------------------------------------
# Groups


@dataclass
class ModelConfig:
    name: str = MISSING
    name_or_path: Optional[str] = None  # a folder or hub name; null with random_init
    tokenizer: Optional[str] = None
    # a randomly initialised model instead of name_or_path: {_target_: its builder, its arguments}
    # (conf/model/tiny.yaml: bertprune.models.TinyBert); the builder's build(kind, num_labels, vocab_size) makes it
    random_init: Optional[Any] = None


@dataclass
class TrainingConfig:
    seed: int = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    warmup_ratio: float = MISSING
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None


@dataclass
class CostConfig:
    _target_: str = MISSING  # builds the cost model from (model, seq_len): bertprune.core.cost.MacCost.for_model
    seq_len: Optional[float] = None  # S of the cost model; null = the task's average token length


@dataclass
class LatencyCostConfig(CostConfig):
    """conf/cost/latency.yaml (its defaults list names this schema: cost/latency_schema). seq_len: S of the
    MAC figures reported next to latency; the rest: how the latency lookup table is measured."""
    served_seq_len: Optional[int] = None  # null = task.max_length (what the LoadGen QSL pads to)
    scenario: Scenario = Scenario.single_stream  # batch and threads from conf/scenario/<scenario>.yaml
    batch_size: Optional[int] = None  # null = the scenario's batch_size (single_stream 1, offline 32)
    threads: Optional[int] = None  # null = the scenario's intra_op_threads (null there: the runtime's default)
    runtime: LatencyRuntime = LatencyRuntime.onnxruntime
    device: RuntimeDevice = RuntimeDevice.cpu  # ONNX Runtime's provider: cpu, cuda, auto (CUDA if usable)
    points: int = 9  # sample counts per block (MHA: every head count when H + 1 <= points)
    min_time_s: float = 0.3  # timing per sample, split over `rounds` interleaved rounds
    rounds: int = 5
    cache: bool = True  # <cache>/latency/<key>.json


@dataclass
class HardwareConfig:
    name: str = MISSING
    accelerator: Accelerator = Accelerator.cpu
    devices: int = 1  # -1 = every visible GPU
    strategy: str = "auto"
    precision: str = "32-true"  # one of PRECISIONS (validate_hardware)
    num_threads: Optional[int] = None
    runtime_device: RuntimeDevice = RuntimeDevice.cpu  # ONNX Runtime's provider: cpu, cuda, auto (CUDA if usable)


@dataclass
class UnstructuredConfig:
    """The unstructured step after the structured one (``conf/unstructured/``: none, obs, magnitude)."""

    method: UnstructuredMethod = UnstructuredMethod.none
    sparsity: float = 0.5  # fraction of the encoder's linear weights set to 0, in (0, 1)
    pattern: SparsityPattern = SparsityPattern.unstructured
    num_grads: int = 256  # m: gradients for each Fisher estimate (one per calibration batch)
    grad_batch_size: int = 1  # samples per gradient (1 = per-sample gradients, the empirical Fisher)
    fisher_block_size: int = 32  # B: Fisher block size (1 = diagonal Fisher)
    damp: float = 1e-7  # λ of F = λI + Σ g gᵀ / m
    num_recomputations: int = 1  # Fisher-inverse estimates while pruning to the target
    schedule: SparsitySchedule = SparsitySchedule.cubic  # sparsity between recomputations
    max_memory_gb: Optional[float] = None  # limit for the Fisher state; null = the device's free memory


# ----------------------------------------------------------------------------------------------
# Primary configs (values live in the YAML files; MISSING here = the YAML must set it)


@dataclass
class TeacherJobConfig:
    """What train.py and prune.py share: the groups that find (or fine-tune) the teacher."""

    model: ModelConfig = MISSING
    task: Dict[str, Any] = MISSING
    training: TrainingConfig = MISSING
    # {_target_: a bertprune.lightning.loggers factory, its options}; its keys are that factory's arguments
    logger: Any = MISSING
    hardware: HardwareConfig = MISSING
    output_dir: str = MISSING


@dataclass
class TrainConfig(TeacherJobConfig):
    cache: bool = MISSING


@dataclass
class BenchOptions:
    """prune.py's ``bench_options`` (bench=true): bertprune.jobs.callbacks.LoadgenCallback's arguments."""
    scenarios: List[Scenario] = field(default_factory=lambda: [Scenario.offline, Scenario.single_stream])
    mode: BenchMode = BenchMode.performance
    device: RuntimeDevice = RuntimeDevice.cpu   # prune.yaml: ${hardware.runtime_device}
    submission: bool = False
    min_duration_ms: Optional[int] = None     # null: each scenario's own
    timeout_s: Optional[float] = None
    output_subdir: str = "bench"
    runtime: BenchRuntime = BenchRuntime.onnxruntime
    deepsparse_python: Optional[str] = None
    deepsparse_seq_lens: Any = None           # runtime=deepsparse: null/auto, full or a list of lengths


@dataclass
class PruneConfig(TeacherJobConfig):
    cost: CostConfig = MISSING
    constraint: float = MISSING
    teacher: Optional[str] = None  # the fine-tuned model folder to prune; null = the cached teacher
    checkpoint: Optional[str] = None  # renamed to teacher (RENAMED): validate_prune refuses a value, naming the new key
    num_samples: int = MISSING
    batch_size: Optional[int] = None  # calibration batch; null = the paper's (CALIBRATION_BATCH in jobs/prune.py)
    eval_batch_size: int = MISSING
    seed: int = MISSING
    # the pruning method: {_target_: a bertprune.core.method.PruneMethod dataclass, its options} (conf/method/);
    # typed and checked by that class (build_method), before any work
    method: Any = MISSING
    export: bool = MISSING
    quantize: Optional[Quantize] = None
    bench: bool = MISSING
    bench_options: BenchOptions = field(default_factory=BenchOptions)
    sweep_group: Optional[str] = None
    structured: bool = True  # false: skip the Kwon search (Fisher, masks, tuning); needs an unstructured step
    unstructured: UnstructuredConfig = field(default_factory=UnstructuredConfig)


@dataclass
class ExportConfig:
    task: Dict[str, Any] = MISSING
    hardware: HardwareConfig = MISSING
    source: str = MISSING
    tokenizer: Optional[str] = None
    quantize: Optional[Quantize] = None
    opset: int = MISSING
    parity_tolerance: float = MISSING
    parity_batch_sizes: List[int] = MISSING
    max_eval_samples: Optional[int] = None
    include_teacher: bool = MISSING
    output_dir: str = MISSING


@dataclass
class SystemSchema:
    """bench.py's ``system``: what no probe reads (bertprune.mlperf.system.SystemConfig checks the values)."""

    cooling: Optional[str] = None
    cloud_instance: Optional[str] = None
    cost_per_hour: Optional[float] = None
    memory_configuration: Optional[str] = None
    status: str = "available"
    system_type: str = "edge"
    description_file: Optional[str] = None


@dataclass
class BenchConfig:
    task: Dict[str, Any] = MISSING
    scenario: Dict[str, Any] = MISSING  # {name: settings}; checked by bertprune.scenarios.ScenarioSettings
    source: str = MISSING
    mode: BenchMode = MISSING
    submission: bool = MISSING
    hardware: HardwareConfig = MISSING
    tokenizer: Optional[str] = None
    system_name: Optional[str] = None
    submitter: str = MISSING
    system: SystemSchema = field(default_factory=SystemSchema)
    run_timeout_s: Optional[float] = None
    wandb_write_back: bool = True    # each variant's LoadGen results onto the W&B run of the job that exported it
    runtime: BenchRuntime = BenchRuntime.onnxruntime
    deepsparse_python: Optional[str] = None  # runtime=deepsparse: that venv's python; null = .venv-deepsparse
    deepsparse_seq_lens: Any = None  # runtime=deepsparse: null/auto, full, or a list of lengths (checked in plan_bench)
    output_dir: str = MISSING


@dataclass
class PublishConfig:
    source: str = MISSING            # a prune run folder (results.json) or a sweep of them
    repo_id: Optional[str] = None    # <org>/<name>; a sweep publishes <repo_id>-<variant> per variant
    dry_run: bool = MISSING
    private: bool = MISSING
    license: Optional[str] = None    # null: the starting weights' own model card's
    bench_dir: Optional[str] = None  # bench.py output folder; null: <run>/bench and <sweep>/bench
    commit_message: Optional[str] = None
    output_dir: str = MISSING        # where each variant's repository folder is staged


# What prune.py passes a cost factory itself (task: only to a factory that takes it, e.g. latency_cost).
COST_RUNTIME_ARGS = ("model", "task")

# Keys that were renamed: old -> new. Set, the old key gets one error naming the new one.
RENAMED = {"checkpoint": "teacher"}

# prune.py's method options before they became the method group (conf/method/): old key -> the new spelling.
# The command line is checked before composition (refuse_old_method_keys), so each gets its own message.
OLD_METHOD_KEYS = {
    "rearrange": "method=kwon method.rearrange",
    "tuning.enabled": "method=kwon method.tuning (true: scales; false: none)",
    "tuning.method": "method=kwon method.tuning",
    "tuning.teacher": "method=kwon method.tuning_teacher",
    "tuning.num_samples": "method=kwon method.tuning_samples",
    "tuning.damping": "method=kwon method.damping",
    "tuning.refit_damping": "method=kwon method.tuning=projection method.damping",
    "tuning.max_scale": "method=kwon method.max_scale",
    "tuning.last_layer_tokens": "method=kwon method.last_layer_tokens",
    "iterative.importance_samples": "method.importance_samples",
    "iterative.damping": "method.damping",
    "iterative.last_layer_tokens": "method.last_layer_tokens",
    "iterative.rearrange": "method.rearrange",
    "guard.enabled": "method=kwon method.guard",
    "guard.samples": "method.held_out_samples",
}

SCHEMAS = {"train_schema": TrainConfig, "prune_schema": PruneConfig, "export_schema": ExportConfig,
           "bench_schema": BenchConfig, "publish_schema": PublishConfig}


SWEPT_ENV = "BERTPRUNE_SWEPT_KEYS"  # the keys the running sweep varies (set at its start, read by job_suffix)
IN_FOLDER_NAME = ("constraint",)    # already in the folder name (c<constraint>)


def register() -> None:
    """Register the schemas (Hydra's ConfigStore) and the configs' resolvers; idempotent."""
    register_resolvers()
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)
    cs.store(group="cost", name="latency_schema", node=LatencyCostConfig)


def register_resolvers() -> None:
    """The configs' OmegaConf resolvers: ``${pkg:package,relative/path}`` (``resources.packaged_path``),
    ``${sweep_suffix:<overrides>}`` (a sweep job's folder-name suffix: the keys the sweep varies, ``job_suffix``)
    and ``${structure:${structured},${constraint}}`` (a prune job's folder-name prefix: ``c0.5``, or ``dense``
    for structured=false, whose constraint is never applied)."""
    if not OmegaConf.has_resolver("pkg"):
        OmegaConf.register_new_resolver("pkg", packaged_path)
    if not OmegaConf.has_resolver("sweep_suffix"):
        OmegaConf.register_new_resolver("sweep_suffix", lambda overrides, *named: job_suffix(list(overrides or ()), named))
    if not OmegaConf.has_resolver("structure"):
        OmegaConf.register_new_resolver("structure", _structure)


def _structure(structured, constraint) -> str:
    return f"c{constraint}" if structured in (True, "true", "True") else "dense"


def job_suffix(task_overrides, named=()) -> str:
    """The folder-name suffix of one sweep job: ``-key=value`` for each key the sweep varies besides the
    constraint and the keys ``named`` already in the folder name (``hydra.sweep.subdir:
    c${constraint}${sweep_suffix:${hydra.overrides.task}}``), so that no two jobs of a grid share a folder;
    "" for a plain constraint sweep."""
    swept = [k for k in os.environ.get(SWEPT_ENV, "").split(",") if k and k not in (*IN_FOLDER_NAME, *named)]
    parts = []
    for o in task_overrides or ():
        key, _, value = str(o).partition("=")
        if key.lstrip("+~") in swept:
            value = value.lower() if value in ("True", "False") else value  # as typed: true / false
            parts.append(f"{key.lstrip('+~')}={value}")
    return "".join("-" + re.sub(r"[^A-Za-z0-9_.=+-]+", "_", p) for p in parts)


# ----------------------------------------------------------------------------------------------
# Checks Hydra cannot express (ranges, vocabularies); each error names the key


def _at_least(cfg, keys: tuple[str, ...], low: int, prefix: str = "", hint: str = "") -> None:
    for key in keys:
        value = cfg.get(key)
        if value is None and key.startswith("max_"):
            continue  # null = no limit
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{prefix}{key}={value!r} must be an integer >= {low}{hint}")


def check_keys(cfg, prefix: str = "") -> None:
    """Refuse keys that a schema does not declare. Composition refuses them, except those added with
    ``+key=value`` (Hydra appends those even to a typed node)."""
    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return
    known = [f.name for f in dataclasses.fields(schema)]
    for key in cfg.keys():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"the keys here are: {', '.join(known)}"
            raise ValueError(f"{prefix}{key} is not a config key ({hint}); fix or drop +{prefix}{key}=...")
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
            check_keys(node, f"{prefix}{key}.")


def validate_task(task_cfg):
    """The task group against ``bertprune.tasks.data.Task`` (its fields, their types, its own checks); returns the Task."""
    from bertprune.tasks.data import Task

    plain = OmegaConf.to_container(task_cfg, resolve=True) if isinstance(task_cfg, DictConfig) else dict(task_cfg)
    try:
        OmegaConf.merge(OmegaConf.structured(Task), plain)
    except ConfigKeyError as e:
        known = ", ".join(f.name for f in dataclasses.fields(Task))
        raise ValueError(f"task.{e.key} is not a key of the task group; its keys are: {known}") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ValueError(f"task.{key}={plain.get(key)!r}: {str(e).splitlines()[0]}") from None
    return Task.from_config(plain)


def check_target(node, key: str, runtime: tuple[str, ...] = ()):
    """Refuse a ``_target_`` node whose target cannot be imported, or with keys the target does not take
    (``runtime``: the arguments the job passes itself); one error naming the key. Returns the target."""
    import inspect

    from hydra.utils import get_object

    path = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
    if not path:
        raise ValueError(f"{key} must name what builds it: {key}._target_=<module.Class or function>")
    try:
        target = get_object(str(path))
    except Exception as e:  # noqa: BLE001 - any import failure is the same user error
        raise ValueError(f"{key}._target_={path!r} cannot be imported ({str(e).splitlines()[0]}); "
                         "give an importable module.Class or function") from None
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return target
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return target
    takes = [n for n in params if n not in runtime and n != "self"]
    for k in node.keys():
        if k != "_target_" and k not in takes:
            close = difflib.get_close_matches(str(k), takes, n=1)
            hint = f"did you mean {key}.{close[0]}?" if close else f"it takes: {', '.join(takes) or 'nothing'}"
            raise ValueError(f"{key}.{k} is not an argument of {path} ({hint})")
    return target


def validate_model(model) -> None:
    if model.get("random_init") is not None:
        from hydra.utils import instantiate

        check_target(model.random_init, "model.random_init")
        try:
            instantiate(model.random_init)  # cheap: the builder checks its values (no weights are made)
        except Exception as e:  # noqa: BLE001 - Hydra wraps the builder's own error
            cause = e.__cause__ or e
            raise ValueError(f"model.random_init: {cause}") from None
    elif not model.get("name_or_path"):
        raise ValueError(f"model={model.name}: model.name_or_path is null; give a folder or hub name "
                         "(or model.random_init)")


def validate_training(training) -> None:
    _at_least(training, ("epochs", "batch_size", "max_train_samples", "max_eval_samples"), 1, "training.")
    if not training.lr > 0:
        raise ValueError(f"training.lr={training.lr} must be > 0")
    if training.weight_decay < 0:
        raise ValueError(f"training.weight_decay={training.weight_decay} must be >= 0")
    if not 0 <= training.warmup_ratio < 1:
        raise ValueError(f"training.warmup_ratio={training.warmup_ratio} must be in [0, 1)")


def validate_hardware(hw) -> None:
    """Values only; whether the machine has the device is ``bertprune.lightning.hardware.check_hardware``'s check."""
    if str(hw.precision) not in PRECISIONS:
        raise ValueError(f"hardware.precision={hw.precision!r} is not a Lightning precision; expected one of "
                         f"{', '.join(PRECISIONS)} (e.g. hardware.precision=32-true)")
    if hw.accelerator == Accelerator.gpu:
        if hw.devices != -1 and hw.devices < 1:
            raise ValueError(f"hardware.devices={hw.devices} must be >= 1, or -1 for every visible GPU")
    else:
        _at_least(hw, ("devices",), 1, "hardware.", " (the number of CPU processes)")
    if hw.num_threads is not None:
        _at_least(hw, ("num_threads",), 1, "hardware.", " (or null for torch's default)")


def validate_logger(lg) -> None:
    from bertprune.lightning.loggers import RUNTIME_ARGS

    check_target(lg, "logger", RUNTIME_ARGS)
    if lg.get("mode") is not None and lg.mode not in WANDB_MODES:
        raise ValueError(f"logger.mode={lg.mode!r}; expected null or one of {', '.join(WANDB_MODES)}")


def validate_cost(cost) -> None:
    check_target(cost, "cost", COST_RUNTIME_ARGS)
    if cost.seq_len is not None and not cost.seq_len > 0:
        raise ValueError(f"cost.seq_len={cost.seq_len} must be > 0 (or null for the task's average token length)")
    if OmegaConf.get_type(cost) is LatencyCostConfig:
        for key, low, null in (("served_seq_len", 1, "the task's max_length"), ("batch_size", 1, "the scenario's"),
                               ("threads", 1, "the scenario's intra_op_threads"), ("points", 2, None),
                               ("rounds", 1, None)):
            value = cost.get(key)
            if value is None and null:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"cost.{key}={value!r} must be an integer >= {low}" + (f" (or null for {null})"
                                                                                        if null else ""))
        if not cost.min_time_s > 0:
            raise ValueError(f"cost.min_time_s={cost.min_time_s} must be > 0 (seconds of timing per sample)")


def validate_train(cfg):
    """Every value of a train.py config; returns the Task."""
    check_keys(cfg)
    validate_model(cfg.model)
    validate_training(cfg.training)
    validate_hardware(cfg.hardware)
    validate_logger(cfg.logger)
    return validate_task(cfg.task)


def validate_prune(cfg):
    """Every value of a prune.py config but ``constraint`` (``check_prune_config``) and the tuning numbers; returns the Task."""
    for old, new in RENAMED.items():
        if cfg.get(old) is not None:
            raise ValueError(f"{old}={cfg[old]} is now {new}={cfg[old]} (the fine-tuned model to prune; the pruned "
                             f"model goes to <output_dir>/pruned): write {new}=...")
    task = validate_train(cfg)
    validate_cost(cfg.cost)
    _at_least(cfg, ("num_samples", "eval_batch_size"), 1)
    build_method(cfg.method, int(cfg.num_samples))  # the method's keys, types and values (its class checks them)
    if cfg.batch_size is not None:
        _at_least(cfg, ("batch_size",), 1, hint=" (or null: the paper's calibration batch size)")
    validate_unstructured(cfg)
    return task


def refuse_old_method_keys(overrides: list[str]) -> None:
    """One error for a command-line override that spells a method option the old way (``tuning.damping=0.1``,
    ``rearrange=false``, ``guard.enabled=true`` ...), naming its new key; called before Hydra composes."""
    for arg in overrides:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in OLD_METHOD_KEYS or key.split(".", 1)[0] in ("tuning", "iterative", "guard"):
            new = OLD_METHOD_KEYS.get(key, "method.<key> (python prune.py --cfg job shows the method's keys)")
            raise SystemExit(f"{arg}: {key} is now {new}; the method's options live under method. (conf/method/"
                             "iterative.yaml, conf/method/kwon.yaml; docs/method.md)")


def build_method(node, num_samples: int):
    """The ``method`` node (``conf/method/<name>.yaml``: ``_target_`` + options) as its PruneMethod instance.

    The class's fields are the schema: an unknown key or a wrong type is one error naming ``method.<key>``; its
    ``__post_init__`` checks the values. The held-out calibration samples must leave samples to fit on."""
    import dataclasses as dc

    from hydra.utils import get_object

    from bertprune.core.method import PruneMethod

    target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
    if not target:
        raise ValueError("method must name its class: method=iterative, method=kwon, or a conf/method/<name>.yaml "
                         "with _target_: <module.PruneMethod subclass>")
    try:
        cls = get_object(str(target))
    except Exception as e:  # noqa: BLE001 - any import failure is the same user error
        raise ValueError(f"method._target_={target!r} cannot be imported ({str(e).splitlines()[0]}); give an "
                         "importable bertprune.core.method.PruneMethod subclass") from None
    if not (isinstance(cls, type) and issubclass(cls, PruneMethod) and dc.is_dataclass(cls)):
        raise ValueError(f"method._target_={target!r} is not a PruneMethod dataclass (bertprune.core.method)")
    values = {k: v for k, v in (OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig)
                                else dict(node)).items() if k != "_target_"}
    known = [f.name for f in dc.fields(cls)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean method.{close[0]}?" if close else f"its keys are: {', '.join(known) or 'none'}"
            raise ValueError(f"method.{key} is not an option of {target} ({hint})")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(cls), values)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ValueError(f"method.{key}={values.get(key)!r}: {str(e).splitlines()[0]}") from None
    try:
        method = OmegaConf.to_object(typed)
    except OmegaConfBaseException as e:  # __post_init__'s own check, wrapped by OmegaConf
        cause = e.__cause__ or e
        raise ValueError(str(cause).splitlines()[0]) from None
    held = method.held_out(int(num_samples))
    if held and held >= int(num_samples):
        raise ValueError(f"method.held_out_samples={held} must be smaller than num_samples={num_samples}: "
                         f"method={method.name} holds these samples out of the calibration sample to check its "
                         "fits; e.g. method.held_out_samples=null (min(256, num_samples // 8))")
    return method


def validate_unstructured(cfg) -> None:
    """The unstructured step's values (``bertprune.core.obs.check_options``) and how it combines with ``structured``."""
    u = cfg.get("unstructured")
    if u is None or u.method == UnstructuredMethod.none:
        if not cfg.get("structured", True):
            raise ValueError("structured=false with unstructured=none prunes nothing; choose unstructured=obs or "
                             "unstructured=magnitude (or structured=true)")
        return
    from types import SimpleNamespace

    from bertprune.core.obs import check_options

    check_options(SimpleNamespace(sparsity=float(u.sparsity), method=str(u.method), pattern=str(u.pattern),
                                  fisher_block_size=u.fisher_block_size, damp=float(u.damp),
                                  num_recomputations=u.num_recomputations, schedule=str(u.schedule)), "unstructured.")
    _at_least(u, ("num_grads", "grad_batch_size"), 1, "unstructured.")
    target = str(cfg.get("cost", {}).get("_target_", ""))
    if not cfg.get("structured", True) and not target.endswith("MacCost.for_model"):
        raise ValueError(f"structured=false with cost={target.rsplit('.', 1)[-1]}: no head or neuron is pruned, so "
                         "there is no cost to budget (a latency table would be measured for nothing); drop the cost "
                         "override or set structured=true")
    if u.max_memory_gb is not None and not u.max_memory_gb > 0:
        raise ValueError(f"unstructured.max_memory_gb={u.max_memory_gb} must be > 0 (or null for the free memory)")


def validate_export(cfg):
    """Every value of an export.py config (the ONNX opset and device included); returns the default Task."""
    from bertprune.onnx.export import check_opset

    check_keys(cfg)
    validate_hardware(cfg.hardware)
    check_opset(cfg.opset)
    if not cfg.parity_tolerance >= 0:
        raise ValueError(f"parity_tolerance={cfg.parity_tolerance} must be >= 0")
    sizes = cfg.parity_batch_sizes
    if not isinstance(sizes, (list, ListConfig)) or not sizes or min(sizes) < 1:
        raise ValueError(f"parity_batch_sizes={sizes} must list batch sizes >= 1, e.g. [1,16]")
    _at_least(cfg, ("max_eval_samples",), 1)
    return validate_task(cfg.task)
