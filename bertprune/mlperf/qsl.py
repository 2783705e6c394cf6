"""The LoadGen QSL's data: a task's validation features (``tasks.features.validation_features``), cached.

``prepare_features(task, tokenizer)`` builds them once per (task config, data file content, tokenizer
files) and returns the cache base path; ``load_features(base, kind)`` reads them back in the run's child
process. The QSL itself (``load_samples`` / ``unload_samples``) is a no-op: the features live in RAM.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bertprune.io import atomic_write_bytes, atomic_write_text, sha256_file
from bertprune.tasks.features import Features, validation_features

log = logging.getLogger(__name__)

FEATURES_FORMAT = "bertprune.mlperf.qsl.features/1"


def _tokenizer_fingerprint(tokenizer) -> str:
    p = Path(str(tokenizer))
    if not p.is_dir():
        return str(tokenizer)  # a hub name
    files = sorted(f for f in p.iterdir() if f.name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                                                        "special_tokens_map.json", "merges.txt", "vocab.json"))
    return ",".join(f"{f.name}:{sha256_file(f)[:16]}" for f in files) or str(p.resolve())


def features_key(task, tokenizer) -> str:
    """Cache key: the task config, the data file's content and the tokenizer's files."""
    from bertprune.resources import config_key

    data = {"format": FEATURES_FORMAT, "task": asdict(task), "tokenizer": _tokenizer_fingerprint(tokenizer)}
    for key in ("data_file", "validation_file"):
        value = getattr(task, key, None)
        if value and Path(value).is_file():
            data[f"{key}_sha256"] = sha256_file(value)
    return config_key(data)


def prepare_features(task, tokenizer, cache_root: str | Path | None = None) -> Path:
    """Build (or reuse) the validation features of ``task`` with ``tokenizer`` (a folder or hub name).

    Returns the cache base path ``<cache>/features/<task>-<key>`` (files ``.npz``; qa adds ``.json``
    with the SQuAD maps and ``.examples.json``). Written atomically: the ``.npz`` appears last.
    """
    from bertprune.resources import cache_dir

    root = Path(cache_root) if cache_root is not None else cache_dir() / "features"
    root.mkdir(parents=True, exist_ok=True)
    base = root / f"{task.name}-{features_key(task, tokenizer)}"
    if Path(f"{base}.npz").is_file():
        return base
    from bertprune.models import load_tokenizer

    tok = load_tokenizer(str(tokenizer))
    features = validation_features(task, tok)
    # each file atomic, the .npz last: its presence marks a complete cache entry
    if features.squad is not None:
        atomic_write_text(f"{base}.examples.json", json.dumps([asdict(e) for e in features.examples]))
        features.squad.save(f"{base}.npz")  # <base>.json (the SQuAD maps), then <base>.npz
    else:
        buf = io.BytesIO()
        np.savez(buf, input_ids=features.input_ids, input_mask=features.input_mask,
                 segment_ids=features.segment_ids, labels=features.labels)
        atomic_write_bytes(f"{base}.npz", buf.getvalue())
    log.info("features for %s cached at %s.npz", task.name, base)
    return base


def load_features(base: str | Path) -> Features:
    """Inverse of ``prepare_features`` (arrays loaded with ``allow_pickle=False``); SQuAD features are
    the entries with an ``.examples.json``."""
    base = str(base)
    if base.endswith(".npz"):
        base = base[:-4]
    if not Path(f"{base}.npz").is_file():
        raise FileNotFoundError(f"features not found: {base}.npz")
    if Path(f"{base}.examples.json").is_file():  # SQuAD spans: their maps and examples beside the arrays
        from bertprune.tasks.squad import SquadExample, SquadFeatures

        sq = SquadFeatures.load(f"{base}.npz")
        examples = [SquadExample(**e) for e in json.loads(Path(f"{base}.examples.json").read_text(encoding="utf-8"))]
        return Features(sq.input_ids, sq.input_mask, sq.segment_ids, squad=sq, examples=examples)
    with np.load(f"{base}.npz", allow_pickle=False) as z:
        return Features(z["input_ids"], z["input_mask"], z["segment_ids"], labels=z["labels"])
