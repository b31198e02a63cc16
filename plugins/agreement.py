"""Raw-tensor agreement between a candidate and the original, for every task (no labels).

It measures what the tensors hold, not what they mean: beside a task's own metrics it
shows what a raw comparison would have said. For ``validation.task: tensor`` it is the
judge, over every output in ``validation.outputs``.
"""

from __future__ import annotations

import math

import numpy as np

from gate import ValidationContext, Validator, hookimpl

METRICS = {
    "max_abs_diff": "largest absolute difference in the judged output(s), any sample",
    "cosine_similarity": "cosine similarity of the judged output(s), worst sample",
}


def _comparable(
    reference: np.ndarray, candidate: np.ndarray
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Flattened float64 copies without the positions where both are the same non-finite value.

    The third value is False when one side is non-finite where the other is not:
    such a candidate cannot agree with the original.
    """
    a = reference.astype(np.float64).ravel()
    b = candidate.astype(np.float64).ravel()
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    same_non_finite = ~finite_a & ~finite_b & ((a == b) | (np.isnan(a) & np.isnan(b)))
    consistent = bool(np.all((finite_a & finite_b) | same_non_finite))
    keep = finite_a & finite_b
    return a[keep], b[keep], consistent


def _max_abs_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    a, b, consistent = _comparable(reference, candidate)
    if not consistent:
        return math.inf
    return float(np.abs(a - b).max(initial=0.0))


def _cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    a, b, consistent = _comparable(reference, candidate)
    if not consistent:
        return 0.0
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    if norm == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / norm)


def _validate(context: ValidationContext) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for output in context.outputs or (context.output,):
        pairs = [
            (r[output], c[output])
            for r, c in zip(context.reference, context.candidate, strict=True)
        ]
        worst = max((_max_abs_diff(r, c) for r, c in pairs), default=0.0)
        metrics["max_abs_diff"] = max(metrics.get("max_abs_diff", 0.0), worst)
        if pairs and np.issubdtype(pairs[0][0].dtype, np.floating):
            cosine = min(_cosine(r, c) for r, c in pairs)
            metrics["cosine_similarity"] = min(metrics.get("cosine_similarity", 1.0), cosine)
    return metrics


@hookimpl
def onnx_gate_validators() -> list[Validator]:
    return [
        Validator(
            name="agreement",
            metrics=METRICS,
            validate=_validate,
            description="raw outputs against the original's: largest difference, worst-sample cosine",
        )
    ]
