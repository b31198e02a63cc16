"""Exporters: a scikit-learn pipeline saved with joblib is exported with skl2onnx and gated
end to end - but only from a source the policy trusts, since loading it runs code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_report

pytest.importorskip("skl2onnx")


@pytest.fixture
def sklearn_pipeline(tmp_path: Path) -> Path:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 8)).astype(np.float32)
    labels = (features[:, 0] + features[:, 1] > 0).astype(np.int64)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(features, labels)
    joblib.dump(pipeline, tmp_path / "pipeline.joblib")
    np.savez(tmp_path / "validation.npz", input=features[:64])
    np.save(tmp_path / "labels.npy", labels[:64])
    return tmp_path / "pipeline.joblib"


def _policy(folder: Path, **model: object) -> Path:
    import json

    path = folder / "policy.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "model": {"path": "pipeline.joblib", **model},
                "inputs": {"input": {"shape": [1, 8]}},
                "data": {"validation": "validation.npz", "labels": "labels.npy"},
                "validation": {"output": "probabilities"},
                "candidates": [{"name": "basic", "graph": {"level": "basic"}}],
                "budgets": [
                    {"metric": "accuracy_drop", "max": 0.0},
                    {"metric": "runtime_speedup", "min": 0.001, "level": "warn"},
                ],
                "measure": {"max_seconds": 1, "min_runs": 40, "max_runs": 40, "memory": False},
            }
        )
    )
    return path


def test_a_pickled_model_is_refused_unless_the_policy_trusts_it(
    sklearn_pipeline, gate_cli, tmp_path
):
    out = tmp_path / "refused"
    result = gate_cli("run", _policy(sklearn_pipeline.parent), "-o", out, "-q")
    assert result.exit_code == 2
    [error] = load_report(out)["errors"]
    assert "model.path: loading pipeline.joblib with the 'sklearn' exporter runs code" in error
    assert "set model.trusted: true" in error
    assert "Traceback" not in result.stdout + result.stderr
    # the flag says it too, for one run
    assert (
        gate_cli(
            "run", _policy(sklearn_pipeline.parent), "--trust-model", "-o", out, "-q"
        ).exit_code
        == 0
    )


def test_a_trusted_sklearn_pipeline_is_exported_and_gated(sklearn_pipeline, gate_cli, tmp_path):
    out = tmp_path / "out"
    result = gate_cli("run", _policy(sklearn_pipeline.parent, trusted=True), "-o", out, "-q")
    assert result.exit_code == 0, result.stdout
    report = load_report(out)
    assert report["model"]["exporter"] == "sklearn"
    assert [o["name"] for o in report["model"]["outputs"]] == ["label", "probabilities"]
    original = next(c for c in report["candidates"] if c["name"] == "original")
    assert original["metrics"]["accuracy"] > 0.9  # the exported model classifies as trained
    assert (out / "model.onnx").is_file()
    # The framework model is the reference of the export, reported apart from the candidates.
    export = report["export"]
    assert export["exporter"] == "sklearn" and export["output"] == "probabilities"
    assert export["framework_vs_onnx"]["top1_agreement"] == 1.0
    assert export["framework_vs_onnx"]["cosine_similarity"] > 0.9999
    assert export["framework_vs_onnx"]["accuracy_drop"] == 0.0
    summary = (out / "summary.md").read_text()
    assert "Exported with `sklearn`; the export against the framework model" in summary
    # The first lever, measured: scikit-learn itself against ONNX Runtime in paired blocks.
    runtime = export["runtime"]
    assert runtime["framework"] == "sklearn" and runtime["rounds"] >= 5
    low, high = runtime["interval"]
    assert 0 < low <= runtime["runtime_speedup"] <= high
    assert runtime["framework_p50_ms"] > 0 and runtime["onnxruntime_p50_ms"] > 0
    assert runtime["threads"] == runtime["onnxruntime_threads"]
    assert runtime["onnxruntime_threads"] == report["target"]["intra_op_threads"]
    # framework latency over ONNX Runtime's: the paired ratio agrees with the two medians
    medians = runtime["framework_p50_ms"] / runtime["onnxruntime_p50_ms"]
    assert 0.7 < runtime["runtime_speedup"] / medians < 1.4
    assert original["metrics"]["runtime_speedup"] == pytest.approx(runtime["runtime_speedup"])
    basic = next(c for c in report["candidates"] if c["name"] == "basic")
    assert basic["metrics"]["runtime_speedup"] == pytest.approx(
        runtime["runtime_speedup"] * basic["metrics"]["speedup"]
    )
    row = next(b for b in report["budgets"] if b["metric"] == "runtime_speedup")
    assert row["status"] == "pass" and row["actual"] > 0
    assert f"ONNX Runtime runs the export {runtime['runtime_speedup']:.2f}x as fast as" in summary
    # A staged run's measure stage times the export without its framework: said up front.
    staged = gate_cli(
        "run", _policy(sklearn_pipeline.parent, trusted=True), "--stage", "build",
        "-o", tmp_path / "build", "-q",
    )  # fmt: skip
    assert staged.exit_code == 2
    assert "runtime_speedup: a staged run (--stage) does not measure it" in staged.stdout


TORCH_MODEL = """
import torch


