"""Cross-layer equalisation of Conv chains before static quantisation (Nagel et al., 2019;
AMD Quark's and NNCF's CLE).

Per-tensor int8 gives every output channel of a weight one scale, so one channel with a
wide range rounds the others to a few steps. Between two Convs joined directly or
through a ReLU (which commutes with a positive scale), output channel ``i`` of the first
can be divided by ``s_i`` and input channel ``i`` of the second multiplied by it without
changing what the pair computes; ``s_i = sqrt(r1_i / r2_i)`` gives both the same range.
Depthwise second Convs (the depthwise-separable blocks of mobile CNNs) work the same
way, channel for channel. A few passes over the graph let neighbouring pairs settle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gate_plugins._quantization import initializer_uses

PASSES = 4
HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu", "Identity"}
"""Activations f with f(s * x) = s * f(x) for s > 0: a scale passes through them."""


def _attribute(node: Any, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _pairs(graph: Any, inits: dict[str, Any], uses: dict[str, int]) -> list[tuple[Any, Any, Any]]:
    """(first Conv, activation or None, second Conv) where the first's output reaches only
    the second, and both weights are initializers no other node reads."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {output.name for output in graph.output}

    def only(name: str) -> Any:
        readers = consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in outputs else None

    pairs = []
    for first in graph.node:
        if first.op_type != "Conv":  # any group: output channel i is always W1[i] and b1[i]
            continue
        if first.input[1] not in inits or uses[first.input[1]] != 1:
            continue
        bias = first.input[2] if len(first.input) > 2 else ""
        if bias and (bias not in inits or uses.get(bias, 0) != 1):
            continue  # a bias that cannot be divided by s would change what the pair computes
        following, activation = only(first.output[0]), None
        if following is not None and following.op_type in HOMOGENEOUS:
            if following.op_type == "PRelu":
                following = None  # per-channel slopes would need scaling too
            else:
                activation, following = following, only(following.output[0])
        if following is None or following.op_type != "Conv":
            continue
        if following.input[1] not in inits or uses[following.input[1]] != 1:
            continue
        pairs.append((first, activation, following))
    return pairs


def equalize(source: Path, destination: Path) -> int:
    """Write ``source`` with its Conv chains equalised to ``destination``; the pairs changed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    inits, uses = initializer_uses(graph)
    pairs = _pairs(graph, inits, uses)
    arrays = {name: numpy_helper.to_array(inits[name]).astype(np.float64) for name in inits}
    changed = set()
    for _ in range(PASSES):
        for first, _activation, second in pairs:
            w1, w2 = arrays[first.input[1]], arrays[second.input[1]]
            channels = w1.shape[0]
            group = _attribute(second, "group", 1)
            if group == 1 and w2.shape[1] == channels:
                r2 = np.abs(w2).max(axis=(0, *range(2, w2.ndim)))
                shape2 = (1, channels) + (1,) * (w2.ndim - 2)
            elif group == channels and w2.shape[0] == channels and w2.shape[1] == 1:
                r2 = np.abs(w2).reshape(channels, -1).max(axis=1)  # depthwise: channel for channel
                shape2 = (channels,) + (1,) * (w2.ndim - 1)
            else:
                continue
            r1 = np.abs(w1).reshape(channels, -1).max(axis=1)
            live = (r1 > 0) & (r2 > 0)
            scale = np.ones(channels)
            scale[live] = np.sqrt(r1[live] / r2[live])
            if np.allclose(scale, 1.0, rtol=1e-3):
                continue
            arrays[first.input[1]] = w1 / scale.reshape((channels,) + (1,) * (w1.ndim - 1))
            arrays[second.input[1]] = w2 * scale.reshape(shape2)
            if len(first.input) > 2 and first.input[2] in arrays:
                arrays[first.input[2]] = arrays[first.input[2]] / scale
                changed.add(first.input[2])
            changed.update({first.input[1], second.input[1]})
    for name in changed:
        original = inits[name]
        dtype = numpy_helper.to_array(original).dtype
        original.CopyFrom(numpy_helper.from_array(arrays[name].astype(dtype), name))
    onnx.save_model(model, str(destination))
    return len(pairs) if changed else 0
