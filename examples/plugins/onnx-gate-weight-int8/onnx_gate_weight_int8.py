"""int8 weight-only quantisation: MatMul and Gemm weights stored as int8 with one scale per
output column, dequantised in the graph (DequantizeLinear), activations left in float.

Models shrink about 4x; whether they run faster depends on the provider, which is what
onnx-gate measures. A worked example of a third-party quantiser (docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate import BuildContext, Proposal, Quantizer, SearchContext, SkipCandidate, hookimpl

OPTIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "op_types": {
            "type": "array",
            "items": {"enum": ["MatMul", "Gemm"]},
            "minItems": 1,
            "uniqueItems": True,
            "default": ["MatMul", "Gemm"],
        },
        "min_elements": {
            "type": "integer",
            "minimum": 1,
            "default": 1024,
            "description": "Weights smaller than this stay in float.",
        },
        "nodes_to_exclude": {"type": "array", "items": {"type": "string"}},
    },
}


def quantize(
    source: Path, destination: Path, options: Mapping[str, Any], context: BuildContext
) -> None:
    # Heavy imports inside the function: listing plugins must stay fast.
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    op_types = set(options.get("op_types", ["MatMul", "Gemm"]))
    excluded = set(options.get("nodes_to_exclude", []))
    minimum = int(options.get("min_elements", 1024))
    if any(
        node.op_type in ("DequantizeLinear", "MatMulInteger", "QLinearMatMul")
        for node in graph.node
    ):
        raise SkipCandidate("the model is already quantised")
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
        raise SkipCandidate("per-column DequantizeLinear needs opset 13 or newer")
    replaced = 0
    new_nodes = []
    for node in graph.node:
        name = node.input[1] if len(node.input) > 1 else ""
        weight = weights.get(name)
        transposed = node.op_type == "Gemm" and any(
            a.name == "transB" and a.i == 1 for a in node.attribute
        )
        if (
            node.op_type in op_types
            and node.name not in excluded
            and weight is not None
            and weight.data_type == onnx.TensorProto.FLOAT
            and len(weight.dims) == 2
            and int(np.prod(weight.dims)) >= minimum
        ):
            values = numpy_helper.to_array(weight)
            axis = 0 if transposed else 1  # one scale per output feature
            peak = np.abs(values).max(axis=1 - axis)
            scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
            shaped = scale[:, None] if axis == 0 else scale[None, :]
            quantised = np.clip(np.round(values / shaped), -127, 127).astype(np.int8)
            graph.initializer.remove(weight)
            graph.initializer.extend(
                [
                    numpy_helper.from_array(quantised, f"{name}_int8"),
                    numpy_helper.from_array(scale, f"{name}_scale"),
                    numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero"),
                ]
            )
            new_nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                    [f"{name}_dequantised"],
                    name=f"{name}_dequantise",
                    axis=axis,
                )
            )
            node.input[1] = f"{name}_dequantised"
            replaced += 1
        new_nodes.append(node)
    if not replaced:
        raise SkipCandidate(f"no float {'/'.join(sorted(op_types))} weight of {minimum}+ elements")
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.save(model, str(destination))
    context.note(f"{replaced} weight(s) stored as int8")


def propose(context: SearchContext) -> list[Proposal]:
    share = context.share("MatMul", "Gemm")
    if context.quantized_ops or share < 0.5:
        return [
            Proposal("weight-int8", {}, 1.0, "MatMul/Gemm hold little of the weight", declined=True)
        ]
    return [
        Proposal(
            "weight-int8",
            {},
            expected_speedup=1.0,
            reason=f"MatMul/Gemm hold {share:.0%} of the weights: about 4x smaller at little accuracy cost",
            accuracy_risk=0.1,
            family="weight-int8",
        )
    ]


@hookimpl
def onnx_gate_quantizers() -> list[Quantizer]:
    return [
        Quantizer(
            name="weight-int8",
            quantize=quantize,
            description="int8 weight-only quantisation of MatMul/Gemm (onnx-gate-weight-int8)",
            options_schema=OPTIONS_SCHEMA,
            propose=propose,
        )
    ]
