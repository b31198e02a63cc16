"""Output agreement between a candidate and the original (no labels needed)."""

from __future__ import annotations

import math

import numpy as np

from gate import ValidationContext, Validator, hookimpl

METRICS = {
    "max_abs_diff": "largest absolute difference in the judged output, any sample",
    "cosine_similarity": "cosine similarity of the judged output, worst sample",
    "top1_agreement": "share of rows whose argmax (or integer value) matches the original",
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


def _top1(values: np.ndarray) -> np.ndarray:
    if np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_:
        return values.reshape(-1)
    return values.reshape(-1, values.shape[-1]).argmax(axis=1)


def _validate(context: ValidationContext) -> dict[str, float]:
    reference = [sample[context.output] for sample in context.reference]
    candidate = [sample[context.output] for sample in context.candidate]
    metrics: dict[str, float] = {}
    pairs = list(zip(reference, candidate, strict=True))
    metrics["max_abs_diff"] = max((_max_abs_diff(r, c) for r, c in pairs), default=0.0)
    if np.issubdtype(reference[0].dtype, np.floating):
        metrics["cosine_similarity"] = min(_cosine(r, c) for r, c in pairs)
    classifies = not np.issubdtype(reference[0].dtype, np.floating) or (
        reference[0].ndim >= 1 and reference[0].shape[-1] > 1
    )
    if classifies:
        matches = np.concatenate([_top1(r) == _top1(c) for r, c in pairs])
        metrics["top1_agreement"] = float(matches.mean())
    return metrics


@hookimpl
def onnx_gate_validators() -> list[Validator]:
    return [
        Validator(
            name="agreement",
            metrics=METRICS,
            validate=_validate,
            description="candidate outputs against the original's: difference, cosine, argmax agreement",
        )
    ]
