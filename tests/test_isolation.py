"""Candidates build in child processes: a crash, a hang or a memory hog fails that candidate only.
Preparation makes quantisers work on Constant-weight graphs and skip quantised models."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from conftest import candidate, load_report, save_graph
from onnx import TensorProto, helper, numpy_helper
from plugin_kit import use_plugin_modules, write_module
from test_run import assert_valid_report

FAULTY = """
    import os, signal, time
    import numpy as np
    from gate import Quantizer, hookimpl

    def segfault(source, destination, options, context):
        os.kill(os.getpid(), signal.SIGSEGV)

    def hang(source, destination, options, context):
        with open(os.environ["HANG_PID_FILE"], "w") as handle:
            handle.write(str(os.getpid()))
        time.sleep(600)

    def hog(source, destination, options, context):
        np.ones(4 * 1024**3 // 8 * 4)  # 16 GB

    @hookimpl
    def onnx_gate_quantizers():
        return [
            Quantizer(name="segfault", quantize=segfault),
            Quantizer(name="hang", quantize=hang),
            Quantizer(name="hog", quantize=hog),
        ]
"""


def test_crash_hang_and_memory_hog_fail_only_their_candidates(
    classifier, gate_cli, tmp_path, monkeypatch
):
    write_module(tmp_path, "faulty_plugin", FAULTY)
    use_plugin_modules(monkeypatch, tmp_path, "faulty_plugin")
    monkeypatch.setenv("HANG_PID_FILE", str(tmp_path / "hang.pid"))
    policy = classifier.write_policy(
        {
            "candidates": [
                {"name": "crashes", "quantize": {"plugin": "segfault"}},
                {"name": "hangs", "quantize": {"plugin": "hang"}},
                {"name": "hogs", "quantize": {"plugin": "hog"}},
                {"name": "fine", "quantize": {"plugin": "dynamic"}},
            ],
            # 8 s: a real dynamic quantisation in a fresh child imports onnxruntime.quantization
            # (about 2 s here) and must not be taken for a hang on a loaded 2-core runner.
            "build": {"timeout_s": 8, "memory_mb": 3000},
        }
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 0, result.stdout
    report = load_report(out)
    assert_valid_report(report)
    crashed, hung, hogged = (candidate(report, name) for name in ("crashes", "hangs", "hogs"))
    assert crashed["status"] == "failed" and crashed["error"].startswith(
        "the build process crashed (SIGSEGV)"
    )
    assert hung["status"] == "failed"
    assert hung["error"] == "timed out after 8 s (build.timeout_s); the build was killed"
    hung_pid = int((tmp_path / "hang.pid").read_text())
    with pytest.raises(ProcessLookupError):  # really gone, not left running
        os.kill(hung_pid, 0)
    assert report["build"] == {"isolate": True, "timeout_s": 8.0, "memory_mb": 3000}
    assert hogged["status"] == "failed" and "MemoryError" in hogged["error"]
    assert hogged["error"].endswith("(build.memory_mb is 3000: it may be too small)")
    assert candidate(report, "fine")["status"] == "passed"
    assert "crashes: failed to build: the build process crashed (SIGSEGV)" in result.stdout


def test_an_already_quantised_model_skips_quantisers_with_a_reason(classifier, gate_cli, tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    quantized = classifier.folder / "int8.onnx"
    quantize_dynamic(str(classifier.model), str(quantized))
    policy = classifier.folder / "q.yaml"
    policy.write_text(
        "version: 1\nmodel: {path: int8.onnx}\nmeasure: {min_runs: 80, max_runs: 80, min_seconds: 0, memory: false}\n"
        "candidates:\n  - {name: again-dynamic, quantize: {plugin: dynamic}}\n"
        "  - {name: again-static, quantize: {plugin: static}}\n  - {name: again-fp16, quantize: {plugin: fp16}}\n"
        "  - {name: basic, graph: {level: basic}}\n"
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 0
    assert "again-static: skipped: the model is already quantised" in result.stdout
    report = load_report(out)
    assert_valid_report(report)
    for name in ("again-dynamic", "again-static", "again-fp16"):
        item = candidate(report, name)
        assert item["status"] == "skipped"
        assert item["error"].startswith(
            "the model is already quantised (it has DynamicQuantizeLinear, MatMulInteger"
        )
    assert candidate(report, "basic")["status"] == "passed"
    assert "skipped" in (out / "summary.md").read_text()


def test_constant_node_weights_are_folded_so_the_quantiser_really_quantises(tmp_path, gate_cli):
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["w0"],
            value=numpy_helper.from_array(rng.normal(size=(16, 32)).astype(np.float32)),
        ),
        helper.make_node(
            "Constant",
            [],
            ["w1"],
            value=numpy_helper.from_array(rng.normal(size=(32, 4)).astype(np.float32)),
        ),
        helper.make_node("MatMul", ["x", "w0"], ["h"], name="matmul0"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w1"], ["y"], name="matmul1"),
    ]
    graph = helper.make_graph(
        nodes, "constant_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    save_graph(tmp_path / "cw.onnx", graph)
    (tmp_path / "p.yaml").write_text(
        "version: 1\nmodel: {path: cw.onnx}\nmeasure: {min_runs: 80, max_runs: 80, min_seconds: 0, memory: false}\n"
        "candidates: [{name: int8, quantize: {plugin: dynamic, preprocess: false}}]\n"
    )
    out = tmp_path / "out"
    assert gate_cli("run", tmp_path / "p.yaml", "-o", out, "-q", "--keep-candidates").exit_code == 0
    item = candidate(load_report(out), "int8")
    assert item["status"] == "passed"
    assert "folded 2 Constant node(s) into initializers before quantising" in item["notes"]
    op_types = [
        node.op_type for node in onnx.load(str(out / "candidates" / "int8.onnx")).graph.node
    ]
    assert op_types.count("MatMulInteger") == 2 and "Constant" not in op_types


def test_in_process_builds_remain_available(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(
        {
            "candidates": [{"name": "int8", "quantize": {"plugin": "dynamic"}}],
            "build": {"isolate": False},
        }
    )
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    report = load_report(out)
    assert candidate(report, "int8")["status"] == "passed"
    assert report["build"]["isolate"] is False


def test_plugins_registered_in_process_are_built_in_process(classifier, tmp_path):
    from gate import Quantizer, copy_model, hookimpl
    from gate.ci.suite import run_gate
    from gate.host.manager import get_host

    class Mine:
        @hookimpl
        def onnx_gate_quantizers(self):
            def quantize(source, destination, options, context):
                copy_model(source, destination)

            return [Quantizer(name="mine", quantize=quantize)]

    policy = classifier.write_policy(
        {"candidates": [{"name": "m", "quantize": {"plugin": "mine"}}]}
    )
    result = run_gate(policy, tmp_path / "out", host=get_host(plugins=[("mine", Mine())]))
    assert result.exit_code == 0
    assert candidate(result.report, "m")["status"] == "passed"
    assert result.report["build"]["isolate"] is False
    assert any("registered in this process (mine)" in w for w in result.report["warnings"])


def test_a_reporter_cannot_skip(classifier, gate_cli, tmp_path, monkeypatch):
    write_module(
        tmp_path,
        "skipping_reporter",
        """
        from gate import Reporter, SkipCandidate, hookimpl

        def write(report, output_dir):
            raise SkipCandidate("not today")

        @hookimpl
        def onnx_gate_reporters():
            return [Reporter(name="skipper", write=write)]
    """,
    )
    use_plugin_modules(monkeypatch, tmp_path, "skipping_reporter")
    out = tmp_path / "out"
    policy = classifier.write_policy({"candidates": [{"name": "b", "graph": {"level": "basic"}}]})
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    errors = load_report(out)["errors"]
    assert any(
        "reporter 'skipper' (plugin 'skipping_reporter') raised SkipCandidate" in e for e in errors
    )
