"""The statistics verdicts rest on, checked against distributions with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gate.stats import (
    FAIL,
    PASS,
    UNDECIDED,
    Estimate,
    abba_ratios,
    decide,
    quantile_estimate,
    quantile_interval_ranks,
    ratio_estimate,
)


@pytest.mark.parametrize(("n", "expected"), [(10, (1, 8)), (30, (9, 20)), (100, (39, 60))])
def test_median_interval_ranks_match_the_published_tables(n, expected):
    # 95% distribution-free CI for the median: 1-based ranks (2, 9), (10, 21), (40, 61).
    assert quantile_interval_ranks(n, 0.5) == expected


def test_bounds_too_few_samples_cannot_give_are_open():
    assert quantile_interval_ranks(4, 0.5) == (None, None)  # 4 samples bound no 95% median interval
    estimate = quantile_estimate([3.0, 1.0, 2.0], 0.5)
    assert (estimate.low, estimate.high) == (0.0, math.inf)
    assert decide(estimate, ">=", 0.95) == UNDECIDED  # never decided on three samples
    # p95 needs 72 samples for an upper bound, p99 needs 368.
    assert (
        quantile_interval_ranks(71, 0.95)[1] is None and quantile_interval_ranks(72, 0.95)[1] == 71
    )
    assert (
        quantile_interval_ranks(367, 0.99)[1] is None
        and quantile_interval_ranks(368, 0.99)[1] == 367
    )
    assert math.isinf(quantile_estimate(np.ones(100), 0.99).high)


@pytest.mark.parametrize("q", [0.5, 0.95])
def test_quantile_interval_covers_the_true_quantile_about_95_percent_of_the_time(q):
    rng = np.random.default_rng(0)
    sigma = 0.4  # right-skewed like latencies
    true_quantile = float(np.exp(sigma * {0.5: 0.0, 0.95: 1.6448536269514722}[q]))
    trials, n = 2000, 120
    covered = 0
    for _ in range(trials):
        estimate = quantile_estimate(rng.lognormal(0.0, sigma, size=n), q)
        covered += estimate.low <= true_quantile <= estimate.high
    assert 0.93 <= covered / trials <= 0.985


def test_paired_ratio_recovers_a_known_slowdown_and_excludes_one():
    rng = np.random.default_rng(1)
    n = 200
    drift = 1.0 + 0.3 * np.sin(np.linspace(0, 6, n))  # the machine speeds up and slows down
    original = 2.0 * drift * rng.lognormal(0, 0.05, n)
    candidate = (2.0 / 0.85) * drift * rng.lognormal(0, 0.05, n)  # truly 15% slower
    estimate = ratio_estimate(original, candidate)
    assert estimate.low <= 0.85 <= estimate.high
    assert estimate.high < 0.95
    assert decide(estimate, ">=", 0.95) == FAIL


def test_a_and_a_ratio_interval_contains_one():
    rng = np.random.default_rng(2)
    base = rng.lognormal(0, 0.2, 300)
    estimate = ratio_estimate(
        base * rng.lognormal(0, 0.05, 300), base * rng.lognormal(0, 0.05, 300)
    )
    assert estimate.low < 1.0 < estimate.high
    assert decide(estimate, ">=", 0.95) == PASS


def test_decisions_and_aggregations():
    estimate = Estimate(point=10.0, low=8.0, high=12.0, samples=50)
    assert decide(estimate, "<=", 13) == PASS
    assert decide(estimate, "<=", 7) == FAIL
    assert decide(estimate, "<=", 11) == UNDECIDED
    assert decide(estimate, "<=", 11, "median") == PASS
    assert decide(estimate, "<=", 9, "median") == FAIL
    assert decide(estimate, "<=", 9, "optimistic") == PASS  # low bound 8 <= 9
    assert decide(estimate, "<=", 11, "pessimistic") == FAIL  # high bound 12 > 11
    assert decide(estimate, ">=", 9, "optimistic") == PASS
    assert decide(estimate, ">=", 9, "pessimistic") == FAIL
    assert decide(estimate, ">=", 7) == PASS


def test_monotone_maps_keep_the_interval_ordered():
    latency = Estimate(point=2.0, low=1.0, high=4.0, samples=30)
    throughput = latency.map(lambda ms: 1000.0 / ms, decreasing=True)
    assert (throughput.low, throughput.point, throughput.high) == (250.0, 500.0, 1000.0)


def test_abba_pairing_cancels_an_order_effect():
    # The first run of every round is 60% slower, whichever model it is.
    rng = np.random.default_rng(3)
    rounds = 400
    original, candidate = [], []
    for index in range(rounds):
        first_is_original = index % 2 == 0
        o = 1.0 * rng.lognormal(0, 0.02) * (1.6 if first_is_original else 1.0)
        c = 1.0 * rng.lognormal(0, 0.02) * (1.0 if first_is_original else 1.6)
        original.append(o)
        candidate.append(c)
    per_round = np.asarray(original) / np.asarray(candidate)
    assert np.percentile(per_round, 5) < 0.7 and np.percentile(per_round, 95) > 1.5  # bimodal
    paired = abba_ratios(original, candidate)
    assert len(paired) == rounds // 2
    estimate = ratio_estimate(original, candidate)
    assert estimate.low <= 1.0 <= estimate.high
    assert estimate.high - estimate.low < 0.02
