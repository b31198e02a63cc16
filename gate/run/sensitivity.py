"""Where a quantised candidate lost its accuracy, for the search's accuracy fallback.

Every float tensor of the original and of the candidate is exposed as an output,
both run on the calibration samples, and each tensor's error is its
noise-to-signal power ratio (the inverse of the SQNR that
``onnxruntime.quantization.qdq_loss_debug`` reports), per channel: that module
flattens every tensor, which hides a channel lost next to an outlier one. It is
measured on the calibration samples whose outputs lost most, as NNCF ranks its
quantizer groups. What a tensor's producer added is its error
less the worst error of the tensors feeding it; excluding the nodes that
produce and consume it keeps that tensor in float. Tuning on calibration data
keeps the validation data an honest acceptance test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gate.graph import node_key
from gate.records import Sample

SAMPLES = 8
POOL = 32  # calibration samples whose output error picks the SAMPLES ranked on
FLOAT_TYPES = {"tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)"}
DEQUANTIZED_SUFFIX = "_DequantizeLinear_Output"  # ORT's QDQ name for a tensor as consumers see it
REGION_DEPTH = 6


@dataclass(frozen=True)
class ErrorSource:
    """Where a quantised candidate's error grows: a tensor, the nodes that touch it, and by how much."""

    tensor: str
    nodes: tuple[str, ...]
    """Its producer (with any producers of unmeasured tensors feeding it) and its consumers:
    excluding them all keeps the tensor, and how it is computed, in float."""
    added: float
    """Noise-to-signal power the tensor gains over the worst tensor feeding those producers."""

    def describe(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "nodes": list(self.nodes),
            "added_error": self.added,
            "sqnr_db": -10 * float(np.log10(self.added)) if self.added > 0 else None,
        }