def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    )
"""


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_a_torch_module_is_exported_by_either_path_and_held_to_the_framework(
    dynamo, gate_cli, tmp_path
):
    import json

    pytest.importorskip("torch")
    (tmp_path / "net.py").write_text(TORCH_MODEL)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "validation.npz", x=rng.normal(size=(16, 16)).astype(np.float32))
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "version": 1,
                "model": {
                    "path": "net.py",
                    "trusted": True,
                    "options": {
                        "example_inputs": {"x": {"shape": [1, 16]}},
                        "output_names": ["logits"],
                        "dynamo": dynamo,
                    },
                },
                "data": {"validation": "validation.npz"},
                "candidates": [{"name": "dyn", "quantize": {"plugin": "dynamic"}}],
                "measure": {"max_seconds": 1, "min_runs": 40, "max_runs": 40, "memory": False},
            }
        )
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 0, result.stdout
    report = load_report(out)
    assert report["model"]["exporter"] == "torch"
    assert [o["name"] for o in report["model"]["outputs"]] == ["logits"]
    export = report["export"]["framework_vs_onnx"]
    assert export["cosine_similarity"] > 0.9999 and export["top1_agreement"] == 1.0
    dyn = next(c for c in report["candidates"] if c["name"] == "dyn")
    assert dyn["status"] in ("passed", "rejected")  # judged against the export
    runtime = report["export"]["runtime"]
    assert runtime["framework"] == "torch" and "runtime_speedup" in dyn["metrics"]
    # Importing the file runs its code: refused without model.trusted.
    untrusted = json.loads(policy.read_text())
    untrusted["model"]["trusted"] = False
    policy.write_text(json.dumps(untrusted))
    assert gate_cli("run", policy, "-o", tmp_path / "refused", "-q").exit_code == 2
    # a .py factory needs example inputs to trace with: a usage error naming the option
    untrusted["model"]["trusted"] = True
    del untrusted["model"]["options"]["example_inputs"]
    policy.write_text(json.dumps(untrusted))
    result = gate_cli("run", policy, "-o", tmp_path / "no-examples", "-q")
    assert result.exit_code == 2
    assert "needs model.options.example_inputs" in result.stdout


def test_quantising_never_imports_torch_even_when_it_is_installed(tmp_path):
    """onnxruntime's pre-quantisation shape inference imports torch when it can (about a
    second per candidate); the gate keeps it out, and torch still imports afterwards."""
    import subprocess
    import sys

    pytest.importorskip("torch")
    script = f"""
import sys
from importlib.resources import files
from pathlib import Path
import numpy as np
from gate.host.manager import get_host
from gate.records import BuildContext

source = Path(str(files("gate.demo").joinpath("classifier.onnx")))
feeds = [{{"x": np.zeros((1, 256), np.float32)}}]
work = Path({str(tmp_path)!r})
context = BuildContext(work, {{"x": [1, 256]}}, lambda: iter(feeds), "file", "CPUExecutionProvider")
get_host().get("quantizer", "static").quantize(source, work / "static.onnx", {{}}, context)
print("torch imported:", "torch" in sys.modules, context.notes)
import torch
print("torch after:", torch.__version__)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "torch imported: False []" in done.stdout  # no note: pre-processing succeeded
    assert "torch after: 2." in done.stdout


