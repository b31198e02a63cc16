"""Shared fixtures: small real models built with onnx.helper, their data, and a CLI runner."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner

from gate.cli import cli
from gate.demo.build import mlp_model

# The plugin-author kit, used here as a plugin's own tests would use it.
pytest_plugins = ["gate.testing"]

# Keep timing short: these tests check behaviour, never speed.
# 80 rounds: enough samples for a 95% upper bound on p95 (72), quick on these tiny models.
FAST_MEASURE = {
    "warmup_runs": 2,
    "min_runs": 80,
    "max_runs": 80,
    "max_seconds": 2,
    "min_seconds": 0,
    "memory": False,
}


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def gate_cli() -> Callable[..., CliResult]:
    runner = CliRunner()

    def invoke(*args: str) -> CliResult:
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return invoke


def save_graph(
    path: Path, graph: Any, opsets: dict[str, int] | None = None, ir_version: int = 8
) -> Path:
    """Save a graph built with onnx.helper as a model (ai.onnx opset 17 unless told)."""
    from onnx import helper

    imports = [
        helper.make_opsetid(domain, version) for domain, version in (opsets or {"": 17}).items()
    ]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = ir_version
    onnx.save_model(model, str(path))
    return path


def forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    for index, (weight, bias) in enumerate(layers):
        x = x @ weight.astype(np.float32) + bias.astype(np.float32)
        if index < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


@dataclass
class ModelCase:
    folder: Path
    model: Path
    layers: list[tuple[np.ndarray, np.ndarray]]

    def write_policy(self, body: dict[str, Any], name: str = "policy.yaml") -> Path:
        path = self.folder / name
        document = {
            "version": 1,
            "model": {"path": self.model.name},
            "measure": dict(FAST_MEASURE),
            **body,
        }
        if path.suffix == ".json":
            path.write_text(json.dumps(document))
        else:
            path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path


def _write_case(
    folder: Path, layers: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator
) -> ModelCase:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.onnx"
    onnx.save_model(mlp_model(layers), str(model))
    features = layers[0][0].shape[0]
    validation = rng.normal(size=(64, features)).astype(np.float32)
    calibration = rng.normal(size=(32, features)).astype(np.float32)
    np.savez(folder / "validation.npz", x=validation)
    np.savez(folder / "calibration.npz", x=calibration)
    labels = forward(layers, validation).argmax(axis=1)
    # Flip a few labels so the original's own accuracy is realistic (not 100%).
    labels[:6] = (labels[:6] + 1) % layers[-1][0].shape[1]
    np.save(folder / "labels.npy", labels.astype(np.int64))
    return ModelCase(folder, model, layers)


@pytest.fixture
def classifier(tmp_path: Path) -> ModelCase:
    """A well-behaved MLP classifier whose quantisation keeps its predictions."""
    rng = np.random.default_rng(1)
    layers = [
        (rng.normal(scale=1 / np.sqrt(32), size=(32, 64)), rng.normal(scale=0.1, size=64)),
        (rng.normal(scale=1 / np.sqrt(64), size=(64, 10)) * 4, np.zeros(10)),
    ]
    return _write_case(tmp_path / "classifier", layers, rng)


@pytest.fixture
def fragile_classifier(tmp_path: Path) -> ModelCase:
    """A classifier that int8 activation quantisation destroys.

    One hidden unit carries huge values that never reach the logits; with one
    scale for the whole tensor, every informative activation rounds to zero.
    """
    rng = np.random.default_rng(2)
    w0 = rng.normal(scale=1 / np.sqrt(32), size=(32, 64))
    w0[:, 63] *= 3000.0
    w1 = rng.normal(size=(64, 10))
    w1[63, :] = 0.0
    layers = [(w0, rng.normal(scale=0.1, size=64)), (w1, np.zeros(10))]
    return _write_case(tmp_path / "fragile", layers, rng)


def load_report(output_dir: Path) -> dict[str, Any]:
    """report.json of a run, checked against the report schema: every report a test
    reads (single, suite, stage, merged, failed) must keep the contract with CI."""
    from jsonschema import Draft202012Validator

    from gate.policy.loading import REPORT_SCHEMA, load_schema

    report = json.loads((output_dir / "report.json").read_text())
    errors = sorted(Draft202012Validator(load_schema(REPORT_SCHEMA)).iter_errors(report), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]
    return report


def candidate(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in report["candidates"] if item["name"] == name)


@pytest.fixture
def fragile_mlp(tmp_path: Path) -> ModelCase:
    """The bundled demo's classifier with one outlier weight column in its middle layer.

    Big enough that int8 is clearly faster on one thread, and quantised with one scale per
    weight tensor the outlier column flattens every other column of that
    layer: predictions are lost. The outlier unit never reaches the logits, so
    keeping that one layer in float recovers them.
    """
    from gate.demo.build import cluster_data, fit_classifier

    rng = np.random.default_rng(7)
    features, classes = 256, 8
    centres = rng.normal(scale=1.0, size=(classes, features))
    train_x, train_y = cluster_data(rng, 2000, features, classes, centres)
    (w0, b0), (w1, b1), (w2, b2) = fit_classifier(rng, train_x, train_y, classes)
    w1, w2 = w1.copy(), w2.copy()
    w1[:, 7] *= 2000.0
    w2[7, :] = 0.0
    folder = tmp_path / "fragile_mlp"
    folder.mkdir()
    model = folder / "model.onnx"
    onnx.save_model(mlp_model([(w0, b0), (w1, b1), (w2, b2)]), str(model))
    np.savez(folder / "calibration.npz", x=cluster_data(rng, 64, features, classes, centres)[0])
    validation_x, validation_y = cluster_data(rng, 200, features, classes, centres)
    np.savez(folder / "validation.npz", x=validation_x)
    np.save(folder / "labels.npy", validation_y)
    return ModelCase(folder, model, [(w0, b0), (w1, b1), (w2, b2)])


def tiny_transformer(path: Path, hidden: int = 64) -> Path:
    """Two encoder-style blocks (MatMul, GELU, residual, LayerNorm as ONNX exporters spell
    them out) and a softmax: what ORT's transformer fusion recognises."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    initializers, nodes = [], []

    def tensor(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def layer_norm(x: str, tag: str) -> str:
        centred = node("Sub", [x, node("ReduceMean", [x], f"{tag}.mean", axes=[-1])], f"{tag}.sub")
        two = tensor(f"{tag}.two", np.array(2.0))
        variance = node(
            "ReduceMean", [node("Pow", [centred, two], f"{tag}.pow")], f"{tag}.var", axes=[-1]
        )
        eps = tensor(f"{tag}.eps", np.array(1e-5))
        std = node("Sqrt", [node("Add", [variance, eps], f"{tag}.addeps")], f"{tag}.sqrt")
        scaled = node(
            "Mul",
            [node("Div", [centred, std], f"{tag}.div"), tensor(f"{tag}.gamma", np.ones(hidden))],
            f"{tag}.mul",
        )
        return node("Add", [scaled, tensor(f"{tag}.beta", np.zeros(hidden))], f"{tag}.out")

    def gelu(x: str, tag: str) -> str:
        erf = node(
            "Erf",
            [node("Div", [x, tensor(f"{tag}.root2", np.array(1.4142135))], f"{tag}.div")],
            f"{tag}.erf",
        )
        shifted = node("Add", [erf, tensor(f"{tag}.one", np.array(1.0))], f"{tag}.add")
        return node(
            "Mul",
            [node("Mul", [x, shifted], f"{tag}.mul"), tensor(f"{tag}.half", np.array(0.5))],
            f"{tag}.out",
        )

    h = "x"
    for block in range(2):
        up = node(
            "MatMul",
            [h, tensor(f"w{block}.up", rng.normal(scale=0.1, size=(hidden, 4 * hidden)))],
            f"mm{block}.up",
        )
        up = gelu(
            node(
                "Add",
                [up, tensor(f"b{block}.up", rng.normal(scale=0.1, size=4 * hidden))],
                f"bias{block}.up",
            ),
            f"gelu{block}",
        )
        down = node(
            "MatMul",
            [up, tensor(f"w{block}.down", rng.normal(scale=0.1, size=(4 * hidden, hidden)))],
            f"mm{block}.down",
        )
        down = node(
            "Add",
            [down, tensor(f"b{block}.down", rng.normal(scale=0.1, size=hidden))],
            f"bias{block}.down",
        )
        h = layer_norm(node("Add", [down, h], f"residual{block}"), f"ln{block}")
    node("Softmax", [h], "probs", axis=-1)
    graph = helper.make_graph(
        nodes, "tiny_transformer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, hidden])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 16, hidden])],
        initializers,
    )  # fmt: skip
    return save_graph(path, graph, {"": 13})
