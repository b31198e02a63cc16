"""Facts read off an ONNX graph without running it: operators, where the weights go,
and whether the model is quantised already. The search proposes candidates from them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

# Operators that only appear in a graph that is quantised already.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QLinearConv", "QLinearMatMul", "QGemm", "QAttention", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QLinearAdd", "QLinearMul", "MatMulNBits", "QLinearConcat",
    "QLinearSoftmax", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearReduceMean", "QLinearWhere", "GatherBlockQuantized",
    "QOrderedMatMul",
})  # fmt: skip

# Weights reach their consumer through these unchanged in meaning (a transposed or cast weight).
_PASS_THROUGH = {"Transpose", "Cast", "Reshape", "Identity", "Unsqueeze", "Squeeze", "Flatten"}
MATMUL_OPS = ("MatMul", "Gemm", "Attention", "MultiHeadAttention", "Einsum")
CONV_OPS = ("Conv", "ConvTranspose")
RECURRENT_OPS = ("LSTM", "GRU", "RNN", "Scan", "Loop")


def graphs(graph: Any) -> Iterator[Any]:
    """A graph and every subgraph in it (If / Loop / Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g.node:
                yield from graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from graphs(subgraph)


def op_counts(graph: Any) -> Counter[str]:
    """Operator type -> number of nodes, subgraphs included."""
    return Counter(node.op_type for body in graphs(graph) for node in body.node)


_QUANTISE_DEQUANTISE = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def quantised_compute_nodes(graph: Any) -> int:
    """Nodes that compute on quantised data, counted alike in either format: a QOperator
    node (QLinearConv, MatMulInteger, ...), or in QDQ form a node fed by a DequantizeLinear.
    The Q/DQ nodes themselves are not counted."""
    total = 0
    for body in graphs(graph):
        dequantised = {
            output for node in body.node if node.op_type == "DequantizeLinear"
            for output in node.output
        }  # fmt: skip
        for node in body.node:
            if node.op_type in _QUANTISE_DEQUANTISE:
                continue
            if node.op_type in QUANTIZED_OPS or any(name in dequantised for name in node.input):
                total += 1
    return total


_DECODE_OPS = frozenset({"Sigmoid", "Concat"})


def decode_tail(graph: Any, least: int = 3) -> tuple[str, ...]:
    """The nodes after the last compute operator (Conv, MatMul, Gemm) when they look like a
    detector's decoding (a Sigmoid or Concat among at least ``least`` of them): int8 there
    rounds box coordinates and scores for little speed. Constant nodes are left out (the
    quantisers fold them into initializers).
    Named as ``nodes_to_exclude`` knows them (``node_key``); empty otherwise."""
    compute = set(CONV_OPS) | {"MatMul", "Gemm"}
    producers = {output: node for node in graph.node for output in node.output}
    feeds_compute: set[int] = set()
    for node in reversed(list(graph.node)):  # graph order is topological: consumers come later
        if node.op_type in compute:
            feeds_compute.add(id(node))
        if id(node) in feeds_compute:
            for name in node.input:
                producer = producers.get(name)
                if producer is not None:
                    feeds_compute.add(id(producer))
    tail = [
        node for node in graph.node
        if id(node) not in feeds_compute and node.op_type != "Constant"
    ]  # fmt: skip
    if len(tail) < least or not any(node.op_type in _DECODE_OPS for node in tail):
        return ()
    return tuple(node_key(node) for node in tail)


def weight_share(graph: Any) -> dict[str, float]:
    """Operator type -> share of all weight elements it reads (through a Transpose or Cast too).

    Initializers and Constant-node tensors count; scalars and shape vectors
    (fewer than 16 elements) do not.
    """
    import numpy as np

    reads: Counter[str] = Counter()
    for body in graphs(graph):
        sizes = {t.name: int(np.prod(t.dims)) for t in body.initializer}
        for node in body.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                sizes[node.output[0]] = int(np.prod(node.attribute[0].t.dims))
        consumers: dict[str, list[Any]] = {}
        for node in body.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        for name, size in sizes.items():
            if size < 16:
                continue
            users = consumers.get(name, [])
            # Follow one pass-through hop, so a transposed weight counts for the MatMul that reads it.
            final = [
                user
                for node in users
                for user in (
                    consumers.get(node.output[0], [node])
                    if node.op_type in _PASS_THROUGH and node.output
                    else [node]
                )
            ]
            if final:
                reads[final[0].op_type] += size
    total = sum(reads.values())
    return {op: count / total for op, count in reads.items()} if total else {}


def model_kind(counts: Counter[str], share: dict[str, float]) -> str:
    """A rough family, for choosing what to try first: transformer, cnn, recurrent, mlp or other."""
    conv = sum(share.get(op, 0.0) for op in CONV_OPS)
    if (
        counts["Attention"]
        or counts["MultiHeadAttention"]
        or (
            counts["Softmax"]
            and counts["MatMul"] >= 4
            and (
                counts["LayerNormalization"]
                or counts["SkipLayerNormalization"]
                or (counts["ReduceMean"] and (counts["Pow"] or counts["Sqrt"]))
            )
        )
    ):
        return "transformer"
    if sum(counts[op] for op in CONV_OPS) >= 3 and conv >= 0.2:
        return "cnn"
    if any(counts[op] for op in RECURRENT_OPS):
        return "recurrent"
    if counts["MatMul"] or counts["Gemm"]:
        return "mlp"
    return "other"


def node_key(node: Any) -> str:
    """The name a node is known by in ``nodes_to_exclude``: its name, or for an unnamed
    node its type and first output (``MatMul:logits``)."""
    return node.name or f"{node.op_type}:{node.output[0] if node.output else ''}"
