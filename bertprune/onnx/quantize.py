"""INT8 variants: ONNX Runtime dynamic quantization of an exported FP32 graph."""

from __future__ import annotations

import tempfile
from pathlib import Path

QUANTIZE = ("int8",)  # the precisions export can add next to FP32


def quantize_int8(fp32_path: str | Path, out_path: str | Path) -> Path:
    """ONNX Runtime dynamic quantization: QInt8 weights (per output channel), activations quantized at
    run time (MatMulInteger / DynamicQuantizeLinear).

    The dynamo exporter records value_info shapes that ORT's quantizer re-infers and then rejects
    ("Inferred shape and existing shape differ"), so value_info is dropped first. Then
    ``quant_pre_process`` runs ONNX shape inference + ORT graph optimisation; its symbolic shape
    inference is skipped (it cannot complete on these graphs and would write a temp file into the cwd).
    """
    import onnx
    from bertprune.onnx.runtime import onnxruntime

    onnxruntime()  # one clear error when the extra is missing
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from bertprune.onnx.runtime import quiet

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=out_path.parent) as tmp:
        proto = onnx.load(str(fp32_path))
        del proto.graph.value_info[:]
        stripped, pre = Path(tmp) / "stripped.onnx", Path(tmp) / "pre.onnx"
        onnx.save(proto, str(stripped))
        with quiet():
            quant_pre_process(str(stripped), str(pre), skip_symbolic_shape=True)
            quantize_dynamic(str(pre), str(out_path), weight_type=QuantType.QInt8, per_channel=True)
    return out_path
