"""Detection: does the candidate still find the original's objects? (no labels needed)

Both models' heads are decoded the same way (``validation.detection``: ``layout``
``yolov8`` [B, 4+nc, N], ``yolov5`` [B, N, 5+nc] or ``nms`` [B, K, 6+]; ``box_format``;
suppression at ``iou``). The original's boxes scoring at least ``confidence`` are the
truth; the candidate's boxes down to ``min_score`` are scored against them with COCO's
mAP, and its boxes above ``confidence`` give recall, precision and mean IoU at IoU 0.5.
With ``data.labels`` boxes, both models are scored against the labels too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gate_plugins._boxes import Detections, agreement_at, average_precision, decode

from gate import VacuousData, ValidationContext, Validator, hookimpl

METRICS = {
    "det_map50_95": "COCO mAP@[.50:.95] of the candidate's detections, the original's (score >= confidence) as truth",
    "det_map50": "COCO mAP@.50 of the candidate's detections, the original's as truth",
    "det_recall": "share of the original's detections the candidate finds (same class, IoU >= 0.5)",
    "det_precision": "share of the candidate's detections above confidence that match one of the original's",
    "det_mean_iou": "mean IoU of the candidate's detections matched to the original's at IoU 0.5",
}
LABELLED_METRICS = {
    "labelled_map50_95": "COCO mAP@[.50:.95] of the candidate against the data.labels boxes",
    "labelled_map_drop": "the original's labelled mAP@[.50:.95] minus the candidate's",
}


def _detections(
    samples: Sequence[dict[str, np.ndarray]], output: str, options: Any
) -> list[Detections]:
    found: list[Detections] = []
    for sample in samples:
        found.extend(
            decode(
                sample[output],
                str(options.get("layout", "yolov8")),
                str(options.get("box_format", "cxcywh")),
                float(options.get("min_score", 0.001)),
                float(options.get("iou", 0.7)),
                int(options.get("max_detections", 300)),
            )
        )
    return found


def _reference(context: ValidationContext) -> list[Detections]:
    """The original's detections, decoded once per run."""
    cached = context.cache.get("detection")
    if cached is None or cached[0] is not context.reference:
        cached = (
            context.reference,
            _detections(context.reference, context.output, context.options),
        )
        context.cache["detection"] = cached
    return cached[1]


def _validate(context: ValidationContext) -> dict[str, float]:
    confidence = float(context.options.get("confidence", 0.25))
    truths = [found.above(confidence) for found in _reference(context)]
    boxes = sum(len(truth) for truth in truths)
    if boxes == 0:
        raise VacuousData(
            f"the original detects nothing (score >= {confidence:g}) on any of the "
            f"{len(truths)} validation images, so detection metrics cannot judge a candidate"
        )
    predicted = _detections(context.candidate, context.output, context.options)
    map50_95, map50 = average_precision(truths, predicted)
    recall, precision, mean_iou = agreement_at(truths, [p.above(confidence) for p in predicted])
    context.details["detections"] = {
        "original": boxes,
        "candidate": sum(len(p.above(confidence)) for p in predicted),
        "images": len(truths),
    }
    return {
        "det_map50_95": map50_95,
        "det_map50": map50,
        "det_recall": recall,
        "det_precision": precision,
        "det_mean_iou": mean_iou,
    }


def labelled_boxes(labels: dict[str, np.ndarray], images: int) -> list[Detections]:
    """The labels file's boxes, one Detections per validation image (score 1)."""
    found = []
    for index in range(images):
        keep = labels["sample"] == index
        boxes = labels["boxes"][keep].astype(np.float64)
        found.append(
            Detections(boxes, np.ones(len(boxes)), labels["classes"][keep].astype(np.int64))
        )
    return found


def _validate_labelled(context: ValidationContext) -> dict[str, float]:
    truths = labelled_boxes(context.labels, len(context.candidate))
    original = _reference(context)
    candidate = _detections(context.candidate, context.output, context.options)
    original_map, _ = average_precision(truths, original)
    candidate_map, _ = average_precision(truths, candidate)
    return {
        "labelled_map50_95": candidate_map,
        "labelled_map_drop": original_map - candidate_map,
    }


@hookimpl
def onnx_gate_validators() -> list[Validator]:
    return [
        Validator(
            name="detection",
            metrics=METRICS,
            validate=_validate,
            description="the original's detections found again: COCO mAP, recall, precision and IoU against them",
            tasks=frozenset({"detection"}),
        ),
        Validator(
            name="detection-labelled",
            metrics=LABELLED_METRICS,
            validate=_validate_labelled,
            needs_labels=True,
            description="COCO mAP against data.labels boxes, and its drop from the original",
            tasks=frozenset({"detection"}),
        ),
    ]
