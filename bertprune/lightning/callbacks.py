"""Per-variant hooks that prune.py calls when a pruned checkpoint is saved (``export=true`` …).

Each callback has ``on_variant_saved(run_dir, checkpoint_dir, task, results) -> dict`` and returns the
extra entries to merge into the job's results.json.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from bertprune.tasks.data import Task
from bertprune.onnx.export import DEFAULT_OPSET, export_variant
from bertprune.onnx.parity import PARITY_BATCH_SIZES, PARITY_TOLERANCE
from bertprune.onnx import variants

log = logging.getLogger(__name__)


class ExportCallback:
    """Export the job's pruned checkpoint to ``<run_dir>/onnx`` (+ ``<run_dir>/onnx_int8``).

    export_teacher: also export the dense teacher, to ``<run_dir>/../dense/<teacher key>/onnx``
    (``bertprune.jobs.export.dense_dir``: under the sweep folder for ``-m`` runs), so
    ``python -m benchmarks.export_speed`` finds its reference. The folder is keyed on the teacher's
    weights, so runs from different teachers never share one; an export there is reused when it was made
    for the same task and MAC sequence length, else replaced.
    """

    def __init__(self, quantize: str | None = None, opset: int = DEFAULT_OPSET, device: str = "auto",
                 parity_tolerance: float = PARITY_TOLERANCE, parity_batch_sizes=PARITY_BATCH_SIZES,
                 max_eval_samples: int | None = None, export_teacher: bool = True):
        self.kwargs = dict(quantize=quantize, opset=opset, device=device, parity_tolerance=parity_tolerance,
                           parity_batch_sizes=list(parity_batch_sizes), max_eval_samples=max_eval_samples)
        self.export_teacher = export_teacher

    def on_variant_saved(self, run_dir: Path, checkpoint_dir: Path, task: Task, results: dict) -> dict:
        run_dir, checkpoint_dir = Path(run_dir), Path(checkpoint_dir)
        out = export_variant(checkpoint_dir, run_dir / "onnx", task, **self.kwargs)
        fp32, int8 = out["fp32"], out["int8"]
        metric = fp32["metric"]  # named for what it is: export/onnx_accuracy, export/onnx_mse, ...
        extra = {"export/onnx_path": fp32["path"], f"export/onnx_{metric}": fp32["metric_value"].get("onnx"),
                 f"export/pytorch_{metric}": fp32["metric_value"].get("pytorch"),
                 "export/parity_max_abs_diff": fp32["parity_max_abs_diff"], "export/provider": fp32["provider"],
                 "export/onnx_file_size": fp32["file_size"], "export/time_s": fp32["export_time_s"]}
        if int8 is not None:
            extra.update({"export/int8_path": int8["path"], f"export/int8_{metric}": int8["metric_value"].get("onnx"),
                          "export/int8_file_size": int8["file_size"],
                          "export/int8_parity_max_abs_diff": int8["parity_max_abs_diff"]})
        teacher = results.get("teacher") or fp32.get("teacher")
        if self.export_teacher and teacher and Path(teacher).is_dir():  # a hub name has no folder to export
            dense = self._export_teacher(Path(teacher), run_dir.parent, task, fp32["mac_seq_len"])
            extra["export/dense_onnx_path"] = dense["path"]
        return extra

    def _export_teacher(self, teacher: Path, root: Path, task: Task, mac_seq_len: float) -> dict:
        from bertprune.jobs.export import dense_dir

        out_dir = dense_dir(root, teacher)
        existing = variants.complete_variant(out_dir)
        if (existing is not None and existing.meta.get("task_config") == asdict(task)
                and existing.meta.get("mac_seq_len") == mac_seq_len
                and (self.kwargs["quantize"] is None or variants.complete_variant(variants.int8_dir(out_dir)) is not None)):
            return {**existing.meta, "path": str(existing.onnx)}
        log.info("exporting the dense teacher %s -> %s", teacher, out_dir)
        return export_variant(teacher, out_dir, task, mac_seq_len=mac_seq_len, **self.kwargs)["fp32"]
