"""ONNX: the MLPerf interface, export, parity, INT8, ONNX Runtime sessions."""
