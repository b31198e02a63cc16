"""Classification accuracy against data.labels, for the original and the candidate."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gate import ValidationContext, Validator, hookimpl

METRICS = {
    "accuracy": "share of validation samples the candidate classifies as data.labels says",
    "top5_accuracy": "share of validation samples whose data.labels class is in the candidate's top 5",
    "accuracy_drop": "original accuracy minus candidate accuracy, as a fraction",
}


def _predictions(outputs: Sequence[np.ndarray]) -> np.ndarray:
    predicted = []
    for index, value in enumerate(outputs):
        if np.issubdtype(value.dtype, np.integer) and value.size == 1:
            predicted.append(int(value.reshape(-1)[0]))
            continue
        rows = value.reshape(-1, value.shape[-1]) if value.ndim else value.reshape(1, 1)
        if rows.shape[0] != 1:
            raise ValueError(
                f"validation sample {index} gives {rows.shape[0]} rows of scores; "
                "labelled accuracy needs one prediction per sample (one label each)"
            )
        predicted.append(int(rows[0].argmax()))
    return np.asarray(predicted)


def _top5(outputs: Sequence[np.ndarray], labels: np.ndarray) -> float | None:
    """Share of samples whose label is among the five best scores; None for class ids."""
    if not np.issubdtype(outputs[0].dtype, np.floating) or outputs[0].ndim == 0:
        return None
    scores = np.concatenate([value.reshape(1, -1) for value in outputs])
    k = min(5, scores.shape[1])
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((best == labels[:, None]).any(axis=1).mean())


def _validate(context: ValidationContext) -> dict[str, float]:
    assert context.labels is not None
    outputs = [s[context.output] for s in context.candidate]
    reference = _predictions([s[context.output] for s in context.reference])
    candidate = _predictions(outputs)
    original_accuracy = float((reference == context.labels).mean())
    accuracy = float((candidate == context.labels).mean())
    metrics = {"accuracy": accuracy, "accuracy_drop": original_accuracy - accuracy}
    top5 = _top5(outputs, context.labels)
    if top5 is not None:
        metrics["top5_accuracy"] = top5
    return metrics


@hookimpl
def onnx_gate_validators() -> list[Validator]:
    return [
        Validator(
            name="labelled-accuracy",
            metrics=METRICS,
            validate=_validate,
            needs_labels=True,
            description="top-1 and top-5 accuracy against data.labels, and the top-1 drop from the original",
            tasks=frozenset({"classification", "tensor"}),
        )
    ]
