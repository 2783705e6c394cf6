"""export.py's logic: checkpoint(s) -> ONNX (+ INT8), parity-checked (see conf/export.yaml).

``source`` is either
* a checkpoint folder (config.json + model.safetensors, dense or pruned): exported to
  ``<output_dir>/onnx`` (+ ``<output_dir>/onnx_int8``), the Hydra run folder by default — the
  checkpoint folder itself (possibly the teacher cache) is never written to; or
* a prune run / sweep folder: every ``**/pruned/config.json`` found in it is exported to
  ``<run_dir>/onnx`` (+ ``<run_dir>/onnx_int8``), next to the run's results.json; with
  ``include_teacher`` each dense teacher named in the runs' bertprune.json goes to
  ``<source>/dense/<teacher key>/onnx`` (``dense_dir``: the reference bench_export compares against).
  One variant that cannot be exported (a corrupt checkpoint …) does not stop the others: it is
  reported at the end (``export_failures.json``), and the command fails then.

The task: a pruned checkpoint's bertprune.json records the task it was pruned for, and that wins;
``cfg.task`` is used for checkpoints without it (dense ones).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bertprune.io import atomic_write_json, sha256_file
from bertprune.onnx.export import export_variant
from bertprune.tasks.data import Task

log = logging.getLogger(__name__)
SUMMARY = "exports.json"
FAILURES = "export_failures.json"


class ExportFailed(RuntimeError):
    """Some variants of a run/sweep folder could not be exported (the others were)."""


def teacher_key(checkpoint: str | Path) -> str:
    """12 hex digits of the SHA-256 of a checkpoint's weights (``model.safetensors``)."""
    return sha256_file(Path(checkpoint) / "model.safetensors")[:12]


def dense_dir(root: str | Path, teacher: str | Path) -> Path:
    """Where the dense reference export of ``teacher`` goes under ``root``: ``root/dense/<teacher_key>/onnx``.
    Keyed on the teacher's weights, so runs from different teachers (single runs share their parent folder)
    never share, overwrite or reuse each other's dense baseline."""
    return Path(root) / "dense" / teacher_key(teacher) / "onnx"


def _metadata(checkpoint: Path) -> dict:
    """A pruned checkpoint's bertprune.json ({} when absent or unreadable: the export then says what is wrong)."""
    try:
        return json.loads((checkpoint / "bertprune.json").read_text())
    except (OSError, ValueError):
        return {}


def find_runs(source: Path) -> list[Path]:
    """Checkpoint folders written by prune.py under ``source`` (``**/pruned/config.json``), sorted."""
    return sorted({p.parent for p in source.rglob("pruned/config.json")
                   if not any(part.startswith(".") for part in p.relative_to(source).parts)})


def task_for(checkpoint: Path, default: Task) -> Task:
    """The task recorded in a pruned checkpoint's bertprune.json, else ``default``."""
    meta = checkpoint / "bertprune.json"
    if meta.is_file():
        try:
            recorded = json.loads(meta.read_text()).get("task")
        except ValueError as e:
            raise ValueError(f"{meta} is not valid JSON ({e}); re-run prune.py for this variant") from None
        if recorded:
            task = Task.from_config(recorded)
            if task.name != default.name:
                log.info("%s was pruned for task %s: exporting for that task (not task=%s)", checkpoint, task.name,
                         default.name)
            return task
    return default


def plan(source: Path, output_dir: Path, include_teacher: bool) -> list[tuple[Path, Path]]:
    """(checkpoint, out_dir) pairs to export for ``source``: the dense teachers first (one per distinct teacher)."""
    if not source.exists():
        raise FileNotFoundError(f"source={source} does not exist; give a checkpoint folder or a prune run/sweep folder")
    if (source / "config.json").is_file():
        return [(source, output_dir / "onnx")]
    runs = find_runs(source)
    if not runs:
        raise FileNotFoundError(f"source={source} is neither a checkpoint (no config.json) nor a prune run/sweep "
                                "folder (no **/pruned/config.json under it)")
    pairs = [(ckpt, ckpt.parent / "onnx") for ckpt in runs]
    if include_teacher:
        teachers = list(dict.fromkeys(t for c in runs if (t := _metadata(c).get("teacher"))))
        dense = []
        for teacher in teachers:
            if (Path(teacher) / "model.safetensors").is_file():
                dense.append((Path(teacher), dense_dir(source, teacher)))
            else:
                log.warning("not exporting the dense reference of teacher %s: not a local checkpoint folder "
                            "(moved, deleted, or a hub name)", teacher)
        pairs = dense + pairs
    return pairs


