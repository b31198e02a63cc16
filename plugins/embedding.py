"""Embeddings: does the candidate place the validation samples where the original does?

Per-token outputs are pooled as users pool them (``validation.embedding.pooling``: ``mean``
over the attention mask, ``cls``, ``last``, ``max``; ``none`` for an output already
pooled), optionally L2-normalised, then compared sample by sample (cosine) and as a set:
the top-10 neighbours of each sample and the rank order of all pairwise similarities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gate import ValidationContext, Validator, hookimpl

METRICS = {
    "emb_cosine_min": "cosine of the pooled embeddings, worst sample",
    "emb_cosine_p01": "cosine of the pooled embeddings, 1st percentile over samples",
    "emb_neighbour_overlap": "mean share of each sample's top-10 neighbours (by cosine) the candidate keeps",
    "emb_spearman": "Spearman rank correlation of all pairwise cosine similarities, candidate vs original",
}
NEIGHBOURS = 10


def pool(tokens: np.ndarray, mask: np.ndarray | None, pooling: str) -> np.ndarray:
    """``[batch, dim]`` embeddings from ``[batch, tokens, dim]`` (or as given for ``none``)."""
    values = tokens.astype(np.float64)
    if pooling == "none":
        return values.reshape(values.shape[0], -1)
    weights = (
        np.ones(values.shape[:2])
        if mask is None
        else mask.astype(np.float64).reshape(values.shape[:2])
    )
    if pooling == "mean":  # sentence-transformers: sum(tok * mask) / max(sum(mask), 1e-9)
        total = (values * weights[:, :, None]).sum(axis=1)
        return total / np.maximum(weights.sum(axis=1), 1e-9)[:, None]
    if pooling == "cls":
        return values[:, 0]
    if pooling == "last":  # the last token the mask keeps
        last = np.maximum(weights.sum(axis=1).astype(np.int64) - 1, 0)
        return values[np.arange(values.shape[0]), last]
    masked = np.where(weights[:, :, None] > 0, values, -np.inf)  # max
    return masked.max(axis=1)


def _embeddings(samples: Sequence[dict[str, np.ndarray]], context: ValidationContext) -> np.ndarray:
    options: Any = context.options
    pooling = str(options.get("pooling", "mean"))
    mask_name = options.get("mask_input")
    pooled = []
    for index, sample in enumerate(samples):
        mask = context.inputs[index].get(mask_name) if mask_name and context.inputs else None
        pooled.append(pool(sample[context.output], mask, pooling))
    joined = np.concatenate(pooled)
    if options.get("normalize"):
        joined = joined / np.maximum(np.linalg.norm(joined, axis=1, keepdims=True), 1e-12)
    return joined


def _unit(values: np.ndarray) -> np.ndarray:
    return values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank (Spearman's definition)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    if norm == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float((ra * rb).sum() / norm)


def _neighbours(similarity: np.ndarray, k: int) -> np.ndarray:
    masked = similarity.copy()
    np.fill_diagonal(masked, -np.inf)
    return np.argsort(-masked, axis=1, kind="stable")[:, :k]


def _validate(context: ValidationContext) -> dict[str, float]:
    reference = _embeddings(context.reference, context)
    candidate = _embeddings(context.candidate, context)
    if not (np.isfinite(reference).all() and np.isfinite(candidate).all()):
        finite = np.isfinite(reference).all() == np.isfinite(candidate).all()
        return {"emb_cosine_min": 1.0 if finite else 0.0, "emb_cosine_p01": 0.0}
    ref_unit, cand_unit = _unit(reference), _unit(candidate)
    cosines = (ref_unit * cand_unit).sum(axis=1)
    metrics = {
        "emb_cosine_min": float(cosines.min()),
        "emb_cosine_p01": float(np.percentile(cosines, 1)),
    }
    samples = len(cosines)
    if samples >= 3:  # a neighbour and a ranking need others to compare with
        ref_sim, cand_sim = ref_unit @ ref_unit.T, cand_unit @ cand_unit.T
        k = min(NEIGHBOURS, samples - 1)
        a, b = _neighbours(ref_sim, k), _neighbours(cand_sim, k)
        overlap = [len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]
        metrics["emb_neighbour_overlap"] = float(np.mean(overlap))
        upper = np.triu_indices(samples, 1)
        metrics["emb_spearman"] = spearman(ref_sim[upper], cand_sim[upper])
    return metrics


@hookimpl
def onnx_gate_validators() -> list[Validator]:
    return [
        Validator(
            name="embedding",
            metrics=METRICS,
            validate=_validate,
            description="pooled embeddings against the original's: cosine, neighbours kept, similarity ranking",
            tasks=frozenset({"embedding"}),
        )
    ]
