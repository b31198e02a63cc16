"""Bias correction for a static QDQ model (a repair step of the static quantiser).

Rounding weights and activations to int8 shifts the mean of a layer's output, the
same way on every sample: a weight column that rounds towards zero loses its share
of a positive input. The shift is measured per output channel on the calibration
data, as the mean of the float model's layer output less the quantised model's, and
folded into the layer's bias, so the quantised kernels (DequantizeLinear -> Conv ->
QuantizeLinear, fused by ONNX Runtime) are untouched. NNCF's FastBiasCorrection and
BiasCorrection are the models:

- ``fast``: each layer fed the float model's input to it, so each shift is that
  layer's own error and all of them come from one pass;
- ``full``: layer by layer in graph order, each shift measured after the layers
  before it were corrected (a pass per layer), so corrections do not compound.

Layers: Conv and Gemm with a bias (an int32 bias behind a DequantizeLinear, as ORT
writes it, or a float one), and MatMul followed by an Add of a constant. A layer
without a bias is left as it is: giving it one would break the QDQ pattern ORT fuses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gate_plugins._quantization import exposed_session

SAMPLES = 32
MAX_FULL_LAYERS = 200  # a pass per layer: beyond this, fall back to the fast variant


@dataclass
class _Layer:
    output: str
    """The float tensor whose per-channel mean is corrected."""
    bias: Any
    """The initializer to change (TensorProto)."""
    scale: np.ndarray | None
    """The int32 bias's dequantisation scale; None for a float bias."""
    channel_axis: int
    source: str = ""
    """The float tensor the layer reads, before its QuantizeLinear / DequantizeLinear."""


def _initializers(graph: Any) -> dict[str, Any]:
    return {tensor.name: tensor for tensor in graph.initializer}


def _layers(graph: Any) -> tuple[list[_Layer], int]:
    """Correctable layers in graph order, and how many compute layers had no bias to correct."""
    from onnx import numpy_helper

    inits = _initializers(graph)
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1

    def bias_of(name: str) -> tuple[Any, np.ndarray | None] | None:
        if readers.get(name, 0) != 1:  # a bias two layers share cannot take both shifts
            return None
        if name in inits:
            return inits[name], None
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            return None
        if readers.get(node.input[0], 0) != 1:
            return None
        scale = inits.get(node.input[1])
        if scale is None or inits[node.input[0]].data_type != 6:  # TensorProto.INT32
            return None
        return inits[node.input[0]], numpy_helper.to_array(scale).astype(np.float64)

    def float_input(name: str) -> str:
        dequantise = producer.get(name)
        if dequantise is not None and dequantise.op_type == "DequantizeLinear":
            quantise = producer.get(dequantise.input[0])
            if quantise is not None and quantise.op_type == "QuantizeLinear":
                return quantise.input[0]
        return name

    layers, unbiased = [], 0
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm"):
            found = bias_of(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if found is None:
                unbiased += 1
                continue
            axis = 1 if node.op_type == "Conv" else -1
            layers.append(
                _Layer(node.output[0], found[0], found[1], axis, float_input(node.input[0]))
            )
        elif node.op_type == "MatMul":
            adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
            found = None
            for add in adds:
                other = next((name for name in add.input if name != node.output[0]), None)
                candidate = bias_of(other) if other else None
                if candidate is not None and candidate[1] is None:
                    found = (add, candidate)
            if found is None:
                unbiased += 1
                continue
            layers.append(
                _Layer(found[0].output[0], found[1][0], None, -1, float_input(node.input[0]))
            )
    return layers, unbiased


def _channel_means(
    model: Any, layers: Sequence[_Layer], samples: Sequence[dict[str, np.ndarray]]
) -> list[np.ndarray]:
    """Each layer's output mean per channel over every sample and position."""
    names = [layer.output for layer in layers]
    session = exposed_session(model, names)
    wanted = {i.name for i in session.get_inputs()}
    totals: list[np.ndarray | None] = [None] * len(layers)
    counts = [0] * len(layers)
    for sample in samples:
        outputs = session.run(names, {k: v for k, v in sample.items() if k in wanted})
        for index, (layer, value) in enumerate(zip(layers, outputs, strict=True)):
            value = np.asarray(value, dtype=np.float64)
            axis = layer.channel_axis % value.ndim
            moved = np.moveaxis(value, axis, -1).reshape(-1, value.shape[axis])
            total = moved.sum(axis=0)
            totals[index] = total if totals[index] is None else totals[index] + total
            counts[index] += moved.shape[0]
    return [total / count for total, count in zip(totals, counts, strict=True)]  # type: ignore[operator]


def _local_means(
    reference: Any,
    quantised: Any,
    layers: Sequence[_Layer],
    samples: Sequence[dict[str, np.ndarray]],
) -> list[np.ndarray | None]:
    """Each quantised layer's output mean when it reads the float model's input to it: its
    own error alone, so that correcting every layer from one pass does not compound."""
    known = {name for node in reference.graph.node for name in node.output}
    known |= {tensor.name for tensor in reference.graph.input}
    # A graph output's producer is renamed in the quantised model: read it by its float name.
    floats = {layer.source: _float_name(layer.source, known) for layer in layers}
    sources = sorted({name for name in floats.values() if name is not None})
    session = exposed_session(reference, sources)
    wanted = {i.name for i in session.get_inputs()}
    inputs = [
        dict(
            zip(
                sources,
                session.run(sources, {k: v for k, v in s.items() if k in wanted}),
                strict=True,
            )
        )
        for s in samples
    ]
    means: list[np.ndarray | None] = []
    for layer in layers:
        name = floats[layer.source]
        try:
            if name is None:
                raise KeyError(layer.source)
            part = _between(quantised, layer.source, layer.output, inputs[0][name])
            [mean] = _channel_means(part, [layer], [{layer.source: feed[name]} for feed in inputs])
        except Exception:  # a layer whose input is not one tensor: left as it is
            mean = None
        means.append(mean)
    return means


def _between(model: Any, source: str, output: str, example: np.ndarray) -> Any:
    """The part of ``model`` that computes ``output`` from ``source`` (a float tensor like
    ``example``). Written here: onnx.utils.Extractor wants shapes for the tensors ORT's
    quantiser renames, which shape inference does not give."""
    import onnx
    from onnx import helper

    producer = {name: node for node in model.graph.node for name in node.output}
    needed: set[int] = set()
    stack, seen = [output], set()
    while stack:
        name = stack.pop()
        if name == source or name in seen:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is not None:
            needed.add(id(node))
            stack.extend(node.input)
    nodes = [node for node in model.graph.node if id(node) in needed]
    read = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info(source, onnx.TensorProto.FLOAT, list(example.shape))],
        [onnx.ValueInfoProto(name=output)],
        [tensor for tensor in model.graph.initializer if tensor.name in read],
    )
    part = helper.make_model(graph, opset_imports=list(model.opset_import))
    part.ir_version = model.ir_version
    return part


