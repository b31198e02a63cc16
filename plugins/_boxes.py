"""Boxes for the detection validator: decoding detector heads, non-maximum suppression, and COCO-style average precision.

Written from the published definitions (COCO's ``cocoeval``: ten IoU thresholds 0.50-0.95,
101-point interpolated precision, greedy class-aware matching by score; the test suite
holds it to pycocotools). numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
COCO_MAX_DETECTIONS = 100
PRE_NMS_LIMIT = 10_000
"""Highest-scoring boxes kept before suppression (a YOLO head proposes thousands)."""


@dataclass(frozen=True)
class Detections:
    """One image's boxes (``[K, 4]`` x1 y1 x2 y2), scores and class ids, best first."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def above(self, threshold: float) -> Detections:
        keep = self.scores >= threshold
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))


def to_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    boxes = boxes.astype(np.float64)
    if box_format == "xyxy":
        return boxes
    if box_format == "xywh":
        return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:4]], axis=1)
    centre, half = boxes[:, :2], boxes[:, 2:4] / 2  # cxcywh
    return np.concatenate([centre - half, centre + half], axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` with every box in ``b`` (both xyxy), shape ``[len(a), len(b)]``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(detections: Detections, iou: float, limit: int) -> Detections:
    """Greedy class-aware suppression: within a class, drop boxes overlapping a better one."""
    order = np.argsort(-detections.scores, kind="stable")[:PRE_NMS_LIMIT]
    boxes, classes = detections.boxes[order], detections.classes[order]
    # Shift each class to its own region so one IoU pass never suppresses across classes.
    span = float(np.abs(boxes).max(initial=0.0)) * 2 + 1
    shifted = boxes + (classes.astype(np.float64) * span)[:, None]
    keep: list[int] = []
    alive = np.ones(len(order), dtype=bool)
    for index in range(len(order)):
        if not alive[index]:
            continue
        keep.append(index)
        if len(keep) == limit:
            break
        rest = np.nonzero(alive[index + 1 :])[0] + index + 1
        if rest.size:
            overlaps = iou_matrix(shifted[index : index + 1], shifted[rest])[0]
            alive[rest[overlaps > iou]] = False
    chosen = order[np.asarray(keep, dtype=np.int64)]
    return Detections(
        detections.boxes[chosen], detections.scores[chosen], detections.classes[chosen]
    )


def decode(
    output: np.ndarray, layout: str, box_format: str, min_score: float, iou: float, limit: int
) -> list[Detections]:
    """Each batch row's detections: ``yolov8`` [B, 4+nc, N], ``yolov5`` [B, N, 5+nc]
    (objectness times class score), or ``nms`` [B, K, 6+] already suppressed."""
    images = []
    for row in output.astype(np.float64):
        if layout == "yolov8":
            predictions = row.T
            boxes, class_scores = predictions[:, :4], predictions[:, 4:]
        elif layout == "yolov5":
            boxes, class_scores = row[:, :4], row[:, 5:] * row[:, 4:5]
        else:  # nms: x1 y1 x2 y2 score class per row; padding rows score 0
            keep = np.isfinite(row[:, 4]) & (row[:, 4] >= min_score)
            kept = row[keep]
            order = np.argsort(-kept[:, 4], kind="stable")[:limit]
            kept = kept[order]
            images.append(
                Detections(
                    to_xyxy(kept[:, :4], box_format), kept[:, 4], kept[:, 5].astype(np.int64)
                )
            )
            continue
        classes = class_scores.argmax(axis=1)
        scores = class_scores.max(axis=1)
        keep = np.isfinite(scores) & (scores >= min_score) & np.isfinite(boxes).all(axis=1)
        found = Detections(to_xyxy(boxes[keep], box_format), scores[keep], classes[keep])
        images.append(nms(found, iou, limit))
    return images


def _match(
    truth: Detections, predicted: Detections, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching in one image and class: each prediction, best score first,
    takes the unmatched truth it overlaps most (IoU >= threshold). Returns the predictions'
    matched flags and the IoU each matched one had."""
    ious = iou_matrix(predicted.boxes, truth.boxes)
    taken = np.zeros(len(truth), dtype=bool)
    matched = np.zeros(len(predicted), dtype=bool)
    overlap = np.zeros(len(predicted))
    for index in range(len(predicted)):
        best, best_iou = -1, min(threshold, 1 - 1e-10)
        for gt in range(len(truth)):
            if taken[gt] or ious[index, gt] < best_iou:
                continue
            best, best_iou = gt, ious[index, gt]
        if best >= 0:
            taken[best], matched[index], overlap[index] = True, True, best_iou
    return matched, overlap


def _by_class(detections: Detections, cls: int, limit: int | None = None) -> Detections:
    keep = detections.classes == cls
    found = Detections(detections.boxes[keep], detections.scores[keep], detections.classes[keep])
    order = np.argsort(-found.scores, kind="mergesort")[:limit]
    return Detections(found.boxes[order], found.scores[order], found.classes[order])


def average_precision(
    truths: Sequence[Detections],
    predictions: Sequence[Detections],
    max_detections: int = COCO_MAX_DETECTIONS,
) -> tuple[float, float]:
    """COCO ``(AP@[.50:.95], AP@.50)`` of ``predictions`` against ``truths``, one entry per
    image, averaged over the classes that have truths. ``nan`` when there are none."""
    classes = sorted({int(c) for truth in truths for c in truth.classes})
    if not classes:
        return float("nan"), float("nan")
    precision = np.zeros((len(IOU_THRESHOLDS), len(classes), len(RECALL_POINTS)))
    for k, cls in enumerate(classes):
        per_image = [
            (_by_class(truth, cls), _by_class(predicted, cls, max_detections))
            for truth, predicted in zip(truths, predictions, strict=True)
        ]
        positives = sum(len(truth) for truth, _ in per_image)
        scores = np.concatenate([predicted.scores for _, predicted in per_image])
        order = np.argsort(-scores, kind="mergesort")
        for t, threshold in enumerate(IOU_THRESHOLDS):
            matched = np.concatenate(
                [_match(truth, predicted, threshold)[0] for truth, predicted in per_image]
            )[order]
            precision[t, k] = _interpolated(matched, positives)
    return float(precision.mean()), float(precision[0].mean())


def _interpolated(matched: np.ndarray, positives: int) -> np.ndarray:
    """Precision at 101 recall points, made monotone from the right (COCO's accumulate)."""
    if matched.size == 0:
        return np.zeros(len(RECALL_POINTS))
    true_positives = np.cumsum(matched, dtype=np.float64)
    false_positives = np.cumsum(~matched, dtype=np.float64)
    recall = true_positives / positives
    precision = true_positives / (true_positives + false_positives + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    return np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0)


def agreement_at(
    truths: Sequence[Detections], predictions: Sequence[Detections], threshold: float = 0.5
) -> tuple[float, float, float]:
    """``(recall, precision, mean IoU of matched pairs)`` with class-aware greedy matching."""
    matched_count = truth_count = predicted_count = 0
    overlaps: list[np.ndarray] = []
    for truth, predicted in zip(truths, predictions, strict=True):
        truth_count += len(truth)
        predicted_count += len(predicted)
        for cls in {int(c) for c in truth.classes} | {int(c) for c in predicted.classes}:
            matched, overlap = _match(_by_class(truth, cls), _by_class(predicted, cls), threshold)
            matched_count += int(matched.sum())
            overlaps.append(overlap[matched])
    recall = matched_count / truth_count if truth_count else 1.0
    precision = matched_count / predicted_count if predicted_count else 1.0
    joined = np.concatenate(overlaps) if overlaps else np.zeros(0)
    return recall, precision, float(joined.mean()) if joined.size else 0.0
