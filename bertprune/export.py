"""export.py's logic: checkpoint(s) -> ONNX (+ INT8), parity-checked (see conf/export.yaml).

``source`` is either
* a checkpoint folder (config.json + model.safetensors, dense or pruned): exported to
  ``<output_dir>/onnx`` (+ ``<output_dir>/onnx_int8``), the Hydra run folder by default — the
  checkpoint folder itself (possibly the teacher cache) is never written to; or
* a prune run / sweep folder: every ``**/pruned/config.json`` found in it is exported to
  ``<run_dir>/onnx`` (+ ``<run_dir>/onnx_int8``), next to the run's results.json; with
  ``include_teacher`` the dense teacher named in the runs' bertprune.json goes to ``<source>/dense/onnx``
  (the reference bench_export compares against).

The task: a pruned checkpoint's bertprune.json records the task it was pruned for, and that wins;
``cfg.task`` is used for checkpoints without it (dense ones).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bertprune.data import Task
from bertprune.onnx_export import export_variant

log = logging.getLogger(__name__)
SUMMARY = "exports.json"


def find_runs(source: Path) -> list[Path]:
    """Checkpoint folders written by prune.py under ``source`` (``**/pruned/config.json``), sorted."""
    return sorted({p.parent for p in source.rglob("pruned/config.json")
                   if not any(part.startswith(".") for part in p.relative_to(source).parts)})


def task_for(checkpoint: Path, default: Task) -> Task:
    """The task recorded in a pruned checkpoint's bertprune.json, else ``default``."""
    meta = checkpoint / "bertprune.json"
    if meta.is_file():
        recorded = json.loads(meta.read_text()).get("task")
        if recorded:
            task = Task.from_config(recorded)
            if task.name != default.name:
                log.info("%s was pruned for task %s: exporting for that task (not task=%s)", checkpoint, task.name,
                         default.name)
            return task
    return default


def plan(source: Path, output_dir: Path, include_teacher: bool) -> list[tuple[Path, Path]]:
    """(checkpoint, out_dir) pairs to export for ``source``."""
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
        teachers = {json.loads((c / "bertprune.json").read_text()).get("teacher")
                    for c in runs if (c / "bertprune.json").is_file()} - {None}
        if len(teachers) == 1:
            pairs.insert(0, (Path(teachers.pop()), source / "dense" / "onnx"))
        elif teachers:
            log.warning("runs under %s come from %d different teachers; not exporting a dense reference",
                        source, len(teachers))
    return pairs


def export(cfg) -> list[dict]:
    """Entry of export.py: export every variant ``cfg.source`` designates; returns their sidecars."""
    from bertprune.hardware import check_hardware

    check_hardware(cfg.hardware)
    default_task = Task.from_config(cfg.task)
    source = Path(cfg.source).expanduser().resolve()
    output_dir = Path(cfg.output_dir)
    pairs = plan(source, output_dir, bool(cfg.get("include_teacher", True)))
    tasks = [task_for(ckpt, default_task) for ckpt, _ in pairs]
    # seq_len S of the MAC model: the pruned runs' (from prune.py), so the dense reference uses the same S.
    pruned_s = next((json.loads((c / "bertprune.json").read_text()).get("seq_len") for c, _ in pairs
                     if (c / "bertprune.json").is_file()), None)
    exported = []
    for (ckpt, out_dir), task in zip(pairs, tasks):
        result = export_variant(ckpt, out_dir, task, tokenizer_dir=cfg.get("tokenizer"), quantize=cfg.quantize,
                                opset=cfg.opset, device=cfg.device, max_eval_samples=cfg.max_eval_samples,
                                parity_tolerance=cfg.parity_tolerance,
                                parity_batch_sizes=list(cfg.parity_batch_sizes), mac_seq_len=pruned_s)
        exported += [r for r in (result["fp32"], result["int8"]) if r is not None]
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / SUMMARY).write_text(json.dumps(exported, indent=2, default=float))
    print(format_table(exported))
    return exported


def format_table(sidecars: list[dict]) -> str:
    """Markdown table of exported variants."""
    lines = ["| variant | precision | MAC ratio | params | size MB | metric | PyTorch | ONNX | parity | path |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def num(v, fmt):
        return fmt.format(v) if isinstance(v, (int, float)) else "–"

    for s in sidecars:
        acc = s.get("accuracy", {})
        lines.append(f"| {s['variant']} | {s['precision']} | {s['mac_ratio']:.3f} | {s['parameters']:,} | "
                     f"{s['file_size'] / 1e6:.1f} | {s['metric']} | {num(acc.get('pytorch'), '{:.2f}')} | "
                     f"{num(acc.get('onnx'), '{:.2f}')} | {num(s.get('parity_max_abs_diff'), '{:.1e}')} | "
                     f"{s['path']} |")
    return "\n".join(lines)
