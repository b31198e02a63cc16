"""candidates: auto - what is proposed for which model and machine, the order it is tried in,
the search's limits, the accuracy fallback, and transformer fusion. All on real onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import FAST_MEASURE, candidate, load_report, save_graph, tiny_transformer
from onnx import TensorProto, helper, numpy_helper
from plugin_kit import use_plugin_modules, write_module
from test_run import assert_valid_report

from gate.graph import model_kind, op_counts, weight_share
from gate.host import get_host
from gate.records import SearchContext

QUANTISED_PLUGINS = ("dynamic", "static", "fp16")


def context(**changes) -> SearchContext:
    """A float, MatMul-heavy model on an AVX2 x86 CPU without VNNI, with calibration data."""
    base = dict(
        provider="CPUExecutionProvider",
        arch="x86_64",
        cpu_flags=frozenset({"avx", "avx2", "fma", "f16c"}),
        vnni=False,
        op_counts={"MatMul": 6, "Add": 6, "Relu": 3},
        weight_share={"MatMul": 0.98, "Add": 0.02},
        parameters=400_000,
        kind="mlp",
        quantized_ops=(),
        has_calibration=True,
        baseline_level="all",
    )
    return SearchContext(**{**base, **changes})


def proposals(plugin_kind: str, name: str, ctx: SearchContext):
    record = get_host().records[plugin_kind][name]
    return list(record.propose(ctx))


def test_proposals_follow_the_cpu_the_provider_and_the_model():
    # AVX2 without VNNI: uint8 weights first (ONNX Runtime's advice), int8 only in 7 bits.
    avx2 = {p.name: p for p in proposals("quantizer", "dynamic", context())}
    first = max(avx2.values(), key=lambda p: p.expected_speedup)
    assert first.name == "dynamic-u8" and first.options == {"weight_type": "uint8"}
    assert avx2["dynamic-s8-rr"].options == {"weight_type": "int8", "reduce_range": True}
    assert "VNNI" in first.reason
    # With VNNI, int8 weights are the fast path.
    vnni = proposals(
        "quantizer", "dynamic", context(vnni=True, cpu_flags=frozenset({"avx512_vnni"}))
    )
    assert max(vnni, key=lambda p: p.expected_speedup).options == {"weight_type": "int8"}
    # On a Conv-heavy model dynamic int8 is expected to be slower, and MatMul-only comes first.
    cnn = proposals(
        "quantizer", "dynamic",
        context(kind="cnn", weight_share={"Conv": 0.8, "MatMul": 0.2}),
    )  # fmt: skip
    best = max(cnn, key=lambda p: p.expected_speedup)
    assert best.options["op_types_to_quantize"] == ["MatMul", "Gemm"]
    assert all(p.expected_speedup < 1.0 for p in cnn if p is not best)

    # Static: u8 activations with 7-bit int8 weights on x86 without VNNI, s8s8 on Arm.
    static = {p.name: p for p in proposals("quantizer", "static", context())}
    assert static["static-qdq"].options == {
        "format": "qdq", "activation_type": "uint8", "weight_type": "int8", "reduce_range": True
    }  # fmt: skip
    assert static["static-qdq-mm"].options["op_types_to_quantize"] == ["MatMul", "Conv", "Gemm"]
    assert static["static-qdq"].accuracy_risk > static["static-qdq-mm"].accuracy_risk
    assert {"static-qdq-pc", "static-qdq-pct", "static-qop"} <= set(static)
    arm = proposals("quantizer", "static", context(arch="aarch64", cpu_flags=frozenset({"asimd"})))
    assert all(
        p.options["activation_type"] == "int8" and "reduce_range" not in p.options for p in arm
    )
    # Histogram calibration holds every activation: not proposed for big models.
    big = proposals("quantizer", "static", context(parameters=50_000_000))
    assert "static-qdq-pct" not in {p.name for p in big}

    # fp16 only where the provider benefits.
    (cpu_fp16,) = proposals("quantizer", "fp16", context())
    assert cpu_fp16.declined and "no avx512_fp16" in cpu_fp16.reason
    (gpu_fp16,) = proposals("quantizer", "fp16", context(provider="CUDAExecutionProvider"))
    assert not gpu_fp16.declined and gpu_fp16.expected_speedup > 1.5
    (dynamic_on_gpu,) = proposals("quantizer", "dynamic", context(provider="CUDAExecutionProvider"))
    assert dynamic_on_gpu.declined and "CPU provider only" in dynamic_on_gpu.reason

    # Without calibration data, or on a quantised model, quantisers decline with a reason.
    (uncalibrated,) = proposals("quantizer", "static", context(has_calibration=False))
    assert uncalibrated.declined and "no data.calibration" in uncalibrated.reason
    quantised = context(quantized_ops=("DynamicQuantizeLinear", "MatMulInteger"))
    for name in QUANTISED_PLUGINS:
        (declined,) = proposals("quantizer", name, quantised)
        assert declined.declined
        assert declined.reason.startswith(
            "the model is already quantised (it has DynamicQuantizeLinear"
        )

    # Graph levels: every level but the baseline's; transformer fusion only for transformers.
    levels = {p.name for p in proposals("graph_optimizer", "ort", context())}
    assert levels == {"graph-disabled", "graph-basic", "graph-extended", "graph-layout"}
    assert proposals("graph_optimizer", "transformer", context()) == []
    (fusion,) = proposals("graph_optimizer", "transformer", context(kind="transformer"))
    assert fusion.name == "transformer-fused" and not fusion.declined


def test_the_model_kind_and_weight_shares_are_read_off_the_graph(tmp_path):
    transformer = onnx.load(str(tiny_transformer(tmp_path / "t.onnx"))).graph
    counts = op_counts(transformer)
    share = weight_share(transformer)
    assert model_kind(counts, share) == "transformer"
    assert share["MatMul"] > 0.95  # LayerNorm scales are a rounding error next to the MatMuls

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(size=(8, 8, 3, 3)).astype(np.float32), f"k{i}")
        for i in range(3)
    ]
    nodes = [
        helper.make_node(
            "Conv", ["x" if i == 0 else f"c{i - 1}", f"k{i}"], [f"c{i}"], pads=[1, 1, 1, 1]
        )
        for i in range(3)
    ]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("c2", TensorProto.FLOAT, [1, 8, 16, 16])],
        weights,
    )  # fmt: skip
    assert model_kind(op_counts(graph), weight_share(graph)) == "cnn"
    assert weight_share(graph) == {"Conv": 1.0}


def test_auto_is_the_default_and_tries_the_most_promising_first(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy({"data": {"calibration": "calibration.npz"}})
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 0, result.stdout
    report = load_report(out)
    assert_valid_report(report)
    search = report["search"]
    assert search["mode"] == "auto" and search["stopped_by"] == "exhausted"
    tried = report["candidates"][1:]
    assert search["tried"] == len(tried) and search["not_tried"] == []
    assert [c["search"]["order"] for c in tried] == list(range(1, len(tried) + 1))
    assert all(c["search"]["origin"] == "proposed" and c["search"]["reason"] for c in tried)
    names = {c["name"] for c in tried}
    assert {"dynamic-u8", "static-qdq", "static-qdq-mm", "graph-disabled"} <= names
    # Expected value first: a quantised recipe, not a graph level that is rarely faster.
    assert tried[0]["recipe"]["quantize"] is not None
    assert search["context"]["model_kind"] == "mlp"
    assert search["context"]["weight_share"]["MatMul"] > 0.9
    fp16 = next((d for d in search["declined"] if d["name"] == "fp16"), None)
    if "avx512_fp16" not in search["context"]["cpu_flags"]:
        assert fp16 is not None and "float16" in fp16["reason"]
    summary = (out / "summary.md").read_text()
    assert "**Search** (candidates: auto)" in summary and "every candidate was tried" in summary
    assert f"search (auto): {len(tried)} candidate(s) tried" in result.stdout


def test_search_limits_are_kept_and_what_was_left_is_listed(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(
        {
            "data": {"calibration": "calibration.npz"},
            "search": {"max_trials": 2, "exclude": ["static"]},
        }
    )
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    report = load_report(out)
    search = report["search"]
    assert search["tried"] == 2 and len(report["candidates"]) == 3
    assert search["stopped_by"] == "max_trials"
    assert search["not_tried"] and all(
        item["not_tried"] == "search.max_trials (2) reached" for item in search["not_tried"]
    )
    names = [c["name"] for c in report["candidates"]] + [i["name"] for i in search["not_tried"]]
    assert not any(name.startswith("static") for name in names)  # search.exclude
    assert "search.max_trials reached" in (out / "summary.md").read_text()


def test_a_search_out_of_time_keeps_the_original_and_says_so(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy({"search": {"max_seconds": 0.000001}})
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 0
    report = load_report(out)
    assert report["search"]["stopped_by"] == "max_seconds" and report["search"]["tried"] == 0
    assert report["chosen"] == "original"
    assert report["decision"] == "no other candidate was measured: the original is kept"
    assert (out / "model.onnx").read_bytes() == classifier.model.read_bytes()
    assert all(
        item["not_tried"] == "search.max_seconds (1e-06) reached"
        for item in report["search"]["not_tried"]
    )


def test_the_accuracy_fallback_recovers_a_quantised_candidate(fragile_mlp, gate_cli, tmp_path):
    body = {
        "inputs": {"x": {"shape": [1, 256]}},
        "data": {
            "calibration": "calibration.npz",
            "validation": "validation.npz",
            "labels": "labels.npy",
        },
        "candidates": [{"name": "int8", "quantize": {"plugin": "dynamic", "weight_type": "int8"}}],
        "budgets": [
            {"metric": "top1_agreement", "min": 0.95},
            {"metric": "accuracy_drop", "max": 0.05},
        ],
        # Any chance of being faster is worth a retry here: the test is about accuracy.
        "selection": {"min_gain": 0.0},
        "search": {"max_fallbacks": 2},
    }
    policy = fragile_mlp.write_policy(body)
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q", "--keep-candidates")
    assert result.exit_code == 0, result.stdout
    report = load_report(out)
    assert_valid_report(report)
    int8 = candidate(report, "int8")
    assert int8["status"] == "rejected" and int8["metrics"]["top1_agreement"] < 0.5
    # The layer whose outlier column flattened the rest is found on the calibration data...
    worst = int8["sensitivity"][0]
    assert "matmul1" in worst["nodes"] and worst["added_error"] > 0.5
    # ...kept in float, and the retry keeps the predictions.
    rescued = [c for c in report["candidates"] if c["search"]["origin"] == "fallback"]
    assert rescued, report["search"]["log"]
    first = rescued[0]
    assert first["search"]["parent"] == "int8" and "matmul1" in first["search"]["excluded_nodes"]
    assert first["recipe"]["quantize"]["nodes_to_exclude"] == first["search"]["excluded_nodes"]
    assert first["status"] == "passed" and first["metrics"]["top1_agreement"] >= 0.95
    assert report["search"]["fallbacks"] == len(rescued)
    assert any("retrying as " + first["name"] in line for line in report["search"]["log"])
    model = onnx.load(str(out / "candidates" / f"{first['name']}.onnx"))
    ops = {node.name: node.op_type for node in model.graph.node}
    assert ops.get("matmul1") == "MatMul"  # really left in float
    assert "MatMulInteger" in ops.values()  # the rest still int8
    assert "accuracy fallbacks" in result.stdout

    # Turned off, a rejected candidate stays rejected.
    body["search"] = {"fallback": False}
    off = tmp_path / "off"
    gate_cli("run", fragile_mlp.write_policy(body, name="off.yaml"), "-o", off, "-q")
    report = load_report(off)
    assert [c["name"] for c in report["candidates"]] == ["original", "int8"]
    assert report["search"]["fallbacks"] == 0


def test_transformer_fusion_runs_before_quantising(tmp_path, gate_cli):
    tiny_transformer(tmp_path / "t.onnx")
    (tmp_path / "p.yaml").write_text(
        "version: 1\nmodel: {path: t.onnx}\n"
        f"measure: {FAST_MEASURE}\n"
        "candidates:\n"
        "  - {name: fused, rewrite: {plugin: transformer}}\n"
        "  - {name: fused-int8, rewrite: {plugin: transformer}, quantize: {plugin: dynamic}}\n"
    )
    out = tmp_path / "out"
    result = gate_cli("run", tmp_path / "p.yaml", "-o", out, "-q", "--keep-candidates")
    assert result.exit_code == 0, result.stdout
    report = load_report(out)
    for name in ("fused", "fused-int8"):
        item = candidate(report, name)
        assert item["status"] == "passed", item["error"]
        assert "fused 2 BiasGelu, 2 SkipLayerNormalization" in item["notes"]
        assert item["recipe"]["rewrite"] == {"plugin": "transformer"}
    ops = {n.op_type for n in onnx.load(str(out / "candidates" / "fused-int8.onnx")).graph.node}
    assert {"SkipLayerNormalization", "BiasGelu", "MatMulInteger"} <= ops


def test_fusion_skips_a_graph_it_cannot_fuse(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(
        {"candidates": [{"name": "fused", "rewrite": {"plugin": "transformer"}}]}
    )
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    fused = candidate(load_report(out), "fused")
    assert fused["status"] == "skipped"
    assert fused["error"].startswith("transformer fusion recognised no attention")


def test_auto_on_a_transformer_proposes_fusion_and_fused_quantisation(tmp_path):
    from gate.policy import SearchSettings
    from gate.search import Search, propose, search_context
    from gate.testbed import fingerprint

    model = tiny_transformer(tmp_path / "t.onnx")
    ctx = search_context(model, fingerprint(), "CPUExecutionProvider", False, "all")
    trials, _ = propose(get_host(), ctx, SearchSettings())
    names = {t.name for t in trials}
    assert "transformer-fused" in names
    combined = [t for t in trials if t.name.startswith("transformer-fused+dynamic")]
    assert combined and all(
        t.recipe.rewrite == {"plugin": "transformer", "model_type": "bert"}
        and t.recipe.quantize["plugin"] == "dynamic"
        for t in combined
    )
    assert set(combined[0].families) == {"transformer", "dynamic"}
    # Learning: a measured member moves its family's expectations, not the others'.
    search = Search(trials, SearchSettings(), True, to_beat=1.05)
    fused = next(t for t in trials if t.name == "transformer-fused")
    level = next(t for t in trials if t.name == "graph-basic")
    before = (combined[0].expected_speedup, level.expected_speedup)
    search.observe(fused, "passed", fused.expected_speedup * 0.5)
    assert combined[0].expected_speedup == pytest.approx(before[0] * 0.5)
    assert level.expected_speedup == before[1]


def test_a_built_model_onnxruntime_cannot_run_fails_alone(
    classifier, gate_cli, tmp_path, monkeypatch
):
    write_module(
        tmp_path,
        "broken_quantizer",
        """
        import onnx
        from onnx import helper
        from gate import Quantizer, hookimpl

        def quantize(source, destination, options, context):
            model = onnx.load(str(source))
            node = model.graph.node[0]
            node.op_type, node.domain = "NoSuchKernel", "com.example"
            model.opset_import.append(helper.make_opsetid("com.example", 1))
            onnx.save_model(model, str(destination))

        @hookimpl
        def onnx_gate_quantizers():
            return [Quantizer(name="broken", quantize=quantize)]
        """,
    )
    use_plugin_modules(monkeypatch, tmp_path, "broken_quantizer")
    policy = classifier.write_policy(
        {
            "candidates": [
                {"name": "broken", "quantize": {"plugin": "broken"}},
                {"name": "int8", "quantize": {"plugin": "dynamic"}},
            ]
        }
    )
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    report = load_report(out)
    broken = candidate(report, "broken")
    # Caught in the build's child process, which runs every new model once.
    assert broken["status"] == "failed" and broken["stage"] == "load"
    assert broken["error"].startswith("ONNX Runtime cannot run it:")
    assert "NoSuchKernel" in broken["error"]
    assert candidate(report, "int8")["status"] == "passed"


def test_auto_on_a_quantised_model_says_why_quantisers_are_not_tried(
    classifier, gate_cli, tmp_path
):
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(classifier.model), str(classifier.folder / "int8.onnx"))
    policy = classifier.folder / "q.yaml"
    policy.write_text(f"version: 1\nmodel: {{path: int8.onnx}}\nmeasure: {FAST_MEASURE}\n")
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    report = load_report(out)
    declined = {d["name"]: d["reason"] for d in report["search"]["declined"]}
    for name in ("dynamic", "static", "fp16"):
        assert declined[name].startswith("the model is already quantised (it has ")
    assert all(c["recipe"] is None or c["recipe"]["quantize"] is None for c in report["candidates"])
    assert report["search"]["context"]["quantized_ops"]


def test_search_settings_are_checked(classifier, gate_cli):
    bad = classifier.write_policy(
        {"search": {"exclude": ["int4"]}, "candidates": "all"}, name="bad.yaml"
    )
    result = gate_cli("check", bad)
    assert result.exit_code == 2
    assert "candidates: 'auto' was expected" in result.stderr
    bad = classifier.write_policy({"search": {"exclude": ["int4"]}}, name="bad2.yaml")
    result = gate_cli("check", bad)
    assert result.exit_code == 2
    assert (
        "search.exclude[0]: unknown quantizer or graph optimizer 'int4' (valid: " in result.stderr
    )
    good = classifier.write_policy({"candidates": "auto"}, name="good.yaml")
    assert "OK (candidates: auto" in gate_cli("check", good).stdout


def test_a_constant_weight_graph_is_quantised_by_auto(tmp_path, gate_cli):
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(64, 64)).astype(np.float32))
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w"], value=weight),
            helper.make_node("MatMul", ["x", "w"], ["y"]),  # unnamed: excluded by type:output
        ],
        "constant_weight",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
    )
    save_graph(tmp_path / "cw.onnx", graph)
    (tmp_path / "p.yaml").write_text(
        f"version: 1\nmodel: {{path: cw.onnx}}\nmeasure: {FAST_MEASURE}\nsearch: {{exclude: [ort]}}\n"
    )
    out = tmp_path / "out"
    assert gate_cli("run", tmp_path / "p.yaml", "-o", out, "-q").exit_code == 0
    report = load_report(out)
    assert report["search"]["context"]["weight_share"] == {"MatMul": 1.0}
    built = [c for c in report["candidates"] if c["name"].startswith("dynamic")]
    assert built and all(c["status"] != "failed" for c in built)
    assert all(
        "folded 1 Constant node(s) into initializers before quantising" in c["notes"] for c in built
    )