def test_a_saved_torch_export_program_is_exported_and_gated(gate_cli, tmp_path):
    import json

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Tanh()).eval()
    program = torch.export.export(module, (torch.randn(1, 16),))
    torch.export.save(program, str(tmp_path / "net.pt2"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "validation.npz", x=rng.normal(size=(8, 16)).astype(np.float32))
    (tmp_path / "policy.json").write_text(
        json.dumps(
            {
                "version": 1,
                "model": {
                    "path": "net.pt2",
                    "trusted": True,
                    "options": {"example_inputs": {"x": {"shape": [1, 16]}}, "output_names": ["y"]},
                },
                "data": {"validation": "validation.npz"},
                "candidates": [{"name": "basic", "graph": {"level": "basic"}}],
                "measure": {"max_seconds": 1, "min_runs": 40, "max_runs": 40, "memory": False},
            }
        )
    )
    result = gate_cli("run", tmp_path / "policy.json", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stdout
    report = load_report(tmp_path / "out")
    assert report["model"]["exporter"] == "torch"
    assert report["export"]["framework_vs_onnx"]["cosine_similarity"] > 0.9999


def _tensorflow_policy(folder: Path, path: str, **options: object) -> Path:
    import json

    policy = folder / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "version": 1,
                "model": {"path": path, "trusted": True, "options": options},
                "inputs": {"features": {"shape": [1, 8]}},
                "data": {"validation": "validation.npz", "labels": "labels.npy"},
                "candidates": [{"name": "dyn", "quantize": {"plugin": "dynamic"}}],
                "budgets": [{"metric": "accuracy_drop", "max": 0.05}],
                "measure": {"max_seconds": 1, "min_runs": 40, "max_runs": 40, "memory": False},
            }
        )
    )
    return policy


@pytest.fixture(scope="module")
def keras_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained Keras classifier, saved as .keras, .h5 and a SavedModel."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pytest.importorskip("tf2onnx")
    keras = pytest.importorskip("keras")
    folder = tmp_path_factory.mktemp("keras")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(256, 8)).astype(np.float32)
    labels = (features[:, 0] - features[:, 2] > 0).astype(np.int64)
    inputs = keras.Input((8,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax", name="probs")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(features, labels, epochs=30, verbose=0)
    model.save(folder / "classifier.keras")
    model.save(folder / "classifier.h5")
    model.export(str(folder / "saved"), format="tf_saved_model", verbose=False)
    np.savez(folder / "validation.npz", features=features[:64])
    np.save(folder / "labels.npy", labels[:64])
    return folder


@pytest.mark.parametrize(
    "path",
    ["classifier.keras", "classifier.h5", "saved/saved_model.pb"],
    ids=["keras", "h5", "saved_model"],
)
def test_a_tensorflow_model_is_exported_and_held_to_the_framework(
    path, keras_classifier, gate_cli, tmp_path
):
    policy = _tensorflow_policy(keras_classifier, path)
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = load_report(out)
    assert report["model"]["exporter"] == "tensorflow"
    runtime = report["export"]["runtime"]  # the Keras model itself, timed against ONNX Runtime
    assert runtime["framework"] == "tensorflow" and runtime["runtime_speedup"] > 0
    # Keras names its output after the layer; a SavedModel signature after its own key.
    output = "output_0" if path.endswith(".pb") else "probs"
    assert [o["name"] for o in report["model"]["outputs"]] == [output]
    original = next(c for c in report["candidates"] if c["name"] == "original")
    assert original["metrics"]["accuracy"] > 0.9  # the export classifies as trained
    export = report["export"]
    assert export["exporter"] == "tensorflow"
    assert export["framework_vs_onnx"]["top1_agreement"] == 1.0
    assert export["framework_vs_onnx"]["cosine_similarity"] > 0.9999
    assert (out / "model.onnx").is_file()


def test_tensorflow_sources_are_refused_untrusted_and_bad_options_named(
    keras_classifier, gate_cli, tmp_path
):
    import json

    policy = _tensorflow_policy(keras_classifier, "classifier.keras")
    untrusted = json.loads(policy.read_text())
    untrusted["model"]["trusted"] = False
    policy.write_text(json.dumps(untrusted))
    out = tmp_path / "refused"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 2
    [error] = load_report(out)["errors"]
    assert "loading classifier.keras with the 'tensorflow' exporter runs code" in error
    # A signature the SavedModel lacks is named, with the ones it has.
    policy = _tensorflow_policy(keras_classifier, "saved/saved_model.pb", signature="predict")
    out = tmp_path / "signature"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 2, result.stdout
    [error] = load_report(out)["errors"]
    assert error.startswith(
        "exporter 'tensorflow' options: saved has no signature 'predict' "
        "(it has: serve, serving_default); set model.options.signature"
    )
    assert "Traceback" not in result.stdout + result.stderr
    policy = _tensorflow_policy(keras_classifier, "classifier.keras", output_names=["a", "b"])
    result = gate_cli("run", policy, "-o", tmp_path / "names", "-q")
    assert result.exit_code == 2
    assert (
        "exporter 'tensorflow' options: output_names has 2 name(s) but classifier.keras has "
        "1 output(s)" in result.stdout
    )
    # Options are checked against the exporter's schema before anything loads.
    policy = _tensorflow_policy(keras_classifier, "classifier.keras", opset="17")
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert "model.options.opset: '17' is not of type 'integer'" in result.stderr
