"""Task-aware validation: detections, decoded strings, pooled embeddings, streams.

Each model is built here and run by onnxruntime; the "candidate" variants are the same
graphs with the damage a quantiser does written in (boxes shifted, one step read as
another class, padding tokens drifting, a state that decays faster).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from gate.host.manager import get_host
from gate.records import ValidationContext
from gate.run.runtime import run_all, run_stream
from gate.run.task import OPTION_DEFAULTS, Port, choose_task
from tests.conftest import FAST_MEASURE, load_report, save_graph

F = np.float32


def _head(path: Path, image: list[int], name: str, base: np.ndarray, slope: np.ndarray,
          metadata: dict[str, str] | None = None, input_name: str = "images") -> Path:  # fmt: skip
    """output = base + mean(image) * slope: bright images decide, dark or noisy ones do not."""
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "slope"], ["scaled"]),
        helper.make_node("Add", ["base", "scaled"], [name]),
    ]
    graph = helper.make_graph(
        nodes, "head",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, image)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(base.shape))],
        [numpy_helper.from_array(base.astype(F), "base"), numpy_helper.from_array(slope.astype(F), "slope")],
    )  # fmt: skip
    save_graph(path, graph)
    if metadata:
        model = onnx.load(str(path))
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(path))
    return path


BOXES = np.array([[16, 16, 10, 10], [40, 40, 12, 12], [20, 50, 8, 8]], dtype=F)


def _detector(path: Path, shift: float = 0.0, **kwargs: Any) -> Path:
    """A YOLOv8-style head [1, 4+2, 84] for a 64x64 image (84 = 8x8 + 4x4 + 2x2 cells)."""
    base = np.zeros((1, 6, 84), dtype=F)
    base[0, :4, :] = 32
    base[0, :4, :3] = BOXES.T + shift
    base[0, 4:, :] = -1
    slope = np.zeros_like(base)
    slope[0, 4, 0] = slope[0, 5, 1] = slope[0, 4, 2] = 2  # mean 0.9 -> score 0.8
    return _head(path, [1, 3, 64, 64], "output0", base, slope, **kwargs)


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return run_all(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), feeds)


def _judge(name: str, task: str, reference: Any, candidate: Any, feeds: Any = (), **options: Any) -> dict[str, float]:  # fmt: skip
    validator = get_host().records["validator"][name]
    context = ValidationContext(
        reference, candidate, next(iter(reference[0])), None, False,
        {**OPTION_DEFAULTS[task], **options}, task, feeds,
    )  # fmt: skip
    return validator.validate(context)


def _bright(samples: int, shape: list[int], name: str) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{name: rng.uniform(0.85, 0.95, size=shape).astype(F)} for _ in range(samples)]


# -- detection ----------------------------------------------------------------


def test_shifted_boxes_lower_map_while_cosine_stays_near_one(tmp_path: Path) -> None:
    feeds = _bright(4, [1, 3, 64, 64], "images")
    original = _outputs(_detector(tmp_path / "a.onnx"), feeds)
    shifted = _outputs(_detector(tmp_path / "b.onnx", shift=3.0), feeds)
    same = _judge(
        "detection", "detection", original, original, layout="yolov8", box_format="cxcywh"
    )
    assert same["det_map50_95"] == pytest.approx(1.0)
    assert same["det_recall"] == same["det_precision"] == pytest.approx(1.0)
    moved = _judge(
        "detection", "detection", original, shifted, layout="yolov8", box_format="cxcywh"
    )
    raw = _judge("agreement", "tensor", original, shifted)
    assert raw["cosine_similarity"] > 0.99  # the raw yardstick misses it
    assert moved["det_map50_95"] < 0.6  # 3 px on 8-12 px boxes fails the strict IoUs
    assert moved["det_recall"] < 1.0 or moved["det_mean_iou"] < 0.8


def test_map_matches_pycocotools() -> None:
    pycocotools = pytest.importorskip("pycocotools.cocoeval")
    from gate_plugins._boxes import Detections, average_precision
    from pycocotools.coco import COCO

    rng = np.random.default_rng(7)
    truths, predictions, images, annotations, results = [], [], [], [], []
    for image in range(6):
        count = int(rng.integers(1, 6))
        xy = rng.uniform(0, 200, size=(count, 2))
        wh = rng.uniform(10, 60, size=(count, 2))
        classes = rng.integers(0, 3, size=count)
        truth = np.concatenate([xy, xy + wh], axis=1)
        noisy = truth + rng.normal(scale=4, size=truth.shape)
        extra = rng.uniform(0, 200, size=(2, 4))
        extra[:, 2:] = extra[:, :2] + 20
        boxes = np.concatenate([noisy, extra])
        scores = rng.uniform(0.05, 1, size=len(boxes))
        predicted_classes = np.concatenate([classes, rng.integers(0, 3, size=2)])
        truths.append(Detections(truth, np.ones(count), classes))
        order = np.argsort(-scores)
        predictions.append(Detections(boxes[order], scores[order], predicted_classes[order]))
        images.append({"id": image, "width": 300, "height": 300})
        for box, cls in zip(truth, classes, strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": int(cls),
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
        for box, cls, score in zip(boxes, predicted_classes, scores, strict=True):
            results.append({"image_id": image, "category_id": int(cls), "score": float(score),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})  # fmt: skip
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c} for c in range(3)]}  # fmt: skip
    coco.createIndex()
    evaluation = pycocotools.COCOeval(coco, coco.loadRes(results), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    ours = average_precision(truths, predictions)
    assert ours[0] == pytest.approx(evaluation.stats[0], abs=1e-9)
    assert ours[1] == pytest.approx(evaluation.stats[1], abs=1e-9)


def _policy(folder: Path, model: Path, **body: Any) -> Path:
    path = folder / "policy.yaml"
    document = {
        "version": 1,
        "model": {"path": model.name},
        "measure": dict(FAST_MEASURE),
        "candidates": [{"name": "basic", "graph": {"plugin": "ort", "level": "basic"}}],
        **body,
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_detector_is_inferred_and_judged_by_map(tmp_path: Path, gate_cli: Any) -> None:
    model = _detector(
        tmp_path / "det.onnx", metadata={"task": "detect", "names": "{0: 'a', 1: 'b'}"}
    )
    images = np.random.default_rng(0).uniform(0.85, 0.95, size=(4, 3, 64, 64)).astype(F)
    np.savez(tmp_path / "photos.npz", images=images)
    policy = _policy(tmp_path, model, data={"validation": "photos.npz"})
    result = gate_cli("run", policy, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = load_report(tmp_path / "out")
    task = report["validation"]["task"]
    assert task["task"] == "detection" and "metadata_props task='detect'" in task["source"]
    original = report["candidates"][0]
    assert original["metrics"]["det_map50_95"] == pytest.approx(1.0)
    assert original["validation"]["detections"]["original"] == 12
    assert any("det_map50_95 >= 0.95" in warning for warning in report["warnings"])


def test_random_inputs_that_detect_nothing_are_refused(tmp_path: Path, gate_cli: Any) -> None:
    model = _detector(tmp_path / "det.onnx")
    policy = _policy(tmp_path, model, inputs={"images": {"range": [0.0, 0.2]}})
    result = gate_cli("run", policy, "-o", tmp_path / "out")
    assert result.exit_code == 2, result.stdout + result.stderr
    assert (
        "data.validation" in (result.stdout + result.stderr)
        and "detects nothing" in result.stdout + result.stderr
    )
    assert "Traceback" not in result.stdout + result.stderr
    report = load_report(tmp_path / "out")
    assert report["exit_code"] == 2 and "detects nothing" in report["message"] + " ".join(
        report["errors"]
    )


def test_declared_layout_that_does_not_fit_is_a_policy_error(
    classifier: Any, gate_cli: Any
) -> None:
    policy = classifier.write_policy(
        {"validation": {"task": "detection", "detection": {"layout": "yolov5"}}}
    )
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert "validation.detection.layout" in result.stdout + result.stderr
    assert (
        "detection layout yolov5 needs [batch, boxes, 5 + classes]" in result.stdout + result.stderr
    )
    assert "policy.yaml:" in result.stdout + result.stderr


# -- ctc ---------------------------------------------------------------------------


def _recogniser(path: Path, steps: list[int]) -> Path:
    """[1, 25, 5] scores for a 32x100 line: each step's class as given, blank elsewhere."""
    logits = np.zeros((1, 25, 5), dtype=F)
    for step, cls in enumerate(steps):
        logits[0, step, cls] = 4.0
    logits[0, len(steps) :, 0] = 4.0
    return _head(path, [1, 1, 32, 100], "probs", np.zeros_like(logits), logits, input_name="x")


