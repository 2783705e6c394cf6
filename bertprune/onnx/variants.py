"""Exported variants on disk: the one discovery of ``model.onnx`` + ``model.json`` (sidecar) folders.

One variant: ``<dir>/model.onnx`` and its sidecar ``<dir>/model.json`` (shapes, MACs, accuracy, parity,
sha256 …, written by ``bertprune.onnx.export``); its INT8 sibling lives in ``<dir>_int8/`` (``int8_dir``).
Everything that looks for exported variants — the bench job, the LoadGen callback, the export callback's
reuse of a dense export, the developer benchmarks — goes through ``discover_variants`` /
``load_variant`` / ``complete_variant`` here, and checks one against its task with ``check_variant``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from bertprune import interface

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
SIDECAR = "model.json"


def int8_dir(out_dir: str | Path) -> Path:
    """Where the INT8 sibling of the FP32 export in ``out_dir`` goes: ``<out_dir>_int8``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}_int8"


PATTERN_TAGS = {"unstructured": "", "block4": "-block4", "nm_2_4": "-2of4"}  # name suffix of each pattern


def variant_name(meta: dict, precision: str = "fp32") -> str:
    """The variant's name, from its sidecar / checkpoint metadata (file-name safe):

    "dense"; "c0.50" (structured, to a constraint); "pruned" (pruned, no constraint recorded); an unstructured
    step adds "<method><sparsity>[-<pattern>]": "c0.50-obs0.50" (compound), "obs0.80" (structured=false, so no
    constraint), "magnitude0.50-2of4"; "-int8" appended for INT8."""
    u = meta.get("unstructured") or {}
    if meta.get("constraint") is not None:
        name = f"c{float(meta['constraint']):.2f}"
    elif meta.get("heads_per_layer") is not None and not u:
        name = "pruned"
    else:
        name = "dense"
    if u:
        sparsity = u.get("target_sparsity", u.get("sparsity"))
        step = f"{u.get('method', 'unstructured')}{float(sparsity):.2f}" + PATTERN_TAGS.get(u.get("pattern"), "")
        name = step if name == "dense" else f"{name}-{step}"
    return name if precision == "fp32" else f"{name}-{precision}"


def unstructured_description(u: dict) -> str:
    """One line on an unstructured step (a sidecar's / checkpoint's ``unstructured`` entry), for provenance."""
    method = {"obs": "second-order (Optimal BERT Surgeon, block-diagonal Fisher)",
              "magnitude": "global magnitude"}.get(u.get("method"), str(u.get("method")))
    parts = [f"{method} unstructured pruning of the encoder's linear weights, pattern {u.get('pattern')}, "
             f"sparsity {float(u.get('sparsity', 0)):.4f}"]
    if u.get("linear_weights"):
        parts[0] += f" ({u.get('pruned_weights'):,} of {u['linear_weights']:,} weights set to zero)"
    if u.get("method") == "obs":
        parts.append(", ".join(f"{label} {u[k]}" for label, k in (
            ("fisher_block_size", "fisher_block_size"), ("num_grads", "num_grads"), ("damp", "damp"),
            ("num_recomputations", "num_recomputations")) if u.get(k) is not None))
    return "; ".join(parts)


@dataclass
class Variant:
    """One exported model: ``model.onnx`` and its ``model.json`` sidecar (``meta``; {} if absent)."""

    name: str
    onnx: Path
    meta: dict = field(default_factory=dict)

    @property
    def precision(self) -> str:
        return self.meta.get("precision") or ("int8" if "int8" in self.name else "fp32")

    @property
    def mac_ratio(self) -> float | None:
        value = self.meta.get("mac_ratio")
        return None if value is None else float(value)

    @property
    def file_size(self) -> int:
        """Bytes on disk: the .onnx plus its external-data file if the exporter wrote one."""
        size = self.onnx.stat().st_size
        data = self.onnx.with_name(self.onnx.name + ".data")
        if data.is_file():
            size += data.stat().st_size
        return size

    @property
    def tokenizer_candidates(self) -> list[Path]:
        """Where the sidecar says the tokenizer is: ``tokenizer`` (relative to the variant folder, so a
        copied or moved sweep still finds it; absolute in older exports), then ``tokenizer_absolute``
        (its place at export time)."""
        out = []
        for key in ("tokenizer", "tokenizer_absolute"):
            value = self.meta.get(key)
            if value:
                path = Path(value)
                out.append(path if path.is_absolute() else self.onnx.parent / path)
        return out

    @property
    def tokenizer(self) -> Path | None:
        """The first of ``tokenizer_candidates`` that exists (else the first one; None if the sidecar names none)."""
        cands = self.tokenizer_candidates
        return next((c for c in cands if c.exists()), cands[0] if cands else None)

    @property
    def sha256(self) -> str | None:
        """The ONNX file's sha256 as its export recorded it (None without a sidecar)."""
        return self.meta.get("sha256") or None

    def check_sha256(self) -> str:
        """Hash the ONNX file now; raise if it differs from the sha256 its sidecar recorded. Returns the hash."""
        from bertprune.io import sha256_file

        digest = sha256_file(self.onnx)
        if self.sha256 and digest != self.sha256:
            raise ValueError(sha256_mismatch(self.onnx, digest, self.sha256))
        return digest