def _apply(layer: _Layer, shift: np.ndarray) -> float:
    """Fold ``shift`` into the layer's bias; the largest change, in output units."""
    from onnx import numpy_helper

    bias = numpy_helper.to_array(layer.bias)
    if shift.shape != bias.shape:
        return 0.0
    if layer.scale is None:
        updated = (bias.astype(np.float64) + shift).astype(bias.dtype)
    else:
        steps = np.rint(shift / np.broadcast_to(layer.scale, shift.shape))
        limits = np.iinfo(np.int32)
        updated = np.clip(bias.astype(np.int64) + steps, limits.min, limits.max).astype(np.int32)
    layer.bias.CopyFrom(numpy_helper.from_array(updated, layer.bias.name))
    return float(np.max(np.abs(shift))) if shift.size else 0.0


def _float_name(name: str, known: set[str]) -> str | None:
    """The float model's name for a quantised model's tensor: ORT renames a graph output's
    producer to ``NAME_QuantizeLinear_Input`` so that the output keeps its name."""
    if name in known:
        return name
    stripped = name.removesuffix("_QuantizeLinear_Input")
    return stripped if stripped != name and stripped in known else None


def correct_biases(
    float_model: Path, quantised_model: Path, samples: Iterator[dict[str, np.ndarray]], variant: str
) -> tuple[int, int, float]:
    """Rewrite ``quantised_model`` in place with its biases corrected against
    ``float_model``. Returns (layers corrected, layers without a bias, largest shift)."""
    import onnx

    reference = onnx.load(str(float_model))
    quantised = onnx.load(str(quantised_model))
    feeds = [dict(sample) for _, sample in zip(range(SAMPLES), samples, strict=False)]
    if not feeds:
        raise ValueError("bias correction needs calibration samples")
    layers, unbiased = _layers(quantised.graph)
    known = {name for node in reference.graph.node for name in node.output}
    matched = [(layer, _float_name(layer.output, known)) for layer in layers]
    pairs = [(layer, name) for layer, name in matched if name is not None]
    layers = [layer for layer, _ in pairs]
    if not layers:
        return 0, unbiased, 0.0
    targets = _channel_means(
        reference, [_Layer(name, None, None, layer.channel_axis) for layer, name in pairs], feeds
    )
    largest = 0.0
    if variant == "fast" or len(layers) > MAX_FULL_LAYERS:
        currents = _local_means(reference, quantised, layers, feeds)
        for layer, target, current in zip(layers, targets, currents, strict=True):
            if current is not None:
                largest = max(largest, _apply(layer, target - current))
        layers = [
            layer for layer, current in zip(layers, currents, strict=True) if current is not None
        ]
    else:
        for layer, target in zip(layers, targets, strict=True):
            [current] = _channel_means(quantised, [layer], feeds)
            largest = max(largest, _apply(layer, target - current))
    onnx.save_model(quantised, str(quantised_model))
    return len(layers), unbiased, largest
