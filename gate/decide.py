"""Step 5: hold each candidate's metrics against the budgets, then choose."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gate.candidates import ORIGINAL
from gate.policy import Budget
from gate.stats import FAIL, PASS, UNDECIDED, Estimate, decide


@dataclass(frozen=True)
class BudgetResult:
    budget: Budget
    actual: float | None
    decision: str
    """``pass``, ``fail`` or ``inconclusive`` (before ``on_inconclusive`` is applied)."""
    estimate: Estimate | None = None

    @property
    def passed(self) -> bool:
        return self.decision == PASS

    def effective(self, on_inconclusive: str) -> str:
        """The decision after the policy's mapping of inconclusive (warn counts as a pass)."""
        if self.decision != UNDECIDED or on_inconclusive == "inconclusive":
            return self.decision
        return PASS if on_inconclusive == "warn" else FAIL

    def explain(self) -> str:
        found = "not measured" if self.actual is None else f"{self.actual:.6g}"
        if self.estimate is not None and self.estimate.low != self.estimate.high:
            found += f" ({self.estimate.confidence:.0%} interval {self.estimate.low:.6g} to {self.estimate.high:.6g})"
        verdict = " - inconclusive" if self.decision == UNDECIDED else ""
        return f"{self.budget.metric}: expected {self.budget.op} {self.budget.threshold:g}, found {found}{verdict}"

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.budget.metric,
            "level": self.budget.level,
            "op": self.budget.op,
            "threshold": self.budget.threshold,
            "actual": self.actual,
            "passed": self.passed,
            "decision": self.decision,
            "aggregation": self.budget.aggregation,
            "interval": [self.estimate.low, self.estimate.high] if self.estimate else None,
            "location": self.budget.location,
        }


def evaluate(
    budgets: Sequence[Budget], metrics: Mapping[str, float], estimates: Mapping[str, Estimate]
) -> list[BudgetResult]:
    """Timing metrics are decided on their intervals; everything else on its value."""
    results = []
    for budget in budgets:
        actual = metrics.get(budget.metric)
        estimate = estimates.get(budget.metric)
        if actual is None:
            decision = FAIL
        elif estimate is not None:
            decision = decide(estimate, budget.op, budget.threshold, budget.aggregation)
        else:
            decision = PASS if budget.holds(actual) else FAIL
        results.append(BudgetResult(budget, actual, decision, estimate))
    return results


@dataclass(frozen=True)
class Standing:
    """A candidate that was measured, with its budget results."""

    name: str
    speedup: Estimate
    results: list[BudgetResult]
    on_inconclusive: str = "inconclusive"

    def _error_decisions(self) -> list[str]:
        return [
            r.effective(self.on_inconclusive) for r in self.results if r.budget.level == "error"
        ]

    @property
    def eligible(self) -> bool:
        return all(decision == PASS for decision in self._error_decisions())

    @property
    def status(self) -> str:
        decisions = self._error_decisions()
        if FAIL in decisions:
            return "rejected"
        if UNDECIDED in decisions:
            return "inconclusive"
        return "passed"

    def blocking(self) -> list[BudgetResult]:
        return [
            r
            for r in self.results
            if r.budget.level == "error" and r.effective(self.on_inconclusive) != PASS
        ]


def _interval(estimate: Estimate) -> str:
    return f"{estimate.point:.2f}x, {estimate.confidence:.0%} interval {estimate.low:.2f}-{estimate.high:.2f}"


def choose(standings: Sequence[Standing], min_gain: float) -> tuple[str | None, str]:
    """The fastest eligible candidate, and why.

    A candidate replaces the original only when its median paired speedup is at
    least ``1 + min_gain`` and its interval excludes 1.0: never for noise, and
    never when it might be slower. When the original itself misses a budget,
    the fastest eligible candidate wins outright.
    """
    eligible = [s for s in standings if s.eligible]
    if not eligible:
        return None, "no candidate passed every error-level budget"
    original = next((s for s in eligible if s.name == ORIGINAL), None)
    undecided = next(
        (s for s in standings if s.name == ORIGINAL and s.status == "inconclusive"), None
    )
    if original is None and undecided is not None:
        # The original may well pass: only a candidate that is surely faster may replace it.
        faster = [s for s in eligible if s.speedup.low > 1.0]
        if not faster:
            return (
                None,
                "the original's budgets are inconclusive and no passing candidate is surely faster",
            )
        best = max(faster, key=lambda s: s.speedup.point)
        return best.name, (
            f"the original's budgets are inconclusive; {best.name} passes and is surely faster "
            f"({_interval(best.speedup)})"
        )
    if original is None:
        fastest = max(eligible, key=lambda s: s.speedup.point)
        return fastest.name, (
            f"the original misses an error-level budget; {fastest.name} is the fastest that passes "
            f"({_interval(fastest.speedup)})"
        )
    faster = [s for s in eligible if s.speedup.point >= 1.0 + min_gain and s.speedup.low > 1.0]
    if faster:
        best = max(faster, key=lambda s: s.speedup.point)
        return (
            best.name,
            f"fastest candidate passing every error-level budget ({_interval(best.speedup)})",
        )
    others = [s for s in eligible if s.name != ORIGINAL]
    if not others:
        return ORIGINAL, "no other candidate passed every error-level budget"
    best = max(others, key=lambda s: s.speedup.point)
    return ORIGINAL, (
        f"no passing candidate is surely faster: the best, {best.name}, is {_interval(best.speedup)} "
        f"(a replacement needs >= {1 + min_gain:.2f}x with an interval above 1.0; selection.min_gain)"
    )
