"""Accuracy repair: bias correction folds the per-channel mean shift that static int8 adds
to a layer's output back into its bias, on the calibration data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import candidate, load_report

from gate.demo.build import mlp_model


def shifted_mlp(folder: Path) -> Path:
    """A layer whose small weights all round to zero next to one large column.

    With one weight scale for the whole tensor (per-tensor int8), every weight of
    columns 1..15 is under half a step and becomes 0, so on inputs near 1 those
    channels lose their whole mean; the second layer never reads column 0. The loss
    is a shift of the mean, the same on every sample: what bias correction removes.
    """
    rng = np.random.default_rng(3)
    w0 = np.full((64, 16), 0.015) + rng.normal(scale=0.001, size=(64, 16))
    w0[:, 0] = 5.0
    b0 = np.zeros(16)
    w1 = rng.normal(size=(16, 8))
    w1[0, :] = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.onnx"
    onnx.save_model(mlp_model([(w0, b0), (w1, np.zeros(8))]), str(model))
    for name, count in (("calibration", 32), ("validation", 64)):
        x = 1.0 + 0.05 * rng.normal(size=(count, 64))
        np.savez(folder / f"{name}.npz", x=x.astype(np.float32))
    return model


def _policy(folder: Path, candidates: list[dict], shape: list[int] | None = None) -> Path:
    policy = {
        "version": 1,
        "model": {"path": "model.onnx"},
        "inputs": {"x": {"shape": shape or [1, 64]}},
        "data": {"calibration": "calibration.npz", "validation": "validation.npz"},
        "candidates": candidates,
        "budgets": [{"metric": "cosine_similarity", "min": 0.99}],
        "measure": {"max_seconds": 0.3, "min_runs": 20, "memory": False},
    }
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def test_bias_correction_removes_the_shift_static_int8_adds(tmp_path, gate_cli):
    folder = tmp_path / "m"
    shifted_mlp(folder)
    static = {
        "plugin": "static",
        "format": "qdq",
        "activation_type": "uint8",
        "weight_type": "int8",
    }
    policy = _policy(
        folder,
        [
            {"name": "plain", "quantize": static},
            {"name": "fast", "quantize": {**static, "bias_correction": "fast"}},
            {"name": "full", "quantize": {**static, "bias_correction": "full"}},
        ],
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q", "--keep-candidates")
    report = load_report(out)
    assert result.exit_code in (0, 1), result.stdout
    plain, fast, full = (candidate(report, name) for name in ("plain", "fast", "full"))
    assert plain["metrics"]["cosine_similarity"] < 0.9, plain["metrics"]
    assert plain["status"] == "rejected"
    for repaired in (fast, full):
        assert repaired["metrics"]["cosine_similarity"] >= 0.99, repaired["metrics"]
        assert repaired["status"] in ("passed", "rejected")  # timing aside, accuracy passes
        assert not any(
            b["metric"] == "cosine_similarity" and not b["passed"] for b in repaired["budgets"]
        )
        assert any(
            note.startswith("bias correction (") and "corrected 2 layer(s)" in note
            for note in repaired["notes"]
        ), repaired["notes"]
    # Fed the float input, each layer's own shift is removed (the last layer's too, whose
    # output ORT renames); layer by layer, what the layers before it leave as well.
    assert full["metrics"]["cosine_similarity"] >= fast["metrics"]["cosine_similarity"] > 0.999
    # The repair changes biases only: the int8 weights and the QDQ pattern are the same.
    ops = [
        [node.op_type for node in onnx.load(str(out / "candidates" / f"{name}.onnx")).graph.node]
        for name in ("plain", "fast")
    ]
    assert ops[0] == ops[1]


def test_candidates_auto_proposes_bias_correction_beside_plain_static(tmp_path):
    """What auto tries (the proposals; the first test builds and judges them)."""
    from gate.host.manager import get_host
    from gate.policy.loading import SearchSettings
    from gate.run.search import propose, search_context

    model = shifted_mlp(tmp_path / "m")
    context = search_context(
        model, {"cpu": {"arch": "x86_64"}}, "CPUExecutionProvider", True, "all"
    )
    trials = {t.name: t for t in propose(get_host(), context, SearchSettings())[0]}
    assert {"static-qdq", "static-qdq-bc", "static-qdq-bcf"} <= set(trials), sorted(trials)
    assert trials["static-qdq-bc"].recipe.quantize["bias_correction"] == "fast"
    assert trials["static-qdq-bcf"].recipe.quantize["bias_correction"] == "full"
    # The calibration grid: minmax, percentile and entropy, on a model this small.
    methods = {
        trial.recipe.quantize.get("calibration_method")
        for name, trial in trials.items() if name.startswith("static-qdq")
    }  # fmt: skip
    assert {None, "percentile", "entropy"} <= methods, methods
    # No Conv chain here, and no decoding tail: those variants are not offered.
    assert not {"static-qdq-cle", "static-qdq-tail"} & set(trials)


def test_bias_correction_on_a_qoperator_model_is_refused_before_anything_runs(tmp_path, gate_cli):
    folder = tmp_path / "m"
    shifted_mlp(folder)
    recipe = {"plugin": "static", "format": "qoperator", "bias_correction": "fast"}
    out = tmp_path / "out"
    policy = _policy(folder, [{"name": "qop-bc", "quantize": recipe}])
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 2, result.stdout
    report = load_report(out)
    assert report["candidates"] == [] and len(report["errors"]) == 1
    assert "bias_correction" in report["errors"][0] and "candidates[0]" in report["errors"][0]


def _save_image_model(graph: object, folder: Path, rng: np.random.Generator) -> Path:
    """The graph as model.onnx, with 16 calibration and 16 validation images [3, 16, 16]."""
    from onnx import helper

    folder.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(folder / "model.onnx"))
    for name in ("calibration", "validation"):
        np.savez(folder / f"{name}.npz", x=rng.normal(size=(16, 3, 16, 16)).astype(np.float32))
    return folder / "model.onnx"


def tiny_detector(folder: Path) -> Path:
    """Two Convs, then a YOLO-style decoding tail: Sigmoid scores, boxes scaled by a Mul,
    both joined by a Concat."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    weights = [
        numpy_helper.from_array(rng.normal(scale=0.3, size=(8, 3, 3, 3)).astype(np.float32), "w0"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b0"),
        numpy_helper.from_array(rng.normal(scale=0.3, size=(6, 8, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(6, np.float32), "b1"),
        numpy_helper.from_array(np.array([1, 6, -1], np.int64), "flat"),
        numpy_helper.from_array(np.array([2, 4], np.int64), "split"),
        numpy_helper.from_array(np.array(16.0, np.float32), "stride"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Reshape", ["c1", "flat"], ["flat1"], name="head_reshape"),
        helper.make_node("Split", ["flat1", "split"], ["scores_raw", "boxes_raw"], name="head_split", axis=1),
        helper.make_node("Sigmoid", ["scores_raw"], ["scores"], name="head_sigmoid"),
        helper.make_node("Mul", ["boxes_raw", "stride"], ["boxes"], name="head_mul"),
        helper.make_node("Concat", ["boxes", "scores"], ["y"], name="head_concat", axis=1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 256])],
        weights,
    )  # fmt: skip
    return _save_image_model(graph, folder, rng)


def test_a_detectors_decoding_tail_is_proposed_left_in_float(tmp_path, gate_cli):
    from gate.host.manager import get_host
    from gate.policy.loading import SearchSettings
    from gate.run.search import propose, search_context

    folder = tmp_path / "det"
    model = tiny_detector(folder)
    context = search_context(
        model, {"cpu": {"arch": "x86_64"}}, "CPUExecutionProvider", True, "all"
    )
    tail = ("head_reshape", "head_split", "head_sigmoid", "head_mul", "head_concat")
    assert context.decode_tail == tail
    trials, _ = propose(get_host(), context, SearchSettings())
    [placed] = [t for t in trials if t.name == "static-qdq-tail"]
    assert placed.recipe.quantize["nodes_to_exclude"] == list(tail)
    [per_channel] = [t for t in trials if t.name == "static-qdq-pc-tail"]
    assert per_channel.recipe.quantize["nodes_to_exclude"] == list(tail)
    assert per_channel.recipe.quantize["per_channel"] is True
    # Quantising the tail puts boxes and scores under one int8 scale: the search tries the
    # variants that leave it in float before those that quantise it.
    by_name = {t.name: t for t in trials}
    assert by_name["static-qdq"].accuracy_risk == pytest.approx(1 - 0.5 * 0.6)
    for calibrated in ("static-qdq-pct", "static-qdq-ent"):  # they quantise the tail too
        assert by_name[calibrated].accuracy_risk == pytest.approx(1 - 0.65 * 0.6)
    assert by_name["static-qdq-mm-pc"].accuracy_risk == pytest.approx(0.25)  # no tail in it
    best = max(
        (t for t in trials if t.recipe.quantize and t.recipe.quantize["plugin"] == "static"),
        key=lambda t: t.value(1.05),
    )
    assert best.name.endswith("-tail"), best.name
    # An MLP has no decoding tail, and is not offered the variant.
    mlp = search_context(shifted_mlp(tmp_path / "mlp"), {}, "CPUExecutionProvider", True, "all")
    assert mlp.decode_tail == ()
    assert "static-qdq-tail" not in {t.name for t in propose(get_host(), mlp, SearchSettings())[0]}

    # Built, the tail really runs in float: nothing it computes is quantised (only the last
    # Conv's own output is, where the tail begins).
    recipe = {"name": "tail", "quantize": {"plugin": "static", **placed.recipe.quantize}}
    policy = _policy(folder, [recipe], [1, 3, 16, 16])
    out = tmp_path / "out"
    gate_cli("run", policy, "-o", out, "-q", "--keep-candidates")
    built = onnx.load(str(out / "candidates" / "tail.onnx")).graph
    quantised = {n.input[0] for n in built.node if n.op_type == "QuantizeLinear"}
    heads = [n for n in built.node if n.name in tail]
    assert len(heads) == len(tail)
    assert not quantised & {output for n in heads for output in n.output}, quantised
    assert any(n.op_type == "QuantizeLinear" for n in built.node)  # the Convs are int8


def _same_function(model: Path, rewritten: Path, x: np.ndarray, initializer: str) -> np.ndarray:
    """Assert a rewrite computes what the model did on ``x``; the rewritten initializer."""
    import onnxruntime as ort

    before, after = (
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for path in (model, rewritten)
    )
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    return onnx.numpy_helper.to_array(
        next(t for t in onnx.load(str(rewritten)).graph.initializer if t.name == initializer)
    )


def conv_chain(folder: Path) -> Path:
    """Conv -> ReLU -> depthwise Conv -> ReLU -> 1x1 Conv, where the first Conv's channel 0
    is 40 times wider than the rest and the depthwise Conv scales it back: the float model
    is ordinary, but one int8 scale per weight tensor rounds the narrow channels away."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    w0 = rng.normal(scale=0.3, size=(8, 3, 3, 3))
    w0[0] *= 40.0
    b0 = rng.normal(scale=0.1, size=8)
    b0[0] *= 40.0
    dw = rng.normal(scale=0.5, size=(8, 1, 3, 3))
    dw[0] /= 40.0
    pw = rng.normal(scale=0.3, size=(4, 8, 1, 1))
    tensors = {"w0": w0, "b0": b0, "dw": dw, "dwb": np.zeros(8), "pw": pw, "pwb": np.zeros(4)}
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "dw", "dwb"], ["c1"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "pw", "pwb"], ["y"], name="pw"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()],
    )  # fmt: skip
    return _save_image_model(graph, folder, rng)


def test_cross_layer_equalisation_lets_a_conv_chain_keep_its_accuracy(tmp_path, gate_cli):
    from gate_plugins._equalization import equalize

    folder = tmp_path / "chain"
    model = conv_chain(folder)
    # The rewrite itself: the same function, channel ranges made equal.
    equalized = tmp_path / "equalized.onnx"
    assert equalize(model, equalized) == 2  # conv0 -> dw, dw -> pw
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    w0 = _same_function(model, equalized, x, "w0")
    ranges = np.abs(w0).reshape(8, -1).max(axis=1)
    assert ranges.max() / ranges.min() < 10  # was over 40

    static = {
        "plugin": "static",
        "format": "qdq",
        "activation_type": "uint8",
        "weight_type": "int8",
    }
    recipes = [
        {"name": "plain", "quantize": static},
        {"name": "cle", "quantize": {**static, "equalize": True}},
    ]
    out = tmp_path / "out"
    gate_cli("run", _policy(folder, recipes, [1, 3, 16, 16]), "-o", out, "-q")
    report = load_report(out)
    plain, cle = candidate(report, "plain"), candidate(report, "cle")
    assert plain["metrics"]["cosine_similarity"] < 0.99 <= cle["metrics"]["cosine_similarity"], (
        plain["metrics"],
        cle["metrics"],
    )
    assert "cross-layer equalisation: 2 Conv pair(s) rescaled before quantising" in cle["notes"]


def test_the_fallback_ranks_on_the_calibration_samples_that_lost_most(tmp_path):
    """A candidate that is exact on most inputs and wrong on a few (here it clips large
    outputs) is ranked on those few, not on an average the many dilute."""
    from onnx import TensorProto, helper

    from gate.run.sensitivity import SAMPLES, _exposed, worst_samples

    def model(path: Path, clip: bool) -> Path:
        nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu")]
        nodes.append(
            helper.make_node("Clip", ["r", "", "one"], ["y"], name="clip")
            if clip
            else helper.make_node("Identity", ["r"], ["y"], name="same")
        )
        graph = helper.make_graph(
            nodes, "m",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
        )  # fmt: skip
        built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        built.ir_version = 8
        onnx.save_model(built, str(path))
        return path

    original, clipped = model(tmp_path / "o.onnx", False), model(tmp_path / "c.onnx", True)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.uniform(0.0, 0.5, size=(1, 4)).astype(np.float32)} for _ in range(32)]
    lossy = [3, 9, 17, 30]
    for index in lossy:
        feeds[index] = {"x": np.full((1, 4), 5.0 + index, np.float32)}
    reference, _ = _exposed(original, tmp_path, "original")
    candidate_session, _ = _exposed(clipped, tmp_path, "candidate")
    chosen = worst_samples(original, reference, candidate_session, feeds)
    assert len(chosen) == SAMPLES
    picked = [next(i for i, feed in enumerate(feeds) if feed is sample) for sample in chosen]
    assert set(lossy) <= set(picked), picked
    assert picked == sorted(picked)  # in calibration order


def test_a_fallback_that_made_it_worse_steps_back_to_its_parent():
    """Group fallback: a revert that lost accuracy (errors that cancelled no longer do)
    is undone, and the next try starts from the parent with the next groups instead."""
    from gate.policy.loading import Budget, Recipe
    from gate.report.model import CandidateEntry
    from gate.run.scoring import Scoreboard
    from gate.run.search import Trial, fallback_trial, step_back

    root = Trial(Recipe("int8", {}, {"plugin": "dynamic"}), "proposed", 1.5)
    ranking = [(("a", "a_next"), 0.4), (("b",), 0.3), (("c",), 0.2), (("d",), 0.1)]
    first = fallback_trial(root, ranking, 1.5)
    assert first is not None and first.excluded_nodes == ("a", "a_next", "b")  # half the error
    assert first.name == "int8-x3" and first.derived_from == "int8" and first.parent == "int8"

    # int8-x3 turned out less accurate than int8: back to int8, without a's and b's groups.
    again = fallback_trial(root, step_back(ranking, {"a", "a_next", "b"}), 1.5, {"int8-x3"})
    assert again is not None and again.excluded_nodes == ("c",)  # the worst group left
    assert again.derived_from == "int8"
    # What made int8 worse stays quantised in every later descendant of it, and of them.
    from gate.run.search import known_worse

    trials = {t.name: t for t in (root, first, again)}
    made_worse = {"int8": {"a", "a_next", "b"}}
    assert known_worse(trials, made_worse, again.name) == {"a", "a_next", "b"}
    assert known_worse(trials, {again.name: {"c"}, **made_worse}, again.name) == {
        "a", "a_next", "b", "c"
    }  # fmt: skip
    assert known_worse(trials, {}, again.name) == set()
    # Two nodes excluded, like a earlier child would be: names never collide.
    taken = {"int8-x2"}
    assert fallback_trial(root, [(("c", "d"), 1.0)], 1.5, taken).name == "int8-x2b"

    # A placement variant's own exclusions (the decoding tail) stay excluded in its fallbacks.
    tail = Trial(
        Recipe("int8-tail", {}, {"plugin": "static", "nodes_to_exclude": ["concat", "sig"]}),
        "proposed",
        1.5,
    )
    child = fallback_trial(tail, [(("sig",), 0.5), (("conv",), 0.4)], 1.5)
    assert child is not None and child.recipe.quantize is not None
    assert child.recipe.quantize["nodes_to_exclude"] == ["concat", "sig", "conv"]
    assert child.excluded_nodes == ("concat", "sig", "conv") and child.name == "int8-tail-x3"

    # "Less accurate" is the first error-level accuracy budget's metric, either way round.
    policy = None
    for op, better, worse in ((">=", 0.99, 0.97), ("<=", 0.001, 0.01)):
        budget = Budget(
            "cosine_similarity" if op == ">=" else "max_abs_diff", op, 0.5, "error", "b"
        )
        scores = Scoreboard(policy, [Budget("size_mb", "<=", 5, "error", "s"), budget])  # type: ignore[arg-type]
        for name, value in (("parent", better), ("child", worse)):
            entry = CandidateEntry(name=name, recipe={}, session={}, notes=[])
            entry.metrics[budget.metric] = value
            scores.entries[name] = entry
        assert scores.less_accurate("child", "parent")
        assert not scores.less_accurate("parent", "child")


def test_bias_correction_copes_with_a_layer_reading_a_graph_output(tmp_path):
    """ORT renames a graph output's producer in the quantised model; the fast variant still
    finds the float input to the next layer and corrects both layers."""
    from gate_plugins._bias_correction import correct_biases
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    tensors = {
        "w0": rng.normal(scale=0.3, size=(4, 3, 3, 3)), "b0": np.full(4, 0.1),
        "w1": rng.normal(scale=0.3, size=(2, 4, 1, 1)), "b1": np.zeros(2),
    }  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["y0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["y0", "w1", "b1"], ["y"], name="conv1"),
    ]
    graph = helper.make_graph(
        nodes, "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
         (("y", [1, 2, 16, 16]), ("y0", [1, 4, 16, 16]))],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()],
    )  # fmt: skip
    model = _save_image_model(graph, tmp_path, rng)
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    with np.load(tmp_path / "calibration.npz") as data:
        samples = [{"x": data["x"][i : i + 1]} for i in range(len(data["x"]))]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(samples)

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.items, None)

    quantised = tmp_path / "q.onnx"
    quantize_static(str(model), str(quantised), Reader())
    corrected, unbiased, _ = correct_biases(model, quantised, iter(samples), "fast")
    assert (corrected, unbiased) == (2, 0)


def outlier_encoder(folder: Path, residual: bool = False) -> Path:
    """LayerNormalization -> two MatMuls (a query and a value projection), where the
    normalisation's channel 5 is 80 times wider than the rest and the weights read it
    hardly at all: the float model is ordinary, but one int8 scale for the activation
    rounds the other channels to a few steps (the outlier channels of real transformers)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(21)
    hidden = 32
    gamma = np.ones(hidden)
    gamma[5] = 80.0
    wq, wv = (rng.normal(scale=1 / np.sqrt(hidden), size=(hidden, hidden)) for _ in range(2))
    wq[5] /= 400.0
    wv[5] /= 400.0
    tensors = {"gamma": gamma, "beta": rng.normal(scale=0.1, size=hidden), "wq": wq, "wv": wv}
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["ln", "wv"], ["v"], name="v"),
        helper.make_node("Add", ["q", "v"], ["y" if not residual else "qv"], name="mix"),
    ]  # fmt: skip
    if residual:  # post-LN BERT: the normalised values also reach the residual Add
        nodes.append(helper.make_node("Add", ["qv", "ln"], ["y"], name="residual"))
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, hidden])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()],
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path)
    )
    for name, count in (("calibration", 32), ("validation", 24)):
        np.savez(
            folder / f"{name}.npz", x=rng.normal(size=(count, 1, 16, hidden)).astype(np.float32)
        )
    return path


