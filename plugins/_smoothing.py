"""SmoothQuant for static int8 of transformer MatMuls (Xiao et al., 2023; what ONNX Runtime
offers through neural-compressor, here without it).

A few activation channels of a transformer carry values far larger than the rest, so one
int8 scale per tensor rounds every other channel to a handful of steps, while the weights
are easy to quantise. A per-input-channel factor ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``
moves that difficulty from the activation to the weight: ``X_j / s_j`` and ``W_j * s_j``
compute the same product. The division is folded into the LayerNormalization (or ORT's
SkipLayerNormalization) whose output feeds the MatMuls (its scale and bias divided by
``s``), and the multiplication into the rows of their weights, so the float model computes
the same and no operator is added. Only a normalisation whose output reaches nothing but
MatMuls with weight initializers is smoothed; ``max|X_j|`` comes from the calibration data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NORMALISATIONS = {"LayerNormalization": (1, 2), "SkipLayerNormalization": (2, 3)}
"""Op type -> input positions of its scale (gamma) and bias (beta)."""
SCALE_RANGE = (1e-4, 1e4)


@dataclass
class _Site:
    norm: Any
    output: str
    gamma: str
    beta: str | None
    weights: list[str]


def _sites(graph: Any, inits: dict[str, Any]) -> list[_Site]:
    uses: dict[str, int] = {}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
            consumers.setdefault(name, []).append(node)
    outputs = {output.name for output in graph.output}
    sites = []
    for node in graph.node:
        positions = NORMALISATIONS.get(node.op_type)
        if positions is None or len(node.input) <= positions[0]:
            continue
        axis = next((int(a.i) for a in node.attribute if a.name == "axis"), -1)
        if axis != -1:
            continue  # the channel scale must run along the last axis, as the MatMul's K does
        gamma = node.input[positions[0]]
        beta = node.input[positions[1]] if len(node.input) > positions[1] else ""
        if (
            gamma not in inits
            or uses[gamma] != 1
            or (beta and (beta not in inits or uses[beta] != 1))
        ):
            continue
        output = node.output[0]
        readers = consumers.get(output, [])
        if not readers or output in outputs:
            continue
        if any(
            r.op_type != "MatMul" or r.input[0] != output or r.input[1] not in inits
            or uses[r.input[1]] != 1
            for r in readers
        ):  # fmt: skip
            continue  # a residual Add or a second reader would see the divided values
        sites.append(_Site(node, output, gamma, beta or None, [r.input[1] for r in readers]))
    return sites


def _activation_ranges(
    model: Any, names: Sequence[str], samples: Iterable[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    from gate_plugins._quantization import exposed_session

    session = exposed_session(model, names)
    ranges: dict[str, np.ndarray] = {}
    for sample in samples:
        for name, value in zip(names, session.run(list(names), sample), strict=True):
            channel = np.abs(np.asarray(value, dtype=np.float64)).reshape(-1, value.shape[-1])
            peak = channel.max(axis=0)
            ranges[name] = np.maximum(ranges[name], peak) if name in ranges else peak
    return ranges


def smooth(
    source: Path, destination: Path, samples: Iterable[dict[str, np.ndarray]], alpha: float
) -> tuple[int, int]:
    """Write ``source`` with its normalisation -> MatMul sites smoothed to ``destination``;
    how many normalisations and MatMuls changed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    inits = {tensor.name: tensor for tensor in graph.initializer}
    sites = _sites(graph, inits)
    if not sites:
        onnx.save_model(model, str(destination))
        return 0, 0
    ranges = _activation_ranges(model, [site.output for site in sites], samples)
    changed = matmuls = 0
    for site in sites:
        activation = ranges.get(site.output)
        weights = [numpy_helper.to_array(inits[name]).astype(np.float64) for name in site.weights]
        if activation is None or any(w.ndim != 2 or w.shape[0] != activation.size for w in weights):
            continue
        weight = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        usable = (activation > 0) & (weight > 0)
        scale = np.ones_like(activation)
        scale[usable] = activation[usable] ** alpha / weight[usable] ** (1 - alpha)
        scale = np.clip(scale, *SCALE_RANGE)
        if np.allclose(scale, 1.0):
            continue
        for name in (site.gamma, site.beta):
            if name is not None:
                stored = numpy_helper.to_array(inits[name])
                divided = (stored.astype(np.float64) / scale).astype(stored.dtype)
                inits[name].CopyFrom(numpy_helper.from_array(divided, name))
        for name, weight_array in zip(site.weights, weights, strict=True):
            dtype = numpy_helper.to_array(inits[name]).dtype
            scaled = (weight_array * scale[:, None]).astype(dtype)
            inits[name].CopyFrom(numpy_helper.from_array(scaled, name))
        changed += 1
        matmuls += len(site.weights)
    onnx.save_model(model, str(destination))
    return changed, matmuls
