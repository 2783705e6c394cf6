"""ONNX: ``interface`` (the MLPerf names and the one graph check), ``export`` (torch -> ONNX, the
sidecar), ``parity`` (ONNX Runtime vs PyTorch), ``quantize`` (INT8), ``variants`` (finding exported
variants), ``runtime`` (ONNX Runtime sessions)."""