def test_ctc_reads_strings_and_sees_one_changed_character(tmp_path: Path) -> None:
    feeds = _bright(3, [1, 1, 32, 100], "x")
    original = _outputs(_recogniser(tmp_path / "a.onnx", [1, 1, 0, 2, 2, 3, 0, 3]), feeds)
    changed = _outputs(_recogniser(tmp_path / "b.onnx", [1, 1, 0, 2, 4, 3, 0, 3]), feeds)
    (tmp_path / "keys.txt").write_text("a\nb\nc\nd\n")
    context_options = {"layout": "btc", "charset": str(tmp_path / "keys.txt")}
    same = _judge("ctc", "ctc", original, original, **context_options)
    assert same == {"ctc_exact_match": 1.0, "ctc_cer_mean": 0.0, "ctc_cer_max": 0.0}
    metrics = _judge("ctc", "ctc", original, changed, **context_options)
    assert metrics["ctc_exact_match"] == 0.0
    assert metrics["ctc_cer_mean"] == pytest.approx(1 / 4)  # "abcc" read as "abdcc": one insertion


def test_ctc_task_inferred_with_decoded_strings_in_report(tmp_path: Path, gate_cli: Any) -> None:
    model = _recogniser(tmp_path / "rec.onnx", [1, 0, 2, 0, 3])
    np.savez(tmp_path / "lines.npz", x=np.full((3, 1, 32, 100), 0.9, dtype=F))
    (tmp_path / "keys.txt").write_text("a\nb\nc\nd\n")
    np.save(tmp_path / "labels.npy", np.array(["abc", "abc", "abd"]))
    policy = _policy(
        tmp_path, model,
        data={"validation": "lines.npz", "labels": "labels.npy"},
        validation={"ctc": {"charset": "keys.txt"}},
    )  # fmt: skip
    result = gate_cli("run", policy, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = load_report(tmp_path / "out")
    assert report["validation"]["task"]["task"] == "ctc"
    original = report["candidates"][0]
    assert original["validation"]["decoded"][0] == {"original": "abc", "candidate": "abc"}
    assert original["metrics"]["ctc_accuracy"] == pytest.approx(2 / 3)


def test_recogniser_reading_nothing_is_refused(tmp_path: Path, gate_cli: Any) -> None:
    model = _recogniser(tmp_path / "rec.onnx", [1, 0, 2])
    np.savez(tmp_path / "lines.npz", x=np.zeros((3, 1, 32, 100), dtype=F))  # blank pages
    policy = _policy(tmp_path, model, data={"validation": "lines.npz"})
    result = gate_cli("run", policy, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "data.validation" in result.stdout and "empty string" in result.stdout


# -- embedding ---------------------------------------------------------------------


def _encoder(path: Path, padding_drift: float) -> Path:
    """Token embeddings [1, 8, 16]; the damaged variant drifts on padding tokens only."""
    table = np.random.default_rng(3).normal(size=(50, 16)).astype(F)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "maskf"], ["padding"]),
        helper.make_node("Unsqueeze", ["padding", "axis"], ["padding3"]),
        helper.make_node("Mul", ["padding3", "drift"], ["moved"]),
        helper.make_node("Add", ["tokens", "moved"], ["last_hidden_state"]),
    ]
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 8]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, 8])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, 8, 16])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array(1, F), "one"),
         numpy_helper.from_array(np.array([2], np.int64), "axis"),
         numpy_helper.from_array(np.full(16, padding_drift, F), "drift")],
    )  # fmt: skip
    return save_graph(path, graph)


