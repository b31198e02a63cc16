"""Bad models, bad data and failing parts: the documented exit code, a clear line, a report."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import load_report, save_graph
from onnx import TensorProto, helper
from plugin_kit import use_plugin_modules, write_module
from test_run import assert_valid_report


def test_corrupt_model_file_exits_3_with_report(classifier, gate_cli, tmp_path):
    data = classifier.model.read_bytes()
    classifier.model.write_bytes(data[: len(data) // 3])  # truncated download
    policy = classifier.write_policy({})
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 3
    report = load_report(out)
    assert report["verdict"] == "error" and report["exit_code"] == 3
    assert report["message"].startswith("model model.onnx is not a valid ONNX model: ")
    assert report["candidates"] == [] and report["chosen"] is None
    assert_valid_report(report)
    assert not (out / "model.onnx").exists()
    assert "onnx-gate: ERROR" in (out / "summary.md").read_text()


def test_random_bytes_through_the_real_console_script(classifier, tmp_path):
    classifier.model.write_bytes(np.random.default_rng(0).bytes(4096))
    policy = classifier.write_policy({})
    out = tmp_path / "out"
    script = shutil.which("onnx-gate", path=os.path.dirname(sys.executable))
    assert script, "the onnx-gate console script is installed next to the interpreter"
    completed = subprocess.run(
        [script, "run", str(policy), "-o", str(out), "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 3
    assert "Traceback" not in completed.stderr + completed.stdout
    assert "is not a valid ONNX model" in completed.stdout
    assert load_report(out)["exit_code"] == 3


def test_operator_without_a_kernel_is_named(tmp_path, gate_cli):
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    save_graph(tmp_path / "custom.onnx", graph, {"": 17, "com.example": 1})
    (tmp_path / "p.yaml").write_text("version: 1\nmodel: {path: custom.onnx}\n")
    out = tmp_path / "out"
    result = gate_cli("run", tmp_path / "p.yaml", "-o", out, "-q")
    assert result.exit_code == 3
    message = load_report(out)["message"]
    assert message.startswith("ONNX Runtime cannot run the original model:")
    assert "FancyOp" in message


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"y": np.zeros((4, 32), np.float32)},
            "data.validation: validation.npz lacks input(s) x (has: y)",
        ),
        (
            {"x": np.zeros((4, 31), np.float32)},
            "data.validation: array 'x' has shape [4, 31]; expected [samples, 1, 32] for input shape [1, 32]",
        ),
        (
            {"x": np.zeros((4, 32), np.complex64)},
            "data.validation: array 'x' is complex64; the input is float32",
        ),
        (
            {"x": np.full((4, 32), np.nan, np.float32)},
            "data.validation: array 'x' has NaN or Inf values in 4 sample(s)",
        ),
        ({"x": np.zeros((0, 32), np.float32)}, "data.validation: validation.npz holds no samples"),
    ],
)
def test_data_that_does_not_fit_the_model(classifier, gate_cli, tmp_path, arrays, message):
    np.savez(classifier.folder / "validation.npz", **arrays)
    policy = classifier.write_policy({"data": {"validation": "validation.npz"}})
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 2
    assert message in load_report(out)["errors"]


def test_pickled_npz_is_refused(classifier, gate_cli, tmp_path):
    np.savez(classifier.folder / "validation.npz", x=np.array([{"a": 1}], dtype=object))
    policy = classifier.write_policy({"data": {"validation": "validation.npz"}})
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 2
    assert "cannot read validation.npz as .npz" in load_report(out)["message"]


def test_labels_that_do_not_fit(classifier, gate_cli, tmp_path):
    np.save(classifier.folder / "labels.npy", np.zeros(3, np.int64))
    policy = classifier.write_policy(
        {"data": {"validation": "validation.npz", "labels": "labels.npy"}}
    )
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 2
    assert "data.labels: 3 labels for 64 validation samples" in load_report(out)["errors"]


def test_unwritable_output_directory(classifier, gate_cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = gate_cli("run", classifier.write_policy({}), "-o", blocker / "out", "-q")
    assert result.exit_code == 2
    assert "is not writable" in result.stdout


def test_a_reporter_that_raises_does_not_lose_report_json(
    classifier, gate_cli, tmp_path, monkeypatch
):
    write_module(
        tmp_path,
        "bad_reporter",
        """
        from gate import Reporter, hookimpl

        def write(report, output_dir):
            raise OSError("disk full")

        @hookimpl
        def onnx_gate_reporters():
            return [Reporter(name="bad", write=write)]
    """,
    )
    use_plugin_modules(monkeypatch, tmp_path, "bad_reporter")
    out = tmp_path / "out"
    result = gate_cli(
        "run",
        classifier.write_policy({"candidates": [{"name": "b", "graph": {"level": "basic"}}]}),
        "-o",
        out,
        "-q",
    )
    assert result.exit_code == 0
    report = load_report(out)
    assert (
        "reporter 'bad' (plugin 'bad_reporter') failed to write: OSError: disk full"
        in report["errors"]
    )
    assert (out / "summary.md").is_file()
