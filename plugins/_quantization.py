"""Helpers shared by the built-in quantisers (not a plugin itself)."""

from __future__ import annotations

from pathlib import Path

from gate import BuildContext


def has_sympy() -> bool:
    try:
        import sympy  # noqa: F401
    except ImportError:
        return False
    return True


def preprocess(source: Path, context: BuildContext) -> Path:
    """ORT's recommended pre-quantisation pass (shape inference + optimisation).

    When it fails the original graph is quantised instead and the report says why.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    destination = context.work_dir / "preprocessed.onnx"
    try:
        quant_pre_process(str(source), str(destination), skip_symbolic_shape=not has_sympy())
    except Exception as exc:
        context.note(f"pre-processing failed ({type(exc).__name__}: {exc}); quantised the graph as given")
        return source
    return destination


QUANT_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}

COMMON_OPTIONS = {
    "per_channel": {"type": "boolean", "default": False},
    "reduce_range": {"type": "boolean", "default": False, "description": "7-bit weights; helps AVX2/AVX512 without VNNI"},
    "op_types_to_quantize": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    "nodes_to_exclude": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    "preprocess": {"type": "boolean", "default": True, "description": "run quant_pre_process first"},
    "extra_options": {"type": "object", "description": "passed to onnxruntime.quantization as extra_options"},
}
