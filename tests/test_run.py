"""End to end: policy in, verdict, reports and the chosen model out, on real onnxruntime."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import candidate, load_report, save_graph
from jsonschema import Draft202012Validator

from gate.policy.loading import REPORT_SCHEMA, load_schema


def assert_valid_report(report: dict) -> None:
    errors = sorted(Draft202012Validator(load_schema(REPORT_SCHEMA)).iter_errors(report), key=str)
    assert not errors, [e.message for e in errors]


def test_accuracy_budget_rejects_destructive_quantisation(fragile_classifier, gate_cli, tmp_path):
    policy = fragile_classifier.write_policy(
        {
            "data": {
                "calibration": "calibration.npz",
                "validation": "validation.npz",
                "labels": "labels.npy",
            },
            "budgets": [
                {"metric": "top1_agreement", "min": 0.95},
                {"metric": "accuracy_drop", "max": 0.02},
            ],
        }
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "--output-dir", out, "--quiet")
    report = load_report(out)
    assert_valid_report(report)

    static = candidate(report, "static-qdq")
    assert static["status"] == "rejected"
    assert static["outcome"].startswith("rejected: top1_agreement expected >= 0.95, found")
    faster = [
        c for c in report["candidates"]
        if c["status"] == "rejected" and c["recipe"]["quantize"] and c["metrics"]["speedup"] > 1
    ]  # fmt: skip
    if report["chosen"] == "original" and faster:
        assert "lost accuracy" in report["recommendation"]
    assert static["metrics"]["top1_agreement"] < 0.5  # quantisation visibly destroyed predictions
    assert static["metrics"]["accuracy_drop"] > 0.3
    assert any(r["metric"] == "top1_agreement" and not r["passed"] for r in static["budgets"])
    assert "static-qdq: error: top1_agreement expected >= 0.95, found" in result.stdout
    # The graph-only candidates keep every prediction, so the gate still passes with one of them.
    assert result.exit_code == 0
    assert report["verdict"] == "pass"
    chosen = candidate(report, report["chosen"])
    assert chosen["status"] == "passed" and chosen["metrics"]["top1_agreement"] == 1.0
    assert report["chosen"] in {"original"} | {
        f"graph-{lvl}" for lvl in ("disabled", "basic", "extended", "layout")
    }


def test_pass_writes_report_summary_and_chosen_model(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(
        {
            "data": {"validation": "validation.npz", "labels": "labels.npy"},
            "target": {"usd_per_hour": 0.5, "threads": 1},
            "candidates": [
                {"name": "ort-basic", "graph": {"level": "basic"}},
                {"name": "int8", "quantize": {"plugin": "dynamic", "weight_type": "int8"}},
            ],
            "budgets": [
                {"metric": "latency_ms.p95", "max": 1000},
                {"metric": "accuracy_drop", "max": 0.05},
                {"metric": "usd_per_million", "max": 0.000001, "level": "warn"},
            ],
        }
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = load_report(out)
    assert_valid_report(report)
    assert report["verdict"] == "pass" and report["exit_code"] == 0
    assert [c["name"] for c in report["candidates"]] == ["original", "ort-basic", "int8"]

    # The chosen model is written and its digest is the one reported.
    written = out / "model.onnx"
    assert hashlib.sha256(written.read_bytes()).hexdigest() == report["output_model"]["sha256"]
    chosen = candidate(report, report["chosen"])
    assert chosen["chosen"] is True
    if report["chosen"] == "original":
        assert written.read_bytes() == classifier.model.read_bytes()
    # ...and it runs.
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.zeros((1, 32), np.float32)})[0].shape == (1, 10)

    original = candidate(report, "original")
    metrics = original["metrics"]
    assert metrics["speedup"] == 1.0
    assert metrics["latency_ms.p50"] <= metrics["latency_ms.p95"] <= metrics["latency_ms.p99"]
    assert metrics["throughput_per_s"] > 0
    # Cost: the formula and its inputs are in the report, and the number follows from them.
    assert report["cost"]["usd_per_hour"] == 0.5
    expected = 0.5 / (metrics["throughput_per_s"] * 3600) * 1e6
    assert abs(metrics["usd_per_million"] - expected) < 1e-12
    int8 = candidate(report, "int8")
    assert int8["metrics"]["size_mb"] < 0.5 * original["metrics"]["size_mb"]
    low, high = int8["intervals"]["speedup"]
    assert low <= int8["metrics"]["speedup"] <= high
    # A warn-level miss is reported but does not fail the run.
    assert any("usd_per_million" in w for w in report["warnings"])

    summary = (out / "summary.md").read_text()
    assert "onnx-gate: PASS" in summary
    assert "| original |" in summary or "| **original** ⭐ |" in summary
    assert report["data"]["validation"]["source"] == "file"
    assert report["validation"]["synthetic_inputs"] is False
    assert report["baseline"]["session"] == {"graph_optimization_level": "all"}


def test_impossible_latency_budget_fails_with_reason(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(
        {
            "candidates": [{"name": "basic", "graph": {"level": "basic"}}],
            "budgets": [{"metric": "latency_ms.p50", "max": 0.000001}],
        }
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 1
    report = load_report(out)
    assert_valid_report(report)
    assert report["verdict"] == "fail" and report["chosen"] is None
    assert not (out / "model.onnx").exists()
    for item in report["candidates"]:
        assert item["status"] == "rejected"
        assert item["reasons"][0].startswith("latency_ms.p50 expected <= 1e-06, found ")
    assert "original: error: latency_ms.p50 expected <= 1e-06, found" in result.stdout
    assert "verdict: FAIL (exit 1)" in result.stdout


def test_a_model_chosen_by_an_earlier_run_is_removed_when_nothing_is_chosen(
    classifier, gate_cli, tmp_path
):
    out = tmp_path / "out"
    passing = classifier.write_policy({"candidates": [{"name": "b", "graph": {"level": "basic"}}]})
    assert gate_cli("run", passing, "-o", out, "-q").exit_code == 0
    assert (out / "model.onnx").is_file()
    failing = classifier.write_policy(
        {
            "candidates": [{"name": "b", "graph": {"level": "basic"}}],
            "budgets": [{"metric": "size_mb", "max": 0.001}],
        },
        name="failing.yaml",
    )
    assert gate_cli("run", failing, "-o", out, "-q").exit_code == 1
    assert not (out / "model.onnx").exists()


def test_a_users_own_model_onnx_is_never_deleted_or_overwritten(classifier, gate_cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"not written by onnx-gate")
    failing = classifier.write_policy({"budgets": [{"metric": "size_mb", "max": 0.001}]})
    assert gate_cli("run", failing, "-o", out, "-q").exit_code == 1
    assert (out / "model.onnx").read_bytes() == b"not written by onnx-gate"
    # Writing the reports into the model's own folder would overwrite the model: refused.
    original = classifier.model.read_bytes()
    result = gate_cli("run", classifier.write_policy({}), "-o", classifier.folder, "-q")
    assert result.exit_code == 2
    assert "holds the policy's model as model.onnx" in result.stdout
    assert classifier.model.read_bytes() == original


def test_without_data_inputs_are_synthesised_and_marked(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(
        {"candidates": [{"name": "dyn", "quantize": {"plugin": "dynamic"}}]}
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 0
    report = load_report(out)
    assert report["data"]["validation"]["source"] == "synthetic"
    assert report["validation"]["synthetic_inputs"] is True
    assert any("synthetic" in w for w in report["warnings"])
    assert any("dynamic dimension(s) batch" in w for w in report["warnings"])
    assert "synthetic inputs" in (out / "summary.md").read_text()


def test_a_different_baseline_level_is_the_original_and_the_default_level_a_candidate(
    classifier, gate_cli, tmp_path
):
    policy = classifier.write_policy(
        {
            "baseline": {"graph": {"level": "disabled"}},
            "search": {"exclude": ["dynamic", "static", "fp16", "transformer"]},
        }
    )
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    report = load_report(out)
    names = [c["name"] for c in report["candidates"]]
    assert sorted(names) == [
        "graph-all",
        "graph-basic",
        "graph-extended",
        "graph-layout",
        "original",
    ]
    assert report["baseline"]["session"] == {"graph_optimization_level": "disabled"}
    assert "graph_optimization_level=disabled" in report["baseline"]["description"]


def test_a_candidate_that_meets_a_budget_the_original_misses_is_chosen(
    classifier, gate_cli, tmp_path
):
    original_mb = classifier.model.stat().st_size / 1e6
    policy = classifier.write_policy(
        {
            "candidates": [
                {"name": "basic", "graph": {"level": "basic"}},
                {"name": "int8", "quantize": {"plugin": "dynamic"}},
            ],
            "budgets": [{"metric": "size_mb", "max": original_mb * 0.6}],
        }
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 0
    report = load_report(out)
    assert report["chosen"] == "int8"
    assert report["decision"].startswith("the original misses an error-level budget; int8")
    # The decision log says why each candidate won or lost.
    assert candidate(report, "int8")["outcome"] == "chosen"
    assert candidate(report, "basic")["outcome"].startswith("rejected: size_mb expected <= ")
    assert candidate(report, "original")["outcome"].startswith("rejected: size_mb expected <= ")
    assert report["recommendation"].startswith("Graph optimisation with dynamic quantisation")
    summary = (out / "summary.md").read_text()
    assert "Decision log" in summary and "- `basic`: rejected: size_mb" in summary
    assert "**Recommendation:** Graph optimisation with dynamic quantisation" in summary
    assert candidate(report, "original")["status"] == "rejected"
    assert candidate(report, "basic")["status"] == "rejected"
    written = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert (
        written
        == report["output_model"]["sha256"]
        == candidate(report, "int8")["artifact"]["sha256"]
    )
    assert "*int8" in result.stdout


def test_static_options_reach_onnxruntime(classifier, gate_cli, tmp_path, monkeypatch):
    import onnxruntime.quantization as quantization

    calls = []
    real = quantization.quantize_static

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(quantization, "quantize_static", spy)
    policy = classifier.write_policy(
        {
            "data": {"calibration": "calibration.npz"},
            "build": {"isolate": False},  # the spy lives in this process
            "candidates": [
                {
                    "name": "tuned",
                    "quantize": {
                        "plugin": "static", "format": "qoperator", "per_channel": True, "reduce_range": True,
                        "activation_type": "int8", "weight_type": "uint8", "calibration_method": "percentile",
                        "op_types_to_quantize": ["MatMul"], "nodes_to_exclude": ["matmul1"], "preprocess": False,
                        "extra_options": {"ActivationSymmetric": True},
                    },
                }
            ],
        }
    )  # fmt: skip
    assert gate_cli("run", policy, "-o", tmp_path / "out", "-q").exit_code == 0
    (kwargs,) = calls
    assert str(kwargs["quant_format"]) == str(quantization.QuantFormat.QOperator)
    assert kwargs["per_channel"] is True and kwargs["reduce_range"] is True
    assert kwargs["activation_type"] == quantization.QuantType.QInt8
    assert kwargs["weight_type"] == quantization.QuantType.QUInt8
    assert kwargs["calibrate_method"] == quantization.CalibrationMethod.Percentile
    assert kwargs["op_types_to_quantize"] == ["MatMul"] and kwargs["nodes_to_exclude"] == [
        "matmul1"
    ]
    # The user's extra options arrive; a float default type keeps fused graphs quantisable.
    assert kwargs["extra_options"] == {
        "ActivationSymmetric": True,
        "DefaultTensorType": onnx.TensorProto.FLOAT,
    }


def test_multi_input_model_with_integer_ranges(tmp_path, gate_cli):
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(5, 4), "table")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["rows"]),
            helper.make_node("ReduceSum", ["rows"], ["pooled"], axes=[1], keepdims=0),
            helper.make_node("Add", ["pooled", "x"], ["out"]),
        ],
        "embed",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
        [table],
    )
    save_graph(tmp_path / "embed.onnx", graph, {"": 12}, ir_version=7)
    base = "version: 1\nmodel: {path: embed.onnx}\nmeasure: {max_seconds: 0.05, min_runs: 5, memory: false}\n"
    (tmp_path / "in_range.yaml").write_text(
        base + "inputs:\n  ids: {shape: [2, 3], range: [0, 5]}\n  x: {shape: [2, 4]}\n"
    )
    out = tmp_path / "out"
    assert gate_cli("run", tmp_path / "in_range.yaml", "-o", out, "-q").exit_code == 0
    report = load_report(out)
    assert [i["shape"] for i in report["model"]["inputs"]] == [[2, 3], [2, 4]]
    assert report["measurement"]["batch"] == 2
    # Token ids beyond the table: ONNX Runtime refuses to run the original, and says why.
    (tmp_path / "out_of_range.yaml").write_text(base + "inputs:\n  ids: {range: [100, 200]}\n")
    assert gate_cli("run", tmp_path / "out_of_range.yaml", "-o", out, "-q").exit_code == 3
    assert load_report(out)["message"].startswith("ONNX Runtime cannot run the original model")


def test_outputs_with_nan_in_the_same_places_agree_and_the_report_stays_json(tmp_path, gate_cli):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["y"])],
        "log",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    save_graph(tmp_path / "log.onnx", graph)
    (tmp_path / "p.yaml").write_text(
        "version: 1\nmodel: {path: log.onnx}\nmeasure: {max_seconds: 0.05, min_runs: 5, memory: false}\n"
        "candidates: [{name: basic, graph: {level: basic}}]\n"
        "budgets: [{metric: max_abs_diff, max: 1e-6}, {metric: cosine_similarity, min: 0.999}, {metric: size_mb, max: 1, level: off}]\n"
    )
    out = tmp_path / "out"
    result = gate_cli("run", tmp_path / "p.yaml", "-o", out, "-q")
    assert result.exit_code == 0, result.stdout
    text = (out / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    report = json.loads(text)
    assert_valid_report(report)
    basic = candidate(report, "basic")
    assert basic["metrics"]["max_abs_diff"] == 0.0
    assert basic["metrics"]["cosine_similarity"] == pytest.approx(1.0)
    assert basic["budgets"][2]["level"] == "off"  # YAML 'off' is the level, not a boolean


def test_quantiser_options_reach_the_quantiser(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(
        {
            "data": {"calibration": "calibration.npz", "validation": "validation.npz"},
            "candidates": [
                {
                    "name": "qop",
                    "quantize": {
                        "plugin": "static",
                        "format": "qoperator",
                        "per_channel": True,
                        "reduce_range": True,
                        "calibration_method": "entropy",
                    },
                },
                {
                    "name": "qdq-first-only",
                    "quantize": {"plugin": "static", "nodes_to_exclude": ["matmul1"]},
                },
                {
                    "name": "matmul-only",
                    "quantize": {
                        "plugin": "dynamic",
                        "op_types_to_quantize": ["MatMul"],
                        "preprocess": False,
                    },
                },
                {"name": "half", "quantize": {"plugin": "fp16"}},
            ],
        }
    )
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q", "--keep-candidates").exit_code == 0
    report = load_report(out)
    assert [c["status"] for c in report["candidates"]].count("failed") == 0

    def op_types(name: str) -> list[str]:
        path = out / candidate(report, name)["artifact"]["path"]
        return [node.op_type for node in onnx.load(str(path)).graph.node]

    # QOperator format: quantised operators, no QuantizeLinear/DequantizeLinear pair around each weight.
    assert {"QGemm", "QLinearMatMul"} & set(op_types("qop"))
    assert any("nodes_to_exclude" in n for n in candidate(report, "qdq-first-only")["notes"])
    qdq = onnx.load(str(out / "candidates" / "qdq-first-only.onnx"))
    second = next(n for n in qdq.graph.node if n.name == "matmul1")
    assert not any(
        "DequantizeLinear" in n.op_type and n.output[0] == second.input[1] for n in qdq.graph.node
    )
    assert "QuantizeLinear" in op_types("qdq-first-only")
    assert "MatMulInteger" in op_types("matmul-only")
    half = onnx.load(str(out / "candidates" / "half.onnx"))
    assert half.graph.initializer[0].data_type == onnx.TensorProto.FLOAT16
    assert candidate(report, "half")["metrics"]["cosine_similarity"] > 0.99


def test_example_policy_paths_are_relative_to_the_policy_file(
    classifier, gate_cli, tmp_path, monkeypatch
):
    policy = classifier.write_policy(
        {
            "data": {"validation": "validation.npz"},
            "candidates": [{"name": "b", "graph": {"level": "basic"}}],
        }
    )
    monkeypatch.chdir(tmp_path)
    out = Path("elsewhere")
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    assert load_report(tmp_path / "elsewhere")["data"]["validation"]["path"] == "validation.npz"


def test_demo_runs_end_to_end(gate_cli, tmp_path):
    out = tmp_path / "demo"
    result = gate_cli("demo", "-o", out, "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = load_report(out)
    assert_valid_report(report)
    assert report["verdict"] == "pass"
    assert report["data"]["validation"] == {
        "source": "file",
        "path": "validation.npz",
        "samples": 200,
    }
    assert (out / "model.onnx").is_file()
    assert "verdict: PASS (exit 0)" in result.stdout
