"""Traits of published models that nobody here wrote, each rebuilt small: the gate must
run what ONNX Runtime runs, and take from the user's data what the model leaves open."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from gate.run.measure import BoundRunner, shape_fits
from tests.conftest import FAST_MEASURE, candidate, load_report, save_graph


def stale_output_crnn(path, classes: int = 12) -> None:
    """A CRNN-style head like a published text recogniser's: features [1, T, 16] through a
    MatMul, then a Reshape to [T, 1, classes] whose target shape is computed from the
    runtime shape - while the graph still declares its output as [1, seqlen]."""
    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.normal(size=(16, classes)).astype(np.float32), "w")
    width = numpy_helper.from_array(np.array([classes], dtype=np.int64), "width")
    first = numpy_helper.from_array(np.array(0, dtype=np.int64), "first")
    second = numpy_helper.from_array(np.array(1, dtype=np.int64), "second")
    # Both leading sizes from the runtime shape, as the published graph computes them:
    # ORT then keeps the declared [1, seqlen] and refuses last run's rank-3 buffer.
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Shape", ["logits"], ["dims"]),
            helper.make_node("Gather", ["dims", "second"], ["steps"], axis=0),
            helper.make_node("Unsqueeze", ["steps"], ["steps_1d"], axes=[0]),
            helper.make_node("Gather", ["dims", "first"], ["batch"], axis=0),
            helper.make_node("Unsqueeze", ["batch"], ["batch_1d"], axes=[0]),
            helper.make_node("Concat", ["steps_1d", "batch_1d", "width"], ["target"], axis=0),
            helper.make_node("Reshape", ["logits", "target"], ["probs"]),
        ],
        "crnn_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, "seqlen"])],
        [weight, width, first, second],
    )
    save_graph(path, graph, {"": 12}, ir_version=7)


def test_bound_runs_survive_an_output_declared_with_the_wrong_rank(tmp_path):
    """ONNX Runtime refuses its own output buffer from the previous run when the declared
    rank is wrong; the timing loop rebinds instead of failing on the second run."""
    import onnxruntime

    stale_output_crnn(tmp_path / "crnn.onnx")
    session = onnxruntime.InferenceSession(
        str(tmp_path / "crnn.onnx"), providers=["CPUExecutionProvider"]
    )
    feed = {"x": np.ones((1, 20, 16), np.float32)}
    binding = session.io_binding()  # the trap itself: a reused binding fails on run two
    binding.bind_cpu_input("x", feed["x"])
    binding.bind_output("probs")
    session.run_with_iobinding(binding)
    with pytest.raises(RuntimeError, match="Invalid rank for output: probs Got: 3 Expected: 2"):
        session.run_with_iobinding(binding)
    runner = BoundRunner(session, feed)
    assert all(runner.timed_run() > 0 for _ in range(3))
    assert runner.rebind
    assert runner.binding.get_outputs()[0].shape() == [20, 1, 12]
    assert shape_fits([1, "seqlen"], [1, 7]) and not shape_fits([1, "seqlen"], [7, 1, 12])


def test_outputs_that_fit_or_declare_no_shape_keep_their_buffers_between_runs(tmp_path):
    """Rebinding costs an allocation inside the timed region: only a declaration that is
    wrong pays it, not an ordinary model nor an output declared without a shape."""
    import onnxruntime

    for name, declared in (("fits", [1, "n"]), ("shapeless", None)):
        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, declared)],
        )
        save_graph(tmp_path / f"{name}.onnx", graph)
        session = onnxruntime.InferenceSession(
            str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"]
        )
        runner = BoundRunner(session, {"x": np.ones((1, 5), np.float32)})
        assert all(runner.timed_run() > 0 for _ in range(3))
        assert runner.rebind is False, name


def test_a_model_whose_declared_output_shape_is_wrong_is_gated_on_what_it_returns(
    tmp_path, gate_cli
):
    stale_output_crnn(tmp_path / "crnn.onnx")
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "validation.npz", x=rng.normal(size=(8, 1, 20, 16)).astype(np.float32))
    np.savez(tmp_path / "calibration.npz", x=rng.normal(size=(8, 1, 20, 16)).astype(np.float32))
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nmodel: {path: crnn.onnx}\n"
        "data: {validation: validation.npz, calibration: calibration.npz}\n"
        f"measure: {FAST_MEASURE}\n"
        "candidates:\n"
        "  - {name: dynamic-u8, quantize: {plugin: dynamic, weight_type: uint8}}\n"
        "  - {name: static, quantize: {plugin: static}}\n"
        "budgets: [{metric: cosine_similarity, min: 0.9}]\n"
    )
    out = tmp_path / "out"
    result = gate_cli("run", tmp_path / "policy.yaml", "-o", out)
    report = load_report(out)
    assert result.exit_code == 0, report["message"]
    assert "internal error" not in result.stdout + result.stderr
    assert report["model"]["outputs"][0]["declared_shape"] == [1, "seqlen"]
    assert report["model"]["outputs"][0]["shape"] == [20, 1, 12]
    assert report["model"]["outputs"][0]["shape_from"] == "onnxruntime"
    assert (
        "output 'probs' is declared [1, seqlen] but ONNX Runtime returns [20, 1, 12]; "
        "the gate judges what it returns" in report["warnings"]
    )
    # Every candidate was timed against the original, and the original against itself.
    for name in ("original", "dynamic-u8", "static"):
        entry = candidate(report, name)
        assert entry["status"] != "failed", entry["error"]
        assert entry["metrics"]["latency_ms.p50"] > 0
    assert candidate(report, "dynamic-u8")["metrics"]["cosine_similarity"] > 0.9


def stateful_vad(path) -> None:
    """A VAD-like model: audio [batch, samples] and a recurrent state [2, batch, 8]."""
    rng = np.random.default_rng(5)
    weight = numpy_helper.from_array(rng.normal(size=(512, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["features"]),
            helper.make_node("Add", ["state", "features"], ["state_out"]),
            helper.make_node("ReduceMean", ["state_out"], ["speech"], axes=[0, 2], keepdims=0),
        ],
        "vad",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 8]),
        ],
        [
            helper.make_tensor_value_info("speech", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "batch", 8]),
        ],
        [weight],
    )
    save_graph(path, graph, {"": 13})


@pytest.mark.parametrize("audio_shape", [(64, 1, 512), (64, 512)], ids=["samples", "stacked"])
def test_dynamic_dimensions_are_taken_from_the_data(tmp_path, gate_cli, audio_shape):
    stateful_vad(tmp_path / "vad.onnx")
    rng = np.random.default_rng(6)
    np.savez(
        tmp_path / "validation.npz",
        input=rng.uniform(-1, 1, size=audio_shape).astype(np.float32),
        state=np.zeros((64, 2, 1, 8), np.float32),
    )
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nmodel: {path: vad.onnx}\ndata: {validation: validation.npz}\n"
        f"measure: {FAST_MEASURE}\n"
        "candidates: [{name: basic, graph: {level: basic}}]\n"
        # random audio never crosses a VAD's threshold: judged as tensors, not as a stream
        "validation: {task: tensor}\n"
    )
    out = tmp_path / "out"
    result = gate_cli("run", tmp_path / "policy.yaml", "-o", out)
    report = load_report(out)
    assert result.exit_code == 0, report["message"]
    inputs = {spec["name"]: spec for spec in report["model"]["inputs"]}
    assert inputs["input"]["shape"] == [1, 512]
    assert inputs["input"]["shape_from"] == "data.validation"
    assert inputs["state"]["shape"] == [2, 1, 8]
    assert report["data"]["validation"]["samples"] == 64
    # Said once, as a note, not warned about: the data told the gate what it needed.
    assert not [w for w in report["warnings"] if "dynamic dimension" in w]
    assert any("taken from data.validation" in note for note in report["model"]["notes"])


def test_a_scalar_input_is_fed_one_value_per_sample(tmp_path, gate_cli):
    # silero-vad's `sr` is an int64 scalar: its validation array is one rate per sample,
    # and each sample's value must reach ONNX Runtime as a 0-d array, not a numpy scalar.
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["level"], axes=[1], keepdims=0),
            helper.make_node("Cast", ["sr"], ["rate"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["level", "rate"], ["scaled"]),
        ],
        "rate",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 512]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch"])],
    )
    save_graph(tmp_path / "rate.onnx", graph, {"": 13})
    rng = np.random.default_rng(8)
    np.savez(
        tmp_path / "validation.npz",
        input=rng.uniform(-1, 1, size=(16, 1, 512)).astype(np.float32),
        sr=np.full(16, 16000, np.int64),
    )
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nmodel: {path: rate.onnx}\ndata: {validation: validation.npz}\n"
        f"measure: {FAST_MEASURE}\n"
        "candidates: [{name: basic, graph: {level: basic}}]\n"
    )
    out = tmp_path / "out"
    result = gate_cli("run", tmp_path / "policy.yaml", "-o", out)
    report = load_report(out)
    assert result.exit_code == 0, report["message"]
    assert report["data"]["validation"]["samples"] == 16
    assert report["candidates"][0]["status"] == "passed"


def test_dynamic_dimensions_the_data_cannot_tell_are_warned_about(tmp_path, gate_cli):
    stateful_vad(tmp_path / "vad.onnx")
    np.savez(
        tmp_path / "calibration.npz",
        input=np.zeros((8, 1, 512), np.float32),
        state=np.zeros((8, 2, 1, 8), np.float32),
    )
    # Calibration alone still tells the shapes; an array of the wrong rank cannot.
    np.savez(
        tmp_path / "odd.npz",
        input=np.zeros((8, 1, 1, 512), np.float32),
        state=np.zeros((8, 2, 1, 8), np.float32),
    )
    base = f"version: 1\nmodel: {{path: vad.onnx}}\nmeasure: {FAST_MEASURE}\ncandidates: [{{name: basic, graph: {{level: basic}}}}]\n"
    (tmp_path / "calibration.yaml").write_text(base + "data: {calibration: calibration.npz}\n")
    (tmp_path / "odd.yaml").write_text(base + "data: {validation: odd.npz}\n")

    out = tmp_path / "out"
    assert gate_cli("run", tmp_path / "calibration.yaml", "-o", out, "-q").exit_code == 0
    report = load_report(out)
    assert [spec["shape_from"] for spec in report["model"]["inputs"]] == ["data.calibration"] * 2

    result = gate_cli("run", tmp_path / "odd.yaml", "-o", out)
    report = load_report(out)
    assert result.exit_code == 2
    assert (
        "input 'input' has dynamic dimension(s) batch, samples; measured with shape [1, 1]; "
        "data.validation holds shape [8, 1, 1, 512], which does not fit [batch, samples] "
        "(set inputs.input.shape to choose)" in report["warnings"]
    )
    assert any("array 'input' has shape [8, 1, 1, 512]" in line for line in report["errors"])


def test_onnxruntime_failing_while_timing_the_original_is_a_located_error(
    classifier, gate_cli, tmp_path, monkeypatch
):
    """Fault injection: ORT raising in the original's own timing block (as it did on a
    published CRNN) ends in one line naming the step and the model, not 'internal error'."""
    import gate.run.scoring

    def invalid_rank(*args, **kwargs):  # the candidate fails its own timing; then the original
        raise RuntimeError("Error in execution: Invalid rank for output: y Got: 3 Expected: 2")

    monkeypatch.setattr(gate.run.scoring, "time_pair", invalid_rank)
    policy = classifier.write_policy(
        {
            "candidates": [{"name": "basic", "graph": {"level": "basic"}}],
            "data": {"validation": "validation.npz"},
        }
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out)
    report = load_report(out)
    assert result.exit_code == 3
    assert report["message"] == (
        "the original model model.onnx could not be timed: RuntimeError: Error in execution: "
        "Invalid rank for output: y Got: 3 Expected: 2"
    )
    assert "internal error" not in result.stdout + result.stderr


def test_a_zipmap_output_is_left_out_and_the_tensors_are_judged(tmp_path, gate_cli):
    """scikit-learn converters add a ZipMap (a sequence of maps) beside the label, as
    ORT's own logreg_iris example does: the gate judges the tensor outputs and says so."""
    rng = np.random.default_rng(8)
    classifier = helper.make_node(
        "LinearClassifier",
        ["x"],
        ["label", "scores"],
        domain="ai.onnx.ml",
        coefficients=rng.normal(size=6).tolist(),
        intercepts=[0.1, 0.0, -0.1],
        classlabels_ints=[0, 1, 2],
        post_transform="SOFTMAX",
    )
    zipmap = helper.make_node(
        "ZipMap", ["scores"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]
    )
    maps = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(1, []))
    )
    graph = helper.make_graph(
        [classifier, zipmap],
        "logreg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_value_info("probabilities", maps),
        ],
    )
    save_graph(tmp_path / "logreg.onnx", graph, {"": 17, "ai.onnx.ml": 1})
    np.savez(tmp_path / "validation.npz", x=rng.normal(size=(16, 3, 2)).astype(np.float32))
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nmodel: {path: logreg.onnx}\ndata: {validation: validation.npz}\n"
        f"measure: {FAST_MEASURE}\ncandidates: [{{name: basic, graph: {{level: basic}}}}]\n"
    )
    out = tmp_path / "out"
    result = gate_cli("run", tmp_path / "policy.yaml", "-o", out)
    report = load_report(out)
    assert result.exit_code == 0, report["message"]
    assert [spec["name"] for spec in report["model"]["outputs"]] == ["label"]
    assert (
        "output(s) 'probabilities' (a sequence) are not tensors "
        "and are not judged; candidates are judged on label" in report["model"]["notes"]
    )
    assert candidate(report, "basic")["metrics"]["latency_ms.p50"] > 0

    # A new user's cosine budget cannot judge an integer label: the line says what can.
    (tmp_path / "cosine.yaml").write_text(
        (tmp_path / "policy.yaml").read_text()
        + "budgets: [{metric: cosine_similarity, min: 0.99}]\n"
    )
    assert gate_cli("run", tmp_path / "cosine.yaml", "-o", out).exit_code == 2
    assert load_report(out)["errors"] == [
        "cosine.yaml:6: budgets[0].metric: 'cosine_similarity' is not produced for output "
        "'label' (int64, shape [3]), which gives max_abs_diff, top1_agreement; choose one of "
        "those or another validation.output"
    ]