def _exposed(model: Path, work: Path, label: str) -> tuple[Any, list[str]]:
    """A session of ``model`` with every tensor its nodes compute as an output, optimisations
    off so tensor names survive; and the names of the floating-point ones.

    The outputs are left untyped: ONNX Runtime types them itself, contrib
    operators (a fused transformer's) included, where ONNX shape inference cannot.
    """
    import onnx
    import onnxruntime as ort

    loaded = onnx.load(str(model))
    present = {output.name for output in loaded.graph.output}
    for node in loaded.graph.node:
        for name in node.output:
            if name and name not in present:
                present.add(name)
                loaded.graph.output.append(onnx.ValueInfoProto(name=name))
    path = work / f"{label}.exposed.onnx"
    onnx.save_model(loaded, str(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    floats = [output.name for output in session.get_outputs() if output.type in FLOAT_TYPES]
    return session, floats


def _tensors(session: Any, names: list[str], feed: Sample) -> dict[str, np.ndarray]:
    return dict(zip(names, session.run(names, feed), strict=True))


def _channels(value: np.ndarray) -> np.ndarray:
    """Per-channel sums over every other axis: axis 1 of NCHW tensors, the last axis otherwise."""
    if value.ndim == 0:
        return value.reshape(1)
    axis = 1 if value.ndim == 4 else value.ndim - 1
    return np.moveaxis(value, axis, -1).reshape(-1, value.shape[axis]).sum(axis=0)


def worst_samples(
    original: Path, reference: Any, quantized: Any, feeds: Sequence[Sample]
) -> list[Sample]:
    """The ``SAMPLES`` calibration samples on which the candidate's outputs lost most (of at
    most ``POOL``): an error that ruins a few inputs is ranked where it shows, not averaged
    away over the many it leaves alone."""
    import onnx

    pool = list(feeds[:POOL])
    if len(pool) <= SAMPLES:
        return pool
    names = [
        output.name for output in onnx.load(str(original), load_external_data=False).graph.output
    ]
    theirs = {output.name for output in quantized.get_outputs()}
    names = [name for name in names if name in theirs]
    if not names:
        return pool[:SAMPLES]
    lost = []
    for feed in pool:
        ours = reference.run(names, feed)
        other = quantized.run(names, feed)
        error = 0.0
        for mine, their in zip(ours, other, strict=True):
            mine, their = np.asarray(mine), np.asarray(their)
            if mine.shape != their.shape or mine.dtype.kind != "f":
                continue
            a, b = mine.astype(np.float64), their.astype(np.float64)
            error += float(np.sum((a - b) ** 2) / max(float(np.sum(a**2)), 1e-30))
        lost.append(error)
    order = np.argsort(lost, kind="stable")[::-1][:SAMPLES]
    return [pool[index] for index in sorted(order)]


def tensor_errors(
    original: Path, candidate: Path, feeds: Sequence[Sample], work: Path
) -> tuple[dict[str, float], set[str]]:
    """Every float tensor the two models share by name: its mean per-channel noise-to-signal
    power, each channel capped at 1 (lost); and the original's float tensors.

    Per channel, because an outlier channel can carry nearly all of a tensor's
    power: quantised to one scale with it, the other channels are lost while
    the tensor as a whole still looks 99% right.
    """
    work.mkdir(parents=True, exist_ok=True)
    reference, floats = _exposed(original, work, "original")
    quantized, theirs_floats = _exposed(candidate, work, "candidate")
    signal: dict[str, np.ndarray] = {}
    noise: dict[str, np.ndarray] = {}
    uneven: set[str] = set()
    for feed in worst_samples(original, reference, quantized, feeds):
        ours = _tensors(reference, floats, feed)
        theirs = _tensors(quantized, theirs_floats, feed)
        for name, value in ours.items():
            # In a QDQ graph consumers read the dequantised copy; ORT may even drop the Relu
            # before it, leaving the raw tensor with a different meaning.
            other = theirs.get(name + DEQUANTIZED_SUFFIX, theirs.get(name))
            if other is None or other.shape != value.shape:
                continue
            a, b = value.astype(np.float64), other.astype(np.float64)
            finite = np.isfinite(a) & np.isfinite(b)
            a, b = np.where(finite, a, 0.0), np.where(finite, b, 0.0)
            power, error = _channels(a**2), _channels((a - b) ** 2)
            if name in signal and signal[name].shape != power.shape:
                uneven.add(name)  # channels differ between samples: not comparable
                continue
            signal[name] = signal.get(name, 0.0) + power
            noise[name] = noise.get(name, 0.0) + error
    errors = {}
    for name, power in signal.items():
        if name in uneven:
            continue
        live = power > power.max(initial=0.0) * 1e-12
        if not live.any():
            errors[name] = 1.0 if noise[name].any() else 0.0
            continue
        errors[name] = float(np.mean(np.minimum(noise[name][live] / power[live], 1.0)))
    return errors, set(floats)


def rank_sources(
    original: Path, candidate: Path, feeds: Sequence[Sample], work: Path
) -> list[ErrorSource]:
    """Tensors of the original by the error quantisation adds to them, worst first.

    A tensor the candidate no longer has (ORT fuses and renames) is not
    measured: the error shows at the next tensor that is, and the nodes in
    between are held responsible together.
    """
    import onnx

    errors, floats = tensor_errors(original, candidate, feeds, work)
    graph = onnx.load(str(original), load_external_data=False).graph
    changed = _changed(graph, onnx.load(str(candidate), load_external_data=False).graph)
    producer = {name: node for node in graph.node for name in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    sources = []
    for tensor, error in errors.items():
        node = producer.get(tensor)
        if node is None or not node.input:  # a graph input, or a Constant's weight
            continue
        region, boundary = _region(node, producer, errors, floats)
        added = error - max((errors[name] for name in boundary), default=0.0)
        if added <= 0:
            continue
        touching = [*region, *consumers.get(tensor, [])]
        nodes = tuple(dict.fromkeys(node_key(item) for item in touching))
        if changed.isdisjoint(nodes):  # e.g. a sum of signed values: relative error grows by itself
            continue
        sources.append(ErrorSource(tensor, nodes, added))
    return sorted(sources, key=lambda source: -source.added)


def _region(
    node: Any, producer: dict[str, Any], measured: dict[str, float], floats: set[str]
) -> tuple[list[Any], set[str]]:
    """``node`` with the producers of the unmeasured float tensors feeding it (a few levels
    up), and the measured tensors at the region's edge.

    Integer tensors (shapes, indices) and Constant nodes are not followed: they
    are not quantised, and a folded Constant no longer exists to be excluded.
    """
    region, boundary, frontier = [node], set(), [node]
    seen = {id(node)}
    for _ in range(REGION_DEPTH):
        following = []
        for current in frontier:
            for name in current.input:
                if name in measured:
                    boundary.add(name)
                    continue
                source = producer.get(name)
                if source is None or name not in floats or not source.input or id(source) in seen:
                    continue
                seen.add(id(source))
                region.append(source)
                following.append(source)
        if not following:
            break
        frontier = following
    return region, boundary


def _changed(original: Any, candidate: Any) -> set[str]:
    """Nodes of the original the quantiser replaced (gone by name) or feeds dequantised tensors:
    keeping anything else in float changes nothing."""
    kept = {node.name for node in candidate.node}
    dequantized = {
        name
        for node in candidate.node
        if node.op_type == "DequantizeLinear"
        for name in node.output
    }
    fed = {node.name for node in candidate.node if any(name in dequantized for name in node.input)}
    return {node_key(node) for node in original.node if node_key(node) not in kept} | fed