def test_smooth_quant_moves_an_activation_outlier_into_the_weights(tmp_path, gate_cli):
    from gate_plugins._smoothing import smooth

    folder = tmp_path / "encoder"
    model = outlier_encoder(folder)
    calibration = np.load(folder / "calibration.npz")["x"]
    smoothed = tmp_path / "smoothed.onnx"
    samples = [{"x": sample} for sample in calibration]
    assert smooth(model, smoothed, samples, alpha=0.5) == (1, 2)  # one LayerNorm, both MatMuls
    # The same function: the division folded into the LayerNorm, the product into the weights.
    gamma = _same_function(model, smoothed, calibration[0], "gamma")
    assert gamma.max() / np.median(gamma) < 10  # the outlier channel was 80x the rest
    # Post-LN: the residual Add keeps the undivided values; a Mul divides on the MatMuls' side.
    residual = outlier_encoder(tmp_path / "post-ln", residual=True)
    assert smooth(residual, tmp_path / "post-ln.onnx", samples, alpha=0.5) == (1, 2)
    _same_function(residual, tmp_path / "post-ln.onnx", calibration[0], "gamma")
    added = [n.op_type for n in onnx.load(str(tmp_path / "post-ln.onnx")).graph.node]
    assert added.count("Mul") == 1 and added.index("Mul") == 1  # right after the LayerNorm

    static = {"plugin": "static", "format": "qdq", "activation_type": "uint8"}
    recipes = [
        {"name": "plain", "quantize": static},
        {"name": "smooth", "quantize": {**static, "smooth_quant": True}},
    ]
    out = tmp_path / "out"
    gate_cli("run", _policy(folder, recipes, [1, 16, 32]), "-o", out, "-q")
    report = load_report(out)
    plain, smooth_ = candidate(report, "plain"), candidate(report, "smooth")
    assert (
        plain["metrics"]["cosine_similarity"] < 0.99 <= smooth_["metrics"]["cosine_similarity"]
    ), (
        plain["metrics"],
        smooth_["metrics"],
    )
    assert (
        "SmoothQuant (alpha 0.5): 1 normalisation(s) smoothed into 2 MatMul(s) before quantising"
        in smooth_["notes"]
    )