def test_inputs_sharing_a_dimension_must_agree_on_its_size(tmp_path, gate_cli):
    """Sized one by one (policy, data), two inputs can disagree on a shared 'batch'."""
    stateful_vad(tmp_path / "vad.onnx")
    np.savez(
        tmp_path / "validation.npz",
        input=np.zeros((8, 4, 512), np.float32),
        state=np.zeros((8, 2, 1, 8), np.float32),
    )
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nmodel: {path: vad.onnx}\ndata: {validation: validation.npz}\n"
        "candidates: [{name: basic, graph: {level: basic}}]\n"
    )
    out = tmp_path / "out"
    result = gate_cli("run", tmp_path / "policy.yaml", "-o", out)
    assert result.exit_code == 2
    assert (
        "policy.yaml:1: inputs.state.shape: dimension 'batch' is 1 for input 'state' (from "
        "data.validation) but 4 for input 'input' (from data.validation); the model shares "
        "it between them" in load_report(out)["errors"]
    )


def test_calibration_that_disagrees_with_validation_says_where_the_shape_came_from(
    tmp_path, gate_cli
):
    stateful_vad(tmp_path / "vad.onnx")
    np.savez(
        tmp_path / "validation.npz",
        input=np.zeros((8, 1, 512), np.float32),
        state=np.zeros((8, 2, 1, 8), np.float32),
    )
    np.savez(
        tmp_path / "calibration.npz",
        input=np.zeros((8, 1, 256), np.float32),
        state=np.zeros((8, 2, 1, 8), np.float32),
    )
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nmodel: {path: vad.onnx}\n"
        "data: {validation: validation.npz, calibration: calibration.npz}\n"
        "candidates: [{name: basic, graph: {level: basic}}]\n"
    )
    out = tmp_path / "out"
    assert gate_cli("run", tmp_path / "policy.yaml", "-o", out).exit_code == 2
    assert (
        "data.calibration: array 'input' has shape [8, 1, 256]; expected [samples, 1, 512] "
        "for input shape [1, 512] (taken from data.validation)" in load_report(out)["errors"]
    )