def sha256_mismatch(path, found: str, recorded: str) -> str:
    return (f"{path} has sha256 {found} but its export recorded {recorded} (model.json): the file was replaced "
            "or modified after export, so its results would be reported for another model. Re-export the "
            "variant (python export.py ...), or restore the exported file.")


def load_variant(path: str | Path) -> Variant:
    """A ``.onnx`` file (sidecar ``<stem>.json`` optional) or a folder holding ``model.onnx``."""
    path = Path(path)
    if path.is_dir():
        onnx_path = path / MODEL_FILE
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{path} holds no {MODEL_FILE}; pass an exported variant folder, a sweep "
                                    "folder or a .onnx file")
    else:
        onnx_path = path
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    if onnx_path.suffix != ".onnx":
        raise ValueError(f"{onnx_path} is not a .onnx file")
    sidecar = onnx_path.with_suffix(".json")
    meta: dict = {}
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{sidecar}: sidecar is not valid JSON ({e}); re-export the variant") from e
        if not isinstance(meta, dict):
            raise ValueError(f"{sidecar}: sidecar must be a JSON object")
    default = onnx_path.parent.name if onnx_path.name == MODEL_FILE else onnx_path.stem
    return Variant(name=str(meta.get("variant") or default), onnx=onnx_path, meta=meta)


def _hidden(path: Path, root: Path) -> bool:
    # atomic_dir writes into ".<name>.tmp-*" siblings: never benchmark a half-written export
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def discover_variants(source) -> list[Variant]:
    """Variants under ``source``: a .onnx file, a variant folder, a sweep folder (every
    ``**/model.json`` next to a ``model.onnx``), or a list of those. Names are made unique; order:
    dense first, then MACs kept descending, FP32 before INT8."""
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    variants: list[Variant] = []
    for src in sources:
        src = Path(src)
        if not src.exists():
            raise FileNotFoundError(f"bench source not found: {src} (expected a .onnx file, an exported variant "
                                    "folder or a sweep folder)")
        if src.is_file() or (src / MODEL_FILE).is_file():
            variants.append(load_variant(src))
            continue
        found = sorted(p.parent for p in src.rglob(SIDECAR)
                       if (p.parent / MODEL_FILE).is_file() and not _hidden(p, src))
        if not found:
            raise FileNotFoundError(f"no exported variants under {src}: looked for **/model.json next to a "
                                    "model.onnx (run export first, or pass a .onnx file)")
        variants.extend(load_variant(d) for d in found)
    # dense first, then by MACs kept (descending), FP32 before INT8
    variants.sort(key=lambda v: (-(v.mac_ratio if v.mac_ratio is not None else 1.0), v.precision != "fp32",
                                 str(v.onnx)))
    _unique_names(variants)
    return variants


def _unique_names(variants: list[Variant]) -> None:
    counts: dict[str, int] = {}
    for v in variants:
        counts[v.name] = counts.get(v.name, 0) + 1
    for v in variants:
        if counts[v.name] > 1:  # e.g. two sweeps with the same constraint: add the job folder
            job = v.onnx.parent.parent.name if v.onnx.name == MODEL_FILE else v.onnx.parent.name
            v.name = f"{v.name}@{job}"
    seen: dict[str, int] = {}
    for v in variants:
        n = seen.get(v.name, 0)
        seen[v.name] = n + 1
        if n:
            v.name = f"{v.name}#{n + 1}"


def complete_variant(folder: str | Path) -> Variant | None:
    """The variant exported to ``folder`` if its export finished (model.onnx and a readable sidecar) and the
    file still has the sha256 its export recorded; else None (nothing there, half-written, or replaced)."""
    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file() or not (folder / SIDECAR).is_file():
        return None
    try:
        v = load_variant(folder)
        if not v.sha256:
            return None
        v.check_sha256()
    except (OSError, ValueError):
        return None
    return v


def check_variant(variant: Variant, kind, num_labels: int, max_length: int, task_name: str | None = None
                  ) -> interface.Signature:
    """Check ``variant`` against the task before anything runs; one clear error otherwise: the task its
    sidecar names, then its graph (``interface.check_interface``: inputs, outputs, sequence length, labels)."""
    from bertprune.tasks.kinds import get_kind

    kind = get_kind(kind)
    path = variant.onnx
    meta_task = variant.meta.get("task") or {}
    if task_name is not None and meta_task.get("name") and meta_task["name"] != task_name:
        raise ValueError(f"variant {variant.name} ({path}) was exported for task {meta_task['name']!r} but the "
                         f"bench task is {task_name!r}; pass task={meta_task['name']}")
    if meta_task.get("kind") and meta_task["kind"] != kind.name:
        raise ValueError(f"variant {variant.name} ({path}) is a {meta_task['kind']} model but the task is {kind.name}")
    return interface.check_interface(path, kind, max_length=max_length, num_labels=num_labels)
