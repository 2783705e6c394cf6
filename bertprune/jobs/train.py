"""Fine-tune a dense teacher (train.py) and cache it by (model, task, training config)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from bertprune.tasks.data import Task, load_task_data, tokenize
from bertprune.evaluation import evaluate
from bertprune.lightning.hardware import check_hardware, trainer_kwargs
from bertprune.io import atomic_dir, atomic_write_json, sha256_file
from bertprune.models import check_source, load_model, load_tokenizer, write_checkpoint
from bertprune.resources import CONF_DIR, cache_dir, config_key, packaged_relative, sha256_cached
from bertprune import results as R

log = logging.getLogger(__name__)
COMPLETE = "COMPLETE.json"


@dataclass
class TrainResult:
    folder: Path  # the teacher: a Hugging Face folder
    metrics: dict
    cached: bool


def build_model(model_cfg, task: Task, tokenizer):
    """The model to fine-tune: built by ``model.random_init`` (a randomly initialised architecture, e.g. the
    tiny BERT), else loaded from ``model.name_or_path`` (a folder / hub name)."""
    if model_cfg.get("random_init") is not None:
        from hydra.utils import instantiate

        return instantiate(model_cfg.random_init).build(task.kind, task.num_labels, vocab_size=len(tokenizer))
    return load_model(model_cfg.name_or_path, task.kind, task.num_labels)


# Files of a local model folder that make the teacher: weights and config / tokenizer.
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model")


def source_fingerprint(value: str, files: tuple[str, ...] = ()) -> str | dict:
    """What identifies a data file or model folder in the teacher key: its content (sha256; for a
    folder, of each of ``files`` it holds, plus weight shards) and where it is: the absolute path for
    a user's file, the package-relative name for a packaged default (the same in every clone, whatever
    its venv). A hub name has no content here: it is keyed by name."""
    p = Path(value)
    if not p.exists():
        return value
    packaged = packaged_relative(p)
    where = {"packaged": packaged} if packaged else {"path": str(p.resolve())}
    if p.is_file():
        return {**where, "sha256": sha256_cached(p)}
    names = sorted(f.name for f in p.iterdir() if f.is_file() and (f.name in files or (
        "model.safetensors" in files and f.name.startswith("model-") and f.name.endswith(".safetensors"))))
    return {**where, "files": {n: sha256_cached(p / n) for n in names}}


# Task fields added after the cache key was defined: at their defaults they do not change the data a
# teacher is trained on, so they stay out of the key (existing caches stay valid); set, they count.
KEY_NEUTRAL_AT_DEFAULT = ("dir_train_file", "dir_validation_file", "file_header")


# What only the dev set depends on: a task with ``teacher_task`` takes these from that task's config, so
# both find one cached teacher (training never reads the dev set; the teacher's recorded metrics are of the
# task that fine-tuned it, and prune.py evaluates the dense model on its own dev set anyway).
VALIDATION_ONLY = ("name", "validation_split", "dir_validation_file", "validation_file")


def teacher_task(task: Task) -> Task:
    """The task a teacher is cached under: ``task`` itself, or, for a task with ``teacher_task``, ``task`` with
    that task's name and dev-set fields (mnli_mm with its data_dir keys its teacher as mnli with that data_dir)."""
    if task.teacher_task is None:
        return task
    path = CONF_DIR / "task" / f"{task.teacher_task}.yaml"
    if not path.is_file():
        raise ValueError(f"task {task.name}: teacher_task={task.teacher_task!r} is not a task config "
                         f"({path} does not exist); name one of bertprune/conf/task/, or set task.teacher_task=null")
    other = Task.from_config(OmegaConf.load(path))
    return dataclasses.replace(task, teacher_task=None, **{k: getattr(other, k) for k in VALIDATION_ONLY})


def teacher_key_data(cfg) -> dict:
    """Everything the teacher depends on, JSON-able: the model (weights/config and tokenizer by content),
    the task (all its fields, data files by content and absolute path) and the training config.
    Unset (None) entries are left out: a config schema that spells out optional keys gives the same key."""
    # The teacher's seed lives in the training group, so prune.py (whose own `seed` picks calibration
    # samples) finds the same teacher as train.py.
    training = OmegaConf.to_container(cfg.training, resolve=True)
    seed = training.pop("seed")
    model = OmegaConf.to_container(cfg.model, resolve=False)
    for key, files in (("name_or_path", MODEL_FILES), ("tokenizer", TOKENIZER_FILES)):
        if cfg.model.get(key) is not None:
            model[key] = source_fingerprint(str(cfg.model[key]), files)
    task = dataclasses.asdict(teacher_task(Task.from_config(cfg.task)))
    defaults = {f.name: f.default for f in dataclasses.fields(Task)}
    for key in KEY_NEUTRAL_AT_DEFAULT:  # later fields: at their default they change nothing trained on
        if task.get(key) == defaults[key]:
            task.pop(key)
    for key in ("data_file", "train_file", "validation_file"):
        if task[key] is not None:
            task[key] = source_fingerprint(str(task[key]))
    return {"model": _given(model), "task": _given(task), "training": _given(training), "seed": seed}


