"""Classification: does the candidate make the original's decisions? (no labels needed)

Rows are the last axis of the judged output: one row per sample for ``[batch, classes]``,
one per position for longer shapes. Logits are turned into probabilities with a softmax
unless the rows already are probabilities (``validation.classification.softmax``).
Under ``validation.task: tensor`` only ``top1_agreement`` is measured, as it always was.
"""

from __future__ import annotations

import numpy as np

from gate import ValidationContext, Validator, hookimpl

METRICS = {
    "top1_agreement": "share of rows whose top class (or integer value) matches the original's",
    "top5_agreement": "share of rows where the original's top class is in the candidate's top 5",
    "kl_mean": "mean KL(original || candidate) of the rows' class probabilities, nats",
    "kl_p99": "99th percentile of KL(original || candidate) over rows, nats",
}


def rows(value: np.ndarray) -> np.ndarray:
    return value.reshape(-1, value.shape[-1]) if value.ndim else value.reshape(1, 1)


def top1(value: np.ndarray) -> np.ndarray:
    if np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_:
        return value.reshape(-1)
    return rows(value).argmax(axis=1)


def probabilities(scores: np.ndarray, softmax: str) -> np.ndarray:
    """Rows of class probabilities: a softmax of logits, or the rows as they are."""
    scores = scores.astype(np.float64)
    already = bool(
        np.all((scores >= 0) & (scores <= 1)) and np.allclose(scores.sum(axis=1), 1, atol=1e-3)
    )
    if softmax == "never" or (softmax == "auto" and already):
        return np.clip(scores, 0, None)
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, None)
    q = np.clip(q, 1e-12, None)
    p, q = p / p.sum(axis=1, keepdims=True), q / q.sum(axis=1, keepdims=True)
    return np.maximum((p * (np.log(p) - np.log(q))).sum(axis=1), 0.0)


def _classifies(value: np.ndarray) -> bool:
    floating = np.issubdtype(value.dtype, np.floating)
    return not floating or (value.ndim >= 1 and value.shape[-1] > 1)


def _validate(context: ValidationContext) -> dict[str, float]:
    metrics: dict[str, float] = {}
    outputs = context.outputs or (context.output,)
    if context.task == "classification":
        outputs = (context.output,)
    for output in outputs:
        reference = [sample[output] for sample in context.reference]
        candidate = [sample[output] for sample in context.candidate]
        if not reference or not _classifies(reference[0]):
            continue
        matches = np.concatenate(
            [top1(r) == top1(c) for r, c in zip(reference, candidate, strict=True)]
        )
        metrics["top1_agreement"] = min(metrics.get("top1_agreement", 1.0), float(matches.mean()))
    if context.task != "classification" or "top1_agreement" not in metrics:
        return metrics
    if not np.issubdtype(context.reference[0][context.output].dtype, np.floating):
        return metrics  # class ids only: there are no scores to rank or compare
    softmax = str(context.options.get("softmax", "auto"))
    ref = np.concatenate([rows(s[context.output]) for s in context.reference])
    cand = np.concatenate([rows(s[context.output]) for s in context.candidate])
    original_top = ref.argmax(axis=1)
    k = min(5, cand.shape[1])
    top5 = np.argpartition(-cand, k - 1, axis=1)[:, :k]
    metrics["top5_agreement"] = float((top5 == original_top[:, None]).any(axis=1).mean())
    # Rows non-finite on either side say nothing about probabilities: top-1 judged them.
    finite = np.isfinite(ref).all(axis=1) & np.isfinite(cand).all(axis=1)
    if not finite.any():
        return metrics
    kl = _kl(probabilities(ref[finite], softmax), probabilities(cand[finite], softmax))
    metrics["kl_mean"] = float(kl.mean())
    metrics["kl_p99"] = float(np.percentile(kl, 99))
    return metrics


@hookimpl
def onnx_gate_validators() -> list[Validator]:
    return [
        Validator(
            name="classification",
            metrics=METRICS,
            validate=_validate,
            description="the original's decisions kept: top-1 and top-5 agreement, KL of the class probabilities",
            tasks=frozenset({"classification", "tensor"}),
        )
    ]
