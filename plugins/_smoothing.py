"""SmoothQuant for static int8 of transformer MatMuls (Xiao et al., 2023; what ONNX Runtime
offers through neural-compressor, here without it).

A few activation channels of a transformer carry values far larger than the rest, so one
int8 scale per tensor rounds every other channel to a handful of steps, while the weights
are easy to quantise. A per-input-channel factor ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``
moves that difficulty from the activation to the weight: ``X_j / s_j`` and ``W_j * s_j``
compute the same product. The division is folded into the LayerNormalization (or ORT's
SkipLayerNormalization) whose output feeds the MatMuls (its scale and bias divided by
``s``), and the multiplication into the rows of their weights, so the float model computes
the same and no operator is added. Where the normalisation's output also reaches something
else (the residual Add of a post-LN BERT), a per-channel Mul by ``1/s`` in front of the
MatMuls divides instead. ``max|X_j|`` comes from the calibration data.
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
    gamma: str | None
    """None: the division cannot be folded (the output has other readers, or the scale is
    shared): a per-channel Mul in front of the MatMuls divides instead."""
    beta: str | None
    readers: list[Any]
    """The MatMuls reading ``output`` as their input A, with a weight initializer as B."""


def _sites(graph: Any, inits: dict[str, Any]) -> list[_Site]:
    from gate_plugins._quantization import initializer_uses

    _, uses = initializer_uses(graph)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
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
        output = node.output[0]
        readers = consumers.get(output, [])
        matmuls = [
            r for r in readers
            if r.op_type == "MatMul" and r.input[0] == output and r.input[1] in inits
            and uses[r.input[1]] == 1
        ]  # fmt: skip
        if not matmuls:
            continue
        gamma = node.input[positions[0]]
        beta = node.input[positions[1]] if len(node.input) > positions[1] else ""
        foldable = (
            len(matmuls) == len(readers)
            and output not in outputs
            and gamma in inits
            and uses[gamma] == 1
            and (not beta or (beta in inits and uses[beta] == 1))
        )
        if foldable:
            sites.append(_Site(node, output, gamma, beta or None, matmuls))
        else:  # a residual Add (post-LN BERT) must keep the undivided values
            sites.append(_Site(node, output, None, None, matmuls))
    return sites


def _divide_before(graph: Any, site: _Site, scale: np.ndarray) -> None:
    """A Mul by 1/s on the MatMuls' side only, right after the normalisation."""
    from onnx import helper, numpy_helper

    inverse = f"{site.output}_smooth_inverse"
    smoothed = f"{site.output}_smoothed"
    graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
    nodes = list(graph.node)
    position = nodes.index(site.norm) + 1
    graph.node.insert(
        position,
        helper.make_node(
            "Mul", [site.output, inverse], [smoothed], name=f"{site.norm.name}_smooth"
        ),
    )
    for reader in site.readers:
        reader.input[0] = smoothed


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
        names = [reader.input[1] for reader in site.readers]
        weights = [numpy_helper.to_array(inits[name]).astype(np.float64) for name in names]
        if activation is None or any(w.ndim != 2 or w.shape[0] != activation.size for w in weights):
            continue
        weight = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        usable = (activation > 0) & (weight > 0)
        scale = np.ones_like(activation)
        scale[usable] = activation[usable] ** alpha / weight[usable] ** (1 - alpha)
        scale = np.clip(scale, *SCALE_RANGE)
        if np.allclose(scale, 1.0):
            continue
        if site.gamma is None:
            _divide_before(graph, site, scale)
        for name in (site.gamma, site.beta):
            if name is not None:
                stored = numpy_helper.to_array(inits[name])
                divided = (stored.astype(np.float64) / scale).astype(stored.dtype)
                inits[name].CopyFrom(numpy_helper.from_array(divided, name))
        for name, weight_array in zip(names, weights, strict=True):
            dtype = numpy_helper.to_array(inits[name]).dtype
            scaled = (weight_array * scale[:, None]).astype(dtype)
            inits[name].CopyFrom(numpy_helper.from_array(scaled, name))
        changed += 1
        matmuls += len(names)
    onnx.save_model(model, str(destination))
    return changed, matmuls