def _given(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def teacher_key(cfg) -> str:
    return config_key(teacher_key_data(cfg))


def teacher_dir(cfg) -> Path:
    return cache_dir() / "teachers" / f"{teacher_task(Task.from_config(cfg.task)).name}-{cfg.model.name}-{teacher_key(cfg)}"


def valid_teacher(path: Path) -> dict | None:
    """Metrics of a complete cache entry, or None if it is missing, partial or corrupt."""
    marker = path / COMPLETE
    try:
        info = json.loads(marker.read_text())
        if sha256_file(path / "model.safetensors") != info["sha256"]:
            return None
        return info["metrics"]
    except (OSError, ValueError, KeyError):
        return None


def ensure_teacher(cfg) -> TrainResult:
    """Reuse the cached teacher for (model, task, training, seed), or train it once."""
    path = teacher_dir(cfg)
    metrics = valid_teacher(path)
    if metrics is not None:
        log.info("Using cached teacher %s (%s)", path, metrics)
        return TrainResult(path, metrics, cached=True)
    check_writable(path.parent)
    if path.exists():
        log.warning("Cached teacher %s is partial or corrupt: rebuilding it", path)
        shutil.rmtree(path)
    return fine_tune(cfg, path)


def check_writable(folder: Path) -> None:
    """Refuse an unwritable teacher cache before a teacher is fine-tuned (and would be lost)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise PermissionError(
            f"The teacher cache {folder} is not writable ({e.strerror or e}): the fine-tuned teacher could not "
            "be saved. Set BERTPRUNE_CACHE_DIR to a writable folder, run train.py with cache=false, or pass a "
            "fine-tuned model (prune.py teacher=<folder>).") from None


def validate_inputs(cfg) -> tuple[Task, object]:
    """Everything that can be checked before long work: task, model source, hardware, data."""
    task = Task.from_config(cfg.task)
    if cfg.model.get("random_init") is None:
        check_source(cfg.model.name_or_path)
    check_hardware(cfg.hardware)
    return task, load_tokenizer(cfg.model.tokenizer)


def fine_tune(cfg, out_dir: Path) -> TrainResult:
    """Fine-tune the configured model on the task; write an HF folder + metrics.json to ``out_dir``."""
    import pytorch_lightning as pl

    from bertprune.lightning.finetune import FineTuneModule, TaskDataModule, progress_options
    from bertprune.lightning.loggers import finish_wandb, make_loggers

    task, tokenizer = validate_inputs(cfg)
    data = load_task_data(task)
    if cfg.training.get("max_train_samples"):
        n = min(int(cfg.training.max_train_samples), len(data["train"]))
        data["train"] = data["train"].shuffle(seed=cfg.training.seed).select(range(n))
    if cfg.training.get("max_eval_samples"):
        data["validation"] = data["validation"].select(range(min(int(cfg.training.max_eval_samples),
                                                                  len(data["validation"]))))
    tokenized = tokenize(data, task, tokenizer)
    pl.seed_everything(cfg.training.seed, workers=True)
    model = build_model(cfg.model, task, tokenizer)
    module = FineTuneModule(model, task, cfg.training.lr, cfg.training.weight_decay, cfg.training.warmup_ratio)
    dm = TaskDataModule(tokenized, tokenizer, cfg.training.batch_size, seed=cfg.training.seed)
    run_dir = Path(cfg.output_dir)
    loggers = make_loggers(cfg.logger, str(run_dir), name=f"train-{task.name}-{cfg.model.name}",
                           group="train", config=OmegaConf.to_container(cfg, resolve=True))
    trainer = pl.Trainer(max_epochs=cfg.training.epochs, logger=loggers, enable_checkpointing=False,
                         default_root_dir=str(run_dir), log_every_n_steps=10, num_sanity_val_steps=0,
                         deterministic=False, **progress_options(), **trainer_kwargs(cfg.hardware))
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_time = time.perf_counter() - start
    model = module.model.cpu().eval()
    metrics = evaluate(model, dm.val_dataloader(), task.kind)
    metrics = {R.eval_key(k): v for k, v in metrics.items()}
    metrics.update({"train/time_s": round(train_time, 1), "train/examples": len(tokenized["train"]),
                    R.eval_key("examples"): len(tokenized["validation"])})
    for lg in loggers:
        lg.log_metrics(metrics)
    finish_wandb()
    if trainer.global_rank != 0:
        return TrainResult(out_dir, metrics, cached=False)
    with atomic_dir(out_dir) as tmp:  # the folder appears whole or not at all: plain writes inside it
        write_checkpoint(model, tokenizer, tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (tmp / COMPLETE).write_text(json.dumps({"sha256": sha256_file(tmp / "model.safetensors"),
                                                "metrics": metrics}))
    return TrainResult(out_dir, metrics, cached=False)


def train(cfg) -> TrainResult:
    """Entry of train.py: the cached teacher for this config (trained if needed); metrics.json in the run dir."""
    result = ensure_teacher(cfg) if cfg.get("cache", True) else fine_tune(cfg, Path(cfg.output_dir) / "teacher")
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"teacher": str(result.folder), "cached": result.cached, **result.metrics}
    atomic_write_json(run_dir / "metrics.json", summary)
    acc = result.metrics.get(R.eval_key("accuracy"))
    print(f"teacher: {result.folder}\n" + (f"dev accuracy: {acc:.2f}%" if acc is not None else
                                              f"metrics: {result.metrics}") + (" (cached)" if result.cached else ""))
    return result