def export(cfg) -> list[dict]:
    """Entry of export.py: export every variant ``cfg.source`` designates; returns their sidecars."""
    from bertprune.lightning.hardware import check_hardware

    from bertprune.config import validate_export

    from bertprune.onnx.runtime import choose_providers

    default_task = validate_export(cfg)
    check_hardware(cfg.hardware)
    choose_providers(str(cfg.hardware.runtime_device))  # runtime_device=cuda without a usable GPU: fail now
    source = Path(cfg.source).expanduser().resolve()
    output_dir = Path(cfg.output_dir)
    pairs = plan(source, output_dir, bool(cfg.get("include_teacher", True)))
    metas = {ckpt: _metadata(ckpt) for ckpt, _ in pairs}
    # seq_len S of the MAC model: the pruned runs' (from prune.py), so a dense reference uses its runs' S.
    seq_lens = {}
    for meta in metas.values():
        if meta.get("teacher") and meta.get("mac_seq_len"):
            seq_lens.setdefault(str(Path(meta["teacher"])), meta["mac_seq_len"])
    pruned_s = next((m["mac_seq_len"] for m in metas.values() if m.get("mac_seq_len")), None)
    quantize = None if cfg.quantize is None else str(cfg.quantize)
    exported, failed = [], []
    for ckpt, out_dir in pairs:
        try:
            result = export_variant(ckpt, out_dir, task_for(ckpt, default_task), tokenizer_dir=cfg.get("tokenizer"),
                                    quantize=quantize, opset=int(cfg.opset), device=str(cfg.hardware.runtime_device),
                                    max_eval_samples=cfg.max_eval_samples, parity_tolerance=cfg.parity_tolerance,
                                    parity_batch_sizes=list(cfg.parity_batch_sizes),
                                    mac_seq_len=metas[ckpt].get("mac_seq_len") or seq_lens.get(str(ckpt), pruned_s))
        except Exception as e:  # noqa: BLE001 - one bad variant must not cost the others their export
            if len(pairs) == 1:
                raise
            log.error("could not export %s: %s: %s", ckpt, type(e).__name__, e)
            failed.append({"checkpoint": str(ckpt), "out_dir": str(out_dir), "error": f"{type(e).__name__}: {e}"})
            continue
        exported += [r for r in (result["fp32"], result["int8"]) if r is not None]
    atomic_write_json(output_dir / SUMMARY, exported)
    (output_dir / FAILURES).unlink(missing_ok=True)
    print(format_table(exported))
    if failed:
        atomic_write_json(output_dir / FAILURES, failed)
        lines = "\n".join(f"  {f['checkpoint']}: {f['error'].splitlines()[0]}" for f in failed)
        raise ExportFailed(f"{len(failed)} of {len(pairs)} checkpoints could not be exported (the other "
                           f"{len(pairs) - len(failed)} were, see {output_dir / SUMMARY}):\n{lines}\n"
                           f"Fix or remove them and rerun; details in {output_dir / FAILURES}")
    return exported


def format_table(sidecars: list[dict]) -> str:
    """Markdown table of exported variants."""
    lines = ["| variant | precision | MAC ratio | params | size MB | metric | PyTorch | ONNX | parity | path |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def num(v, fmt):
        return fmt.format(v) if isinstance(v, (int, float)) else "–"

    for s in sidecars:
        acc = s.get("metric_value", {})
        lines.append(f"| {s['variant']} | {s['precision']} | {s['mac_ratio']:.3f} | {s['parameters']:,} | "
                     f"{s['file_size'] / 1e6:.1f} | {s['metric']} | {num(acc.get('pytorch'), '{:.2f}')} | "
                     f"{num(acc.get('onnx'), '{:.2f}')} | {num(s.get('parity_max_abs_diff'), '{:.1e}')} | "
                     f"{s['path']} |")
    return "\n".join(lines)
