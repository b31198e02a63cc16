"""Helpers shared by the built-in quantisers (not a plugin itself)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate import BuildContext


def has_sympy() -> bool:
    try:
        import sympy  # noqa: F401
    except ImportError:
        return False
    return True


def _node_names(path: Path) -> set[str]:
    import onnx

    return {node.name for node in onnx.load(str(path), load_external_data=False).graph.node}


def prepare(source: Path, options: Mapping[str, Any], context: BuildContext) -> Path:
    """The graph to quantise: pre-processed unless ``preprocess: false``.

    Pre-processing fuses nodes (MatMul + Add -> Gemm), so names given in
    ``nodes_to_exclude`` can vanish; then the graph is quantised as given.
    """
    excluded = set(options.get("nodes_to_exclude") or ())
    if excluded:
        unknown = excluded - _node_names(source)
        if unknown:
            raise ValueError(
                f"nodes_to_exclude names node(s) not in the model: {', '.join(sorted(unknown))}"
            )
    if not options.get("preprocess", True):
        return source
    prepared = _preprocess(source, context)
    if excluded and not excluded <= _node_names(prepared):
        context.note(
            "pre-processing renamed nodes listed in nodes_to_exclude; quantised the graph as given"
        )
        return source
    return prepared


def _preprocess(source: Path, context: BuildContext) -> Path:
    """ORT's recommended pre-quantisation pass (shape inference + optimisation).

    When it fails the original graph is quantised instead and the report says why.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    destination = context.work_dir / "preprocessed.onnx"
    try:
        quant_pre_process(str(source), str(destination), skip_symbolic_shape=not has_sympy())
    except Exception as exc:
        context.note(
            f"pre-processing failed ({type(exc).__name__}: {exc}); quantised the graph as given"
        )
        return source
    return destination


QUANT_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}

COMMON_OPTIONS = {
    "per_channel": {"type": "boolean", "default": False},
    "reduce_range": {
        "type": "boolean",
        "default": False,
        "description": "7-bit weights; helps AVX2/AVX512 without VNNI",
    },
    "op_types_to_quantize": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    "nodes_to_exclude": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    "preprocess": {
        "type": "boolean",
        "default": True,
        "description": "run quant_pre_process first",
    },
    "extra_options": {
        "type": "object",
        "description": "passed to onnxruntime.quantization as extra_options",
    },
}