def test_candidates_auto_proposes_smooth_quant_where_a_normalisation_feeds_matmuls(tmp_path):
    from gate.host.manager import get_host
    from gate.policy.loading import SearchSettings
    from gate.run.search import propose, search_context

    model = outlier_encoder(tmp_path / "m")
    context = search_context(
        model, {"cpu": {"arch": "x86_64"}}, "CPUExecutionProvider", True, "all"
    )
    trials = {t.name: t for t in propose(get_host(), context, SearchSettings())[0]}
    assert trials["static-qdq-sq"].recipe.quantize["smooth_quant"] is True
    plain = shifted_mlp(tmp_path / "mlp")  # no normalisation: nothing to smooth
    context = search_context(
        plain, {"cpu": {"arch": "x86_64"}}, "CPUExecutionProvider", True, "all"
    )
    assert "static-qdq-sq" not in {
        t.name for t in propose(get_host(), context, SearchSettings())[0]
    }


def test_reverted_layers_can_keep_int8_weights_for_a_smaller_file(tmp_path, gate_cli):
    """The layers the fallback (or nodes_to_exclude) leaves in float may keep int8 weights:
    float compute, nearly the float accuracy, a quarter of the weight bytes."""
    folder = tmp_path / "encoder"
    outlier_encoder(folder)
    static = {
        "plugin": "static", "format": "qdq", "activation_type": "uint8",
        "nodes_to_exclude": ["ln", "q", "v"],
    }  # fmt: skip
    recipes = [
        {"name": "float-weights", "quantize": static},
        {"name": "int8-weights", "quantize": {**static, "excluded_weights": "int8"}},
    ]
    out = tmp_path / "out"
    gate_cli("run", _policy(folder, recipes, [1, 16, 32]), "-o", out, "-q")
    report = load_report(out)
    floats, int8 = candidate(report, "float-weights"), candidate(report, "int8-weights")
    assert "2 reverted layer(s) keep int8 weights (computed in float)" in int8["notes"]
    assert int8["metrics"]["size_mb"] < floats["metrics"]["size_mb"] * 0.7
    assert int8["metrics"]["cosine_similarity"] >= 0.99, int8["metrics"]  # the budget
    assert int8["status"] == "passed", int8["outcome"]


