"""Step 5: hold each candidate's metrics against the budgets, then choose."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gate.candidates import ORIGINAL
from gate.policy import Budget


@dataclass(frozen=True)
class BudgetResult:
    budget: Budget
    actual: float | None

    @property
    def passed(self) -> bool:
        return self.actual is not None and self.budget.holds(self.actual)

    @property
    def counts(self) -> bool:
        """Whether this result can stop a candidate (error level, not met)."""
        return self.budget.level == "error" and not self.passed

    def explain(self) -> str:
        found = "not measured" if self.actual is None else f"{self.actual:.6g}"
        return f"{self.budget.metric}: expected {self.budget.op} {self.budget.threshold:g}, found {found}"

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.budget.metric,
            "level": self.budget.level,
            "op": self.budget.op,
            "threshold": self.budget.threshold,
            "actual": self.actual,
            "passed": self.passed,
            "location": self.budget.location,
        }


def evaluate(budgets: Sequence[Budget], metrics: Mapping[str, float]) -> list[BudgetResult]:
    return [BudgetResult(budget, metrics.get(budget.metric)) for budget in budgets]


@dataclass(frozen=True)
class Standing:
    """A candidate that was measured, with its budget results."""

    name: str
    speedup: float
    results: list[BudgetResult]

    @property
    def eligible(self) -> bool:
        return not any(result.counts for result in self.results)


def choose(standings: Sequence[Standing], min_gain: float) -> tuple[str | None, str]:
    """The fastest eligible candidate, and why.

    The original is kept unless a candidate is at least ``min_gain`` faster, so
    noise alone never swaps the model. When the original itself misses a
    budget, the fastest eligible candidate wins outright.
    """
    eligible = [s for s in standings if s.eligible]
    if not eligible:
        return None, "no candidate passed every error-level budget"
    fastest = max(eligible, key=lambda s: s.speedup)
    original = next((s for s in eligible if s.name == ORIGINAL), None)
    if original is None:
        return fastest.name, (
            f"the original misses an error-level budget; {fastest.name} is the fastest that passes "
            f"({fastest.speedup:.2f}x)"
        )
    if fastest.name == ORIGINAL or fastest.speedup < 1.0 + min_gain:
        if fastest.name == ORIGINAL:
            return ORIGINAL, "no passing candidate was faster than the original"
        return ORIGINAL, (
            f"the fastest passing candidate, {fastest.name}, is {fastest.speedup:.2f}x: below the "
            f"{1 + min_gain:.2f}x needed to replace the original (selection.min_gain)"
        )
    return (
        fastest.name,
        f"fastest candidate passing every error-level budget ({fastest.speedup:.2f}x)",
    )