def test_an_array_read_as_stacked_samples_along_a_symbolic_axis_is_warned_about(tmp_path, gate_cli):
    """[20, 16] for an input [T, 16]: 20 samples of T=1, or one of T=20? The gate reads
    samples (as it always has) and warns, since the data cannot tell."""
    rng = np.random.default_rng(9)
    weight = numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "frames",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 4])],
        [weight],
    )
    save_graph(tmp_path / "frames.onnx", graph)
    np.savez(tmp_path / "validation.npz", x=rng.normal(size=(20, 16)).astype(np.float32))
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nmodel: {path: frames.onnx}\ndata: {validation: validation.npz}\n"
        f"measure: {FAST_MEASURE}\ncandidates: [{{name: basic, graph: {{level: basic}}}}]\n"
    )
    out = tmp_path / "out"
    assert gate_cli("run", tmp_path / "policy.yaml", "-o", out, "-q").exit_code == 0
    report = load_report(out)
    assert report["model"]["inputs"][0]["shape"] == [1, 16]
    assert (
        "input 'x': dynamic dimension(s) T taken from data.validation (shape [1, 16]; set "
        "inputs.x.shape to choose another): its array [20, 16] was read as 20 samples with "
        "T = 1" in report["warnings"]
    )
    assert report["data"]["validation"]["samples"] == 20


