"""Choosing: the fastest candidate that passes, never one that may be slower, never for noise."""

from __future__ import annotations

from gate.policy.loading import Budget
from gate.run.decide import Standing, choose, evaluate
from gate.stats import Estimate

SIZE = Budget("size_mb", "<=", 10.0, "error", "budgets[0]")
LATENCY = Budget("latency_ms.p95", "<=", 5.0, "error", "budgets[1]")


def standing(
    name: str,
    point: float,
    low: float,
    high: float,
    size: float = 1.0,
    p95: Estimate | None = None,
    on_inconclusive: str = "inconclusive",
) -> Standing:
    speedup = Estimate(point, low, high, 100)
    p95 = p95 or Estimate(1.0, 0.9, 1.1, 100)
    results = evaluate(
        [SIZE, LATENCY], {"size_mb": size, "latency_ms.p95": p95.point}, {"latency_ms.p95": p95}
    )
    return Standing(name, speedup, results, on_inconclusive)


ORIGINAL = standing("original", 1.0, 1.0, 1.0)


def test_the_fastest_surely_faster_candidate_wins():
    chosen, reason = choose(
        [ORIGINAL, standing("a", 1.3, 1.2, 1.4), standing("b", 1.6, 1.5, 1.7)], 0.05
    )
    assert chosen == "b"
    assert "1.60x" in reason


def test_a_candidate_that_might_be_slower_never_replaces_the_original():
    chosen, reason = choose([ORIGINAL, standing("wide", 1.2, 0.9, 1.5)], 0.05)
    assert chosen == "original"
    assert "wide" in reason and "interval above 1.0" in reason


def test_noise_alone_does_not_swap_the_model():
    assert choose([ORIGINAL, standing("noise", 1.02, 1.01, 1.03)], 0.05)[0] == "original"
    assert choose([ORIGINAL, standing("noise", 1.02, 1.01, 1.03)], 0.0)[0] == "noise"


def test_a_rejected_candidate_is_never_chosen_however_fast():
    big = standing("big", 3.0, 2.9, 3.1, size=50.0)
    assert not big.eligible and big.status == "rejected"
    assert choose([ORIGINAL, big], 0.05)[0] == "original"


def test_when_the_original_misses_a_budget_the_fastest_passing_candidate_wins():
    original = standing("original", 1.0, 1.0, 1.0, size=50.0)
    chosen, reason = choose(
        [original, standing("slow", 0.8, 0.7, 0.9), standing("ok", 0.95, 0.9, 1.0)], 0.05
    )
    assert chosen == "ok"
    assert reason.startswith("the original misses an error-level budget")


def test_nothing_passes():
    assert choose([standing("original", 1.0, 1.0, 1.0, size=50.0)], 0.05) == (
        None,
        "no candidate passed every error-level budget",
    )


def test_inconclusive_budgets_and_their_mapping():
    straddling = Estimate(5.0, 4.0, 6.0, 100)
    undecided = standing("x", 1.5, 1.4, 1.6, p95=straddling)
    assert undecided.status == "inconclusive" and not undecided.eligible
    assert undecided.blocking()[0].explain().endswith("- inconclusive")
    assert standing("x", 1.5, 1.4, 1.6, p95=straddling, on_inconclusive="warn").eligible
    failing = standing("x", 1.5, 1.4, 1.6, p95=straddling, on_inconclusive="fail")
    assert failing.status == "rejected"


def test_a_metric_that_was_not_measured_fails_its_budget():
    (result,) = evaluate([Budget("top1_agreement", ">=", 0.9, "error", "budgets[0]")], {}, {})
    assert result.decision == "fail"
    assert result.explain() == "top1_agreement expected >= 0.9, found not measured"


def test_an_inconclusive_original_is_only_replaced_by_a_surely_faster_candidate():
    straddling = Estimate(5.0, 4.0, 6.0, 100)
    original = standing("original", 1.0, 1.0, 1.0, p95=straddling)
    assert original.status == "inconclusive"
    maybe_slower = standing("maybe", 0.97, 0.93, 1.01)
    chosen, reason = choose([original, maybe_slower], 0.05)
    assert chosen is None and "inconclusive" in reason
    assert choose([original, maybe_slower, standing("fast", 1.3, 1.2, 1.4)], 0.05)[0] == "fast"


def test_the_decision_log_says_why_each_candidate_won_or_lost():
    from gate.run.decide import outcome

    faster = standing("fast", 1.6, 1.5, 1.7)
    runner_up = standing("second", 1.3, 1.2, 1.4)
    slower = standing("slow", 0.8, 0.7, 0.9)
    noisy = standing("noisy", 1.02, 0.98, 1.06)
    marginal = standing("marginal", 1.03, 1.01, 1.05)
    big = standing("big", 3.0, 2.9, 3.1, size=50.0)
    everyone = [ORIGINAL, faster, runner_up, slower, noisy, marginal, big]
    chosen, _ = choose(everyone, 0.05)
    assert chosen == "fast"
    log = {s.name: outcome(s, chosen, everyone, 0.05) for s in everyone}
    assert log["fast"] == "chosen"
    assert log["original"] == "passes; fast replaces it"
    assert log["second"].startswith("passes, but fast is faster (1.30x")
    assert log["slow"].startswith("passes, but is slower than the original (0.80x")
    assert log["noisy"].startswith("passes, but is not surely faster than the original")
    assert log["marginal"].startswith("passes and is faster, but by less than selection.min_gain")
    assert log["big"].startswith("rejected: size_mb expected <= 10, found 50")


def test_recommendations_follow_what_was_measured():
    from gate.run.decide import recommend

    def entry(name, plugin=None, status="passed", failed_metric=None, speedup=1.0, **quantize):
        budgets = [{"metric": failed_metric, "passed": False}] if failed_metric else []
        return {
            "name": name,
            "status": status,
            "recipe": {"quantize": {"plugin": plugin, **quantize}} if plugin else None,
            "budgets": budgets,
            "metrics": {"speedup": speedup},
        }

    lossy = [entry("original"), entry("q", "static", "rejected", "top1_agreement", 1.3)]
    assert "quantisation-aware training" in recommend(lossy, "original", False)
    assert "exclude the sensitive nodes" in recommend(lossy, "original", False)
    assert recommend(lossy, None, False).startswith(
        "Every quantised candidate lost too much accuracy"
    )
    # A slower quantised candidate that lost accuracy is no reason to try harder.
    slow = [entry("original"), entry("q", "static", "rejected", "top1_agreement", 0.7)]
    assert "lost accuracy" not in recommend(slow, "original", False)
    # When the search's fallback already tried excluding nodes, the advice moves on.
    tried = [
        *lossy,
        {
            **entry("q-x2", "static", "rejected", "top1_agreement", 1.2),
            "search": {"origin": "fallback"},
        },
    ]
    assert "did not recover it: consider quantisation-aware training" in recommend(
        tried, "original", False
    )
    assert recommend([entry("original"), entry("d", "dynamic")], "d", True).endswith(
        "confirm with data.validation before relying on it."
    )
    assert recommend([entry("original"), entry("s", "static")], "s", False).startswith(
        "Static quantisation met"
    )
    rescued = [entry("original"), entry("s-x3", "static", nodes_to_exclude=["a", "b", "c"])]
    assert "3 node(s) that lost the most accuracy stay in float" in recommend(
        rescued, "s-x3", False
    )
