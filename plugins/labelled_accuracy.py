"""Classification accuracy against data.labels, for the original and the candidate."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gate import ValidationContext, Validator, hookimpl

METRICS = {
    "accuracy": "share of validation samples the candidate classifies as data.labels says",
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


def _validate(context: ValidationContext) -> dict[str, float]:
    assert context.labels is not None
    reference = _predictions([s[context.output] for s in context.reference])
    candidate = _predictions([s[context.output] for s in context.candidate])
    original_accuracy = float((reference == context.labels).mean())
    accuracy = float((candidate == context.labels).mean())
    return {"accuracy": accuracy, "accuracy_drop": original_accuracy - accuracy}


@hookimpl
def onnx_gate_validators() -> list[Validator]:
    return [
        Validator(
            name="labelled-accuracy",
            metrics=METRICS,
            validate=_validate,
            needs_labels=True,
            description="top-1 accuracy against data.labels and its drop from the original",
        )
    ]