def test_pooled_embedding_holds_while_hidden_states_drift(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feeds = []
    for length in (3, 5, 4, 6, 2, 7):
        mask = np.zeros((1, 8), np.int64)
        mask[0, :length] = 1
        feeds.append({"input_ids": rng.integers(1, 50, size=(1, 8)), "attention_mask": mask})
    original = _outputs(_encoder(tmp_path / "a.onnx", 0.0), feeds)
    drifted = _outputs(_encoder(tmp_path / "b.onnx", 3.0), feeds)
    raw = _judge("agreement", "tensor", original, drifted)
    assert raw["cosine_similarity"] < 0.9
    pooled = _judge(
        "embedding",
        "embedding",
        original,
        drifted,
        feeds,
        pooling="mean",
        mask_input="attention_mask",
    )
    assert pooled["emb_cosine_min"] == pytest.approx(1.0)
    assert pooled["emb_neighbour_overlap"] == pytest.approx(1.0)
    assert pooled["emb_spearman"] == pytest.approx(1.0)
    unmasked = _judge(
        "embedding", "embedding", original, drifted, feeds, pooling="mean", mask_input=None
    )
    assert unmasked["emb_cosine_min"] < 0.99  # without the mask the drift shows, as it should


def test_encoder_task_inferred_from_token_inputs() -> None:
    i64, f32 = np.dtype("int64"), np.dtype("float32")
    inputs = [Port("input_ids", (1, 8), i64), Port("attention_mask", (1, 8), i64)]
    choice = choose_task(
        "auto", {}, {}, inputs, [Port("last_hidden_state", (1, 8, 16), f32)], "last_hidden_state"
    )
    assert (choice.task, choice.options["pooling"], choice.options["mask_input"]) == (
        "embedding",
        "mean",
        "attention_mask",
    )
    logits = choose_task("auto", {}, {}, inputs, [Port("logits", (1, 2), f32)], "logits")
    assert logits.task == "classification"
    unsure = choose_task("auto", {}, {}, [Port("x", (1, 3), f32)], [Port("y", (1, 1), f32)], "y")
    assert unsure.task == "tensor" and "task unsure" in unsure.notes[0]


# -- stream ------------------------------------------------------------------------


def vad_model(path: Path, decay: float, silence: float = 0.0) -> Path:
    """prob = sigmoid(sum(stateN) + silence), stateN = decay * state + x @ W; a large
    negative ``silence`` makes a VAD that never hears speech."""
    weights = np.full((4, 8), 0.25, F)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["drive"]),
        helper.make_node("Mul", ["state", "decay"], ["kept"]),
        helper.make_node("Add", ["kept", "drive"], ["stateN"]),
        helper.make_node("ReduceSum", ["stateN", "axes"], ["summed"], keepdims=1),
        helper.make_node("Add", ["summed", "silence"], ["total"]),
        helper.make_node("Sigmoid", ["total"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array(decay, F), "decay"),
         numpy_helper.from_array(np.array([1], np.int64), "axes"),
         numpy_helper.from_array(np.array(silence, F), "silence")],
    )  # fmt: skip
    return save_graph(path, graph)


