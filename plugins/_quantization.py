"""Helpers shared by the built-in quantisers (not a plugin itself)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gate import (
    QUANTIZED_OPS,
    BuildContext,
    Proposal,
    SearchContext,
    SkipCandidate,
    listed,
    node_key,
    op_counts,
)


def has_sympy() -> bool:
    try:
        import sympy  # noqa: F401
    except ImportError:
        return False
    return True


def _node_names(path: Path) -> set[str]:
    import onnx

    return {node.name for node in onnx.load(str(path), load_external_data=False).graph.node}


def refuse_quantized(source: Path) -> None:
    """Raise SkipCandidate for a model that already holds quantised operators.

    Fake-quant QDQ pairs and weight-only DequantizeLinear count too: ORT's
    quantisers do not support quantising such graphs again.
    """
    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    found = set(op_counts(graph)) & QUANTIZED_OPS
    if found:
        raise SkipCandidate(
            f"the model is already quantised (it has {listed(sorted(found))}); "
            "quantising it again is not supported"
        )


def _fold_constant_weights(source: Path, context: BuildContext) -> Path:
    """Constant nodes become initializers: ORT's quantisers only quantise initializer weights.

    Without this a graph whose weights come from Constant nodes is returned
    unquantised (ORT 1.32) or makes the quantiser raise (older releases).
    Unnamed nodes get the name ``nodes_to_exclude`` knows them by (``gate.node_key``).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    constants = [
        n for n in graph.node
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
        and n.attribute and n.attribute[0].name == "value"
    ]  # fmt: skip
    if not constants and all(node.name for node in graph.node):
        return source
    for node in constants:
        array = numpy_helper.to_array(node.attribute[0].t)
        graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        graph.node.remove(node)
    for node in graph.node:
        node.name = node_key(node)
    destination = context.work_dir / "folded.onnx"
    onnx.save_model(model, str(destination))
    if constants:
        context.note(
            f"folded {len(constants)} Constant node(s) into initializers before quantising"
        )
    return destination


def prepare(source: Path, options: Mapping[str, Any], context: BuildContext) -> Path:
    """The graph to quantise: checked, with Constant weights folded, pre-processed unless
    ``preprocess: false``.

    Pre-processing fuses nodes (MatMul + Add -> Gemm), so names given in
    ``nodes_to_exclude`` can vanish; then the graph is quantised as given.
    """
    refuse_quantized(source)
    given = source
    source = _fold_constant_weights(source, context)
    excluded = set(options.get("nodes_to_exclude") or ())
    if excluded:
        # A folded Constant is no longer a node, and there is nothing left of it to exclude.
        unknown = excluded - _node_names(source) - _node_names(given)
        if unknown:
            raise ValueError(
                f"nodes_to_exclude names node(s) not in the model: {listed(sorted(unknown))}"
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


@contextmanager
def _without_torch() -> Iterator[None]:
    """Keep torch out while onnxruntime pre-processes: its shape inference imports torch
    when it is installed (about a second per candidate, measured on the demo: 22 s of
    search instead of 12) and never uses it here. A process that already has torch keeps it."""
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # type: ignore[assignment]  # import torch -> ImportError
    try:
        yield
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]


def _preprocess(source: Path, context: BuildContext) -> Path:
    """ORT's recommended pre-quantisation pass (shape inference + optimisation).

    When it fails the original graph is quantised instead and the report says why.
    """
    destination = context.work_dir / "preprocessed.onnx"
    try:
        with _without_torch():
            from onnxruntime.quantization.shape_inference import quant_pre_process

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


def extra_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's ``extra_options``, with a float default for tensors shape inference cannot
    type (contrib ops of a fused transformer graph make ORT's quantisers raise otherwise)."""
    import onnx

    extra = dict(options.get("extra_options", {}))
    extra.setdefault("DefaultTensorType", onnx.TensorProto.FLOAT)
    return extra


def is_x86(context: SearchContext) -> bool:
    return context.arch.lower() in ("x86_64", "amd64", "x86", "i686", "i386")


def is_arm(context: SearchContext) -> bool:
    return context.arch.lower().startswith(("aarch64", "arm"))


def already_quantized(context: SearchContext, plugin: str) -> list[Proposal]:
    """The declined proposal for a model that is quantised already (empty for a float model)."""
    if not context.quantized_ops:
        return []
    return [
        Proposal(
            plugin,
            {},
            0.0,
            f"the model is already quantised (it has {listed(context.quantized_ops)})",
            declined=True,
        )
    ]


def exposed_session(model: Any, names: Sequence[str]) -> Any:
    """A CPU session of ``model`` (a ModelProto) that also returns the tensors ``names``,
    unoptimised so every intermediate tensor still exists."""
    import onnx
    import onnxruntime as ort

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {output.name for output in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(
        exposed.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def initializer_uses(graph: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """The graph's initializers by name, and how many node inputs read each tensor: a
    rewrite may change a weight only where nothing else reads it."""
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    return {tensor.name: tensor for tensor in graph.initializer}, uses
