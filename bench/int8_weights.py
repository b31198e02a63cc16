#!/usr/bin/env python3
"""Does a float layer with int8 weights behind a DequantizeLinear (static
``excluded_weights: int8``) run as fast as the float layer? One paired (ABBA) block of the
gate's own harness per size, the two sessions side by side.

    python3 bench/int8_weights.py
"""

from __future__ import annotations

import platform

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from gate.policy.loading import MeasureSettings
from gate.run.measure import time_pair
from gate.stats import ratio_estimate


def model(size: int, int8: bool, rng: np.random.Generator) -> bytes:
    weight = rng.normal(size=(size, size)).astype(np.float32)
    nodes, inits = [], []
    if int8:
        scale = (np.abs(weight).max(axis=0) / 127).astype(np.float32)
        quantised = np.round(weight / scale).astype(np.int8)
        inits = [
            numpy_helper.from_array(quantised, "wq"),
            numpy_helper.from_array(scale, "s"),
            numpy_helper.from_array(np.zeros(size, np.int8), "z"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], axis=1))
    else:
        inits = [numpy_helper.from_array(weight, "w")]
    nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"]))
    graph = helper.make_graph(
        nodes, "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, size])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def main() -> None:
    print(f"machine: {platform.machine()}, onnxruntime {ort.__version__}")
    print(
        "| MatMul | float p50 us | int8-weight p50 us | int8 / float latency (95% interval) | file float / int8 |"
    )
    print("|---|---:|---:|---:|---:|")
    settings = MeasureSettings(max_seconds=4.0)
    for size in (256, 512, 1024):
        rng = np.random.default_rng(size)
        blobs = [model(size, False, rng), model(size, True, np.random.default_rng(size))]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        sessions = [
            ort.InferenceSession(b, options, providers=["CPUExecutionProvider"]) for b in blobs
        ]
        feed = {"x": rng.normal(size=(8, size)).astype(np.float32)}
        timing = time_pair(sessions[0], sessions[1], feed, settings)
        ratio = ratio_estimate(timing.original_turns, timing.candidate_turns)
        print(
            f"| {size}x{size} | {np.median(timing.original_ms) * 1e3:.1f} | "
            f"{np.median(timing.candidate_ms) * 1e3:.1f} | {1 / ratio.point:.3f} "
            f"({1 / ratio.high:.3f}-{1 / ratio.low:.3f}) | {len(blobs[0]) / len(blobs[1]):.1f}x |"
        )


if __name__ == "__main__":
    main()
