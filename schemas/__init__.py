"""JSON schemas shipped with onnx-gate (installed as ``gate.schemas``)."""