def test_a_candidate_just_short_of_its_budget_reverts_a_little():
    """The fallback's step follows how far the candidate is from passing: a detector at
    mAP 0.949 against a 0.95 floor keeps a few nodes in float, one at 0.24 halves its
    error, so a near miss does not give back most of its speedup."""
    from types import SimpleNamespace

    from gate.policy.loading import Budget, Recipe
    from gate.report.model import CandidateEntry
    from gate.run.scoring import Scoreboard
    from gate.run.search import Trial, fallback_coverage, fallback_trial

    budget = Budget("det_map50_95", ">=", 0.95, "error", "default")
    scores = Scoreboard(SimpleNamespace(waivers=[], name="p"), [budget])  # type: ignore[arg-type]
    for name, value in (("original", 1.0), ("near", 0.949), ("far", 0.24), ("fine", 0.97)):
        entry = CandidateEntry(name=name, recipe={}, session={}, notes=[])
        entry.metrics["det_map50_95"] = value
        scores.entries[name] = entry
    assert scores.shortfall("near") == pytest.approx(0.001 / 0.051)
    assert scores.shortfall("far") == pytest.approx(0.71 / 0.76)
    assert scores.shortfall("fine") is None  # it passes
    assert fallback_coverage(scores.shortfall("near")) == 0.1
    assert fallback_coverage(scores.shortfall("far")) == 0.5
    assert fallback_coverage(None) == 0.5  # nothing to tell by: halve the error

    diffuse = [((f"conv{i}",), 1.0) for i in range(20)]  # twenty equal error sources
    root = Trial(Recipe("int8", {}, {"plugin": "static"}), "proposed", 1.8)
    near = fallback_trial(root, diffuse, 1.8, coverage=fallback_coverage(0.02))
    far = fallback_trial(root, diffuse, 1.8, coverage=fallback_coverage(0.93))
    assert near is not None and far is not None
    assert len(near.excluded_nodes) == 2 and len(far.excluded_nodes) == 10
    assert "10% of its quantisation error" in near.reason