def _speech(steps: int = 24) -> np.ndarray:
    level = np.where((np.arange(steps) // 4) % 2 == 0, 0.6, -0.7).astype(F)
    return np.repeat(level[:, None, None], 4, axis=2)  # [steps, 1, 4]


def test_stream_carries_state_and_sees_a_faster_decay(tmp_path: Path) -> None:
    x = _speech()
    feeds = [{"x": step, "state": np.zeros((1, 8), F)} for step in x]
    sessions = [ort.InferenceSession(str(vad_model(tmp_path / f"{d}.onnx", d))) for d in (0.9, 0.5)]
    original, faster = (run_stream(s, feeds, {"stateN": "state"}) for s in sessions)
    assert not np.allclose(original[3]["stateN"], run_all(sessions[0], feeds)[3]["stateN"])
    metrics = _judge("stream", "stream", original, faster, threshold=0.5)
    assert metrics["stream_agreement"] < 1.0
    assert metrics["stream_max_abs_diff"] > 0.05
    same = _judge("stream", "stream", original, original, threshold=0.5)
    assert same == {"stream_max_abs_diff": 0.0, "stream_agreement": 1.0}


def test_stream_task_inferred_and_run_end_to_end(tmp_path: Path, gate_cli: Any) -> None:
    model = vad_model(tmp_path / "vad.onnx", 0.9)
    x = _speech()
    np.savez(tmp_path / "speech.npz", x=x[:, 0], state=np.zeros((len(x), 8), F))
    policy = _policy(tmp_path, model, data={"validation": "speech.npz"})
    result = gate_cli("run", policy, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = load_report(tmp_path / "out")
    task = report["validation"]["task"]
    assert task["task"] == "stream" and task["options"]["state"] == {"stateN": "state"}
    assert report["candidates"][0]["metrics"]["stream_agreement"] == 1.0
    assert report["candidates"][0]["validation"]["stream"]["steps"] == len(x)


# -- classification --------------------------------------------------------------------


def test_classifier_gets_top5_and_kl(classifier: Any, gate_cli: Any) -> None:
    policy = classifier.write_policy(
        {
            "data": {"validation": "validation.npz"},
            "candidates": [
                {"name": "s8", "quantize": {"plugin": "dynamic", "weight_type": "int8"}}
            ],
        }
    )
    result = gate_cli("run", policy, "-o", classifier.folder / "out")
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    report = load_report(classifier.folder / "out")
    assert report["validation"]["task"]["task"] == "classification"
    metrics = report["candidates"][1]["metrics"]
    assert {"top1_agreement", "top5_agreement", "kl_mean", "kl_p99", "cosine_similarity"} <= set(
        metrics
    )
    assert 0 <= metrics["kl_mean"] <= metrics["kl_p99"] + 1e-12
    assert any("top1_agreement >= 0.99" in warning for warning in report["warnings"])


def test_labelled_boxes_give_true_map_and_its_drop(tmp_path: Path) -> None:
    from gate.run.data import load_box_labels

    feeds = _bright(2, [1, 3, 64, 64], "images")
    original = _outputs(_detector(tmp_path / "a.onnx"), feeds)
    shifted = _outputs(_detector(tmp_path / "b.onnx", shift=4.0), feeds)
    xyxy = np.concatenate(
        [BOXES[:, :2] - BOXES[:, 2:] / 2, BOXES[:, :2] + BOXES[:, 2:] / 2], axis=1
    )
    np.savez(
        tmp_path / "boxes.npz",
        boxes=np.concatenate([xyxy, xyxy]),
        classes=np.array([0, 1, 0, 0, 1, 0]),
        sample=np.array([0, 0, 0, 1, 1, 1]),
    )
    labels = load_box_labels(tmp_path / "boxes.npz", 2, "data.labels")
    validator = get_host().records["validator"]["detection-labelled"]
    options = {**OPTION_DEFAULTS["detection"], "layout": "yolov8", "box_format": "cxcywh"}
    context = ValidationContext(
        original, shifted, "output0", labels, False, options, "detection", feeds
    )
    metrics = validator.validate(context)
    assert metrics["labelled_map50_95"] < 0.6
    assert metrics["labelled_map_drop"] == pytest.approx(1.0 - metrics["labelled_map50_95"])


def test_box_labels_out_of_range_name_the_file(tmp_path: Path) -> None:
    from gate.errors import PolicyError
    from gate.run.data import load_box_labels

    np.savez(
        tmp_path / "boxes.npz", boxes=np.zeros((1, 4)), classes=np.array([0]), sample=np.array([5])
    )
    with pytest.raises(
        PolicyError, match=r"data.labels: sample holds 5..5; data.validation has samples 0..1"
    ):
        load_box_labels(tmp_path / "boxes.npz", 2, "data.labels")


def test_a_declared_state_that_does_not_exist_is_refused_by_check(
    tmp_path: Path, gate_cli: Any
) -> None:
    model = vad_model(tmp_path / "vad.onnx", 0.9)
    policy = _policy(
        tmp_path, model, validation={"task": "stream", "stream": {"state": {"stateN": "hidden"}}}
    )
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert "validation.stream.state: the model has no input 'hidden' (inputs: x, state)" in (
        result.stdout + result.stderr
    )
