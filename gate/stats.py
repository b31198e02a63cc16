"""Distribution-free intervals for timing figures.

Latency samples on a shared runner are skewed and heavy-tailed, so nothing
here assumes normality: an interval for a quantile (the median, p95, ...)
comes from order statistics. The number of samples at or below the true
q-quantile is Binomial(n, q), so the interval [x_(l), x_(u)] covers it with
the probability that Binomial(n, q) falls in [l, u-1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


def _binomial_cdf(n: int, q: float) -> np.ndarray:
    """P(B <= k) for k = 0..n, B ~ Binomial(n, q), computed in log space (n may be large)."""
    k = np.arange(n + 1)
    log_pmf = (
        math.lgamma(n + 1)
        - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in k])
        + k * math.log(q)
        + (n - k) * math.log1p(-q)
    )
    pmf = np.exp(log_pmf - log_pmf.max())
    return np.cumsum(pmf) / pmf.sum()


def quantile_interval_ranks(
    n: int, q: float, confidence: float = CONFIDENCE
) -> tuple[int | None, int | None]:
    """0-based ranks (lo, hi) into sorted samples bracketing the q-quantile.

    A side that ``n`` samples cannot bound at ``confidence`` is None: with 5
    samples there is no 95% upper bound for the median, with fewer than 72
    none for p95, with fewer than 368 none for p99.
    """
    if n < 1:
        raise ValueError("no samples")
    alpha = (1.0 - confidence) / 2.0
    cdf = _binomial_cdf(n, q)
    # 1-based l: the largest l with P(B <= l-1) <= alpha; u: the smallest u with P(B <= u-1) >= 1-alpha.
    lower = np.nonzero(cdf[:n] <= alpha)[0]
    upper = np.nonzero(cdf[:n] >= 1.0 - alpha)[0]
    lo = int(lower[-1]) if lower.size else None
    hi = int(upper[0]) if upper.size else None
    return lo, hi


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval (bounds may be 0 or infinite)."""

    point: float
    low: float
    high: float
    samples: int
    confidence: float = CONFIDENCE

    def map(self, function, decreasing: bool = False) -> Estimate:  # type: ignore[no-untyped-def]
        """The estimate of a monotone function of this quantity."""
        low, high = function(self.low), function(self.high)
        if decreasing:
            low, high = high, low
        return Estimate(function(self.point), low, high, self.samples, self.confidence)

    def widened(self, fraction: float) -> Estimate:
        """The interval stretched by ``fraction`` each way, for noise it cannot see."""
        return Estimate(
            self.point,
            self.low * (1 - fraction),
            self.high * (1 + fraction),
            self.samples,
            self.confidence,
        )

    def times(self, other: Estimate) -> Estimate:
        """The product of two positive ratios, each from its own paired block: bound times
        bound, so the interval holds whenever both do (at least as wide as either's)."""
        return Estimate(
            self.point * other.point,
            self.low * other.low,
            self.high * other.high,
            min(self.samples, other.samples),
            self.confidence,
        )

    def to_json(self) -> dict[str, float]:
        return {
            "point": self.point,
            "low": self.low,
            "high": self.high,
            "samples": self.samples,
            "confidence": self.confidence,
        }


def quantile_estimate(
    samples: Sequence[float], q: float, confidence: float = CONFIDENCE
) -> Estimate:
    """Quantile of positive samples (latencies, ratios) with its interval.

    A bound the samples cannot give is 0 below and infinity above, so a
    budget on it stays undecided rather than trusting too few samples.
    """
    ordered = np.sort(np.asarray(samples, dtype=np.float64))
    lo, hi = quantile_interval_ranks(len(ordered), q, confidence)
    return Estimate(
        float(np.quantile(ordered, q)),
        float(ordered[lo]) if lo is not None else 0.0,
        float(ordered[hi]) if hi is not None else math.inf,
        len(ordered),
        confidence,
    )


def per_unit(numerator: float):  # type: ignore[no-untyped-def]
    """``x -> numerator / x`` that maps 0 to infinity and infinity to 0."""

    def function(value: float) -> float:
        if value == 0:
            return math.inf
        return 0.0 if math.isinf(value) else numerator / value

    return function


def abba_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> np.ndarray:
    """One ratio per ABBA quad: (a1 + a2) / (b1 + b2) over two consecutive rounds.

    Rounds alternate which run goes first, and on a small model the second of
    two back-to-back runs can be markedly faster (warm caches, raised clocks).
    A per-round ratio is then bimodal around the truth; summing each AB round
    with the following BA round cancels the order effect.
    """
    a = np.asarray(numerators, dtype=np.float64)
    b = np.asarray(denominators, dtype=np.float64)
    quads = len(a) // 2
    if quads == 0:
        return a / b
    a_sums = a[: 2 * quads].reshape(quads, 2).sum(axis=1)
    b_sums = b[: 2 * quads].reshape(quads, 2).sum(axis=1)
    return a_sums / b_sums


def ratio_estimate(
    numerators: Sequence[float], denominators: Sequence[float], confidence: float = CONFIDENCE
) -> Estimate:
    """Median of paired (ABBA) ratios with its interval: the speedup of one block."""
    return quantile_estimate(abba_ratios(numerators, denominators), 0.5, confidence)


def coefficient_of_variation(samples: Sequence[float]) -> float:
    values = np.asarray(samples, dtype=np.float64)
    mean = values.mean()
    return float(values.std(ddof=1) / mean) if len(values) > 1 and mean else 0.0


# -- decisions -----------------------------------------------------------------

PASS, FAIL, UNDECIDED = "pass", "fail", "inconclusive"
AGGREGATIONS = ("interval", "median", "optimistic", "pessimistic")


def decide(estimate: Estimate, op: str, threshold: float, aggregation: str = "interval") -> str:
    """Hold an estimate against ``op threshold`` (``<=`` for max, ``>=`` for min).

    ``interval``: pass or fail only when the whole interval is on one side,
    else inconclusive. ``median`` compares the point estimate; ``optimistic``
    the bound most favourable to passing; ``pessimistic`` the least (the
    Lighthouse CI aggregations).
    """

    def holds(value: float) -> bool:
        return value <= threshold if op == "<=" else value >= threshold

    favourable, unfavourable = (
        (estimate.low, estimate.high) if op == "<=" else (estimate.high, estimate.low)
    )
    if aggregation == "median":
        return PASS if holds(estimate.point) else FAIL
    if aggregation == "optimistic":
        return PASS if holds(favourable) else FAIL
    if aggregation == "pessimistic":
        return PASS if holds(unfavourable) else FAIL
    if holds(unfavourable):
        return PASS
    if not holds(favourable):
        return FAIL
    return UNDECIDED