def test_a_fallback_chain_stops_when_going_on_cannot_pay():
    """A chain that buys little accuracy for much speed is stopped before it spends the
    search's trials, and a fallback's own outcome does not write off its family."""
    from types import SimpleNamespace

    from gate.policy.loading import Budget, Recipe, SearchSettings
    from gate.report.model import CandidateEntry
    from gate.run.scoring import Scoreboard
    from gate.run.search import Search, Trial
    from gate.run.trials import SearchLoop
    from gate.stats import Estimate

    budget = Budget("det_map50_95", ">=", 0.95, "error", "default")
    scores = Scoreboard(SimpleNamespace(waivers=[], name="p"), [budget])  # type: ignore[arg-type]
    measured = {  # name: (mAP, speedup), as nudenet's tail chain on real photos measured
        "original": (1.0, 1.0), "tail": (0.902, 1.79), "tail-x140": (0.925, 1.07),
        "fast": (0.32, 1.79), "fast-x26": (0.846, 1.27),
        "flat": (0.90, 1.8), "flat-x10": (0.90, 1.6),
        "still": (0.833, 1.04), "still-x6": (0.833, 1.05),
        "near": (0.949, 1.84), "near-x3": (0.949, 1.80),
        "noisy": (0.93, 1.30), "noisy-x2": (0.931, 1.28),
    }  # fmt: skip
    for name, (value, speedup) in measured.items():
        entry = CandidateEntry(name=name, recipe={}, session={}, notes=[])
        entry.metrics["det_map50_95"] = value
        scores.entries[name] = entry
        scores.estimates[name] = {"speedup": Estimate(speedup, speedup * 0.98, speedup * 1.02, 100)}
    search = Search([], SearchSettings(), True, to_beat=1.05)
    trials = SimpleNamespace(scores=scores, full_steps=set())
    trials._step_coverage = lambda name: SearchLoop._step_coverage(trials, name)  # type: ignore[arg-type]

    def verdict(child: str, parent: str) -> str | None:
        recipe = Recipe(child, {}, {"plugin": "static"})
        return SearchLoop._cannot_pass_in_time(  # type: ignore[arg-type]
            trials, search, Trial(recipe, "fallback"), Trial(Recipe(parent, {}, {}), "proposed")
        )

    # 0.72x of speed for 0.023 of mAP; 0.025 still to go: it would pass at about 0.29x.
    assert "would reach the budget at about 0.29x" in verdict("tail-x140", "tail")
    # 0.52x for 0.526 of mAP, 0.104 to go: about 1.17x, still worth a try.
    assert verdict("fast-x26", "fast") is None
    assert "bought no accuracy" in verdict("flat-x10", "flat")
    # The same accuracy at no measurable cost (ppocr_rec's reverts): still no progress.
    assert "bought no accuracy" in verdict("still-x6", "still")
    # 0.001 short, a 10% step bought nothing: a coarse metric may not have moved yet, so
    # the next step reverts half the error rather than stopping.
    assert verdict("near-x3", "near") is None
    assert SearchLoop._step_coverage(trials, "near-x3") == 0.5  # type: ignore[arg-type]
    # 0.02x slower is within the timing noise: no projection from it.
    assert verdict("noisy-x2", "noisy") is None

    # A fallback missing its budget leaves its family's odds alone; a proposal does not.
    sibling = Trial(Recipe("other", {}, {"plugin": "static"}), "proposed", 1.4, 0.3,
                    families=("static",))  # fmt: skip
    root = Trial(Recipe("root", {}, {"plugin": "static"}), "proposed", 1.4, 0.3,
                 families=("static",))  # fmt: skip
    queue = Search([sibling], SearchSettings(), True, to_beat=1.05)
    retry = Trial(Recipe("root-x3", {}, {"plugin": "static"}), "fallback", 1.3, 0.5,
                  families=("static",), parent="root")  # fmt: skip
    queue.observe(retry, "accuracy", 1.2)
    assert sibling.accuracy_risk == 0.3
    queue.observe(root, "accuracy", 1.5)
    assert sibling.accuracy_risk == pytest.approx(0.65)