def test_paddle_style_unnamed_dimensions_are_sized_from_the_data_each_on_its_own(
    tmp_path, gate_cli
):
    """Paddle exports write -1 and '?' for every dynamic dimension: those name nothing, so
    two of them of different sizes (an image's height and width) are no clash."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "paddle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3, "?", "?"])],
    )
    save_graph(tmp_path / "paddle.onnx", graph)
    np.savez(tmp_path / "validation.npz", x=np.ones((4, 1, 3, 48, 192), np.float32))
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nmodel: {path: paddle.onnx}\ndata: {validation: validation.npz}\n"
        f"measure: {FAST_MEASURE}\ncandidates: [{{name: basic, graph: {{level: basic}}}}]\n"
    )
    out = tmp_path / "out"
    result = gate_cli("run", tmp_path / "policy.yaml", "-o", out)
    report = load_report(out)
    assert result.exit_code == 0, report["errors"]
    assert report["model"]["inputs"][0]["shape"] == [1, 3, 48, 192]
    assert report["model"]["inputs"][0]["declared_shape"] == [None, 3, None, None]


def test_a_reused_buffer_refused_after_a_passing_check_is_retried_rebound(tmp_path):
    """Fault injection over a real session: ORT reports [] for both 'no shape' and a
    scalar, so the first-run check can let a wrong declaration through; when ORT then
    refuses the reused buffer, the runner binds afresh instead of failing the block."""
    import onnxruntime

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    save_graph(tmp_path / "relu.onnx", graph)
    real = onnxruntime.InferenceSession(
        str(tmp_path / "relu.onnx"), providers=["CPUExecutionProvider"]
    )

    class RefusesReusedBuffers:
        def __init__(self) -> None:
            self.runs = 0

        def __getattr__(self, name):
            return getattr(real, name)

        def run_with_iobinding(self, binding):
            self.runs += 1
            if self.runs == 2:  # the first reuse of last run's buffer
                raise RuntimeError("Error in execution: Invalid rank for output: y")
            return real.run_with_iobinding(binding)

    session = RefusesReusedBuffers()
    runner = BoundRunner(session, {"x": np.ones((1, 4), np.float32)})
    assert runner.timed_run() > 0 and runner.rebind is False
    assert runner.timed_run() > 0 and runner.rebind is True
    assert runner.timed_run() > 0 and session.runs == 4
