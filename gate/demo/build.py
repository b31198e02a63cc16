"""How the bundled demo was made (and a small MLP builder the tests reuse).

    python -m gate.demo.build   # rewrites classifier.onnx, *.npz, labels.npy here

numpy and onnx only: the classifier is two random ReLU layers with a
least-squares readout, fitted to Gaussian clusters, so it has a real accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def mlp_model(
    layers: Sequence[tuple[np.ndarray, np.ndarray]], opset: int = 17, batch: str | int = "batch"
):  # type: ignore[no-untyped-def]
    """An ONNX MLP: MatMul + Add per layer, ReLU between layers, input ``x``, output ``logits``."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [], []
    current = "x"
    for index, (weight, bias) in enumerate(layers):
        w, b = f"w{index}", f"b{index}"
        initializers += [
            numpy_helper.from_array(weight.astype(np.float32), w),
            numpy_helper.from_array(bias.astype(np.float32), b),
        ]
        nodes.append(
            helper.make_node("MatMul", [current, w], [f"mm{index}"], name=f"matmul{index}")
        )
        last = index == len(layers) - 1
        added = "logits" if last else f"add{index}"
        nodes.append(helper.make_node("Add", [f"mm{index}", b], [added], name=f"add{index}"))
        if not last:
            nodes.append(helper.make_node("Relu", [added], [f"relu{index}"], name=f"relu{index}"))
            current = f"relu{index}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, layers[0][0].shape[0]])],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, [batch, layers[-1][0].shape[1]]
            )
        ],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnx-gate"
    )
    model.ir_version = 8
    return model


def cluster_data(
    rng: np.random.Generator, count: int, features: int, classes: int, centres: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, classes, size=count)
    x = centres[labels] + rng.normal(scale=1.6, size=(count, features))
    return x.astype(np.float32), labels.astype(np.int64)


def fit_classifier(
    rng: np.random.Generator, x: np.ndarray, labels: np.ndarray, classes: int, hidden: int = 512
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random ReLU features with a ridge-regression readout: a real classifier in closed form."""
    features = x.shape[1]
    w0 = rng.normal(scale=1 / np.sqrt(features), size=(features, hidden))
    b0 = rng.normal(scale=0.1, size=hidden)
    w1 = rng.normal(scale=1 / np.sqrt(hidden), size=(hidden, hidden))
    b1 = rng.normal(scale=0.1, size=hidden)
    h = np.maximum(np.maximum(x @ w0 + b0, 0) @ w1 + b1, 0)
    targets = np.eye(classes)[labels]
    w2 = np.linalg.solve(h.T @ h + 1.0 * np.eye(hidden), h.T @ targets)
    return [(w0, b0), (w1, b1), (w2, np.zeros(classes))]


def build(folder: Path = HERE, seed: int = 7) -> None:
    import onnx

    rng = np.random.default_rng(seed)
    features, classes = 256, 8
    centres = rng.normal(scale=1.0, size=(classes, features))
    train_x, train_y = cluster_data(rng, 4000, features, classes, centres)
    layers = fit_classifier(rng, train_x, train_y, classes)
    onnx.save_model(mlp_model(layers), str(folder / "classifier.onnx"))
    calibration_x, _ = cluster_data(rng, 64, features, classes, centres)
    validation_x, validation_y = cluster_data(rng, 200, features, classes, centres)
    np.savez(folder / "calibration.npz", x=calibration_x)
    np.savez(folder / "validation.npz", x=validation_x)
    np.save(folder / "labels.npy", validation_y)


if __name__ == "__main__":
    build()
