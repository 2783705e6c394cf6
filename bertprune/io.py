"""Writing files so that a reader never sees half of one: the package's only atomic writers.

Every file bertprune writes for someone else to read (results, sidecars, summaries, status, caches)
goes through these: the content is written to a temporary sibling, flushed to disk, then moved into
place with ``os.replace`` (atomic on POSIX and Windows within one file system). A crash or Ctrl-C
leaves either the old file or the new one, never a truncated mix, and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON atomically; numpy / torch scalars are written as floats."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=float) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Context manager: yields a temporary sibling folder to fill; on success it replaces ``final``
    (an existing ``final`` is removed first), on any error it is deleted and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def safe_name(name: str) -> str:
    """``name`` with every character a file or folder name should not hold replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._@#-]+", "_", name)
