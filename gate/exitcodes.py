"""The one place exit codes are defined."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum


class ExitCode(IntEnum):
    """What ``onnx-gate`` exits with. CI systems key on these numbers."""

    PASS = 0
    """Every error-level budget held for the chosen model (warnings allowed)."""
    BUDGET_FAILED = 1
    """No candidate, the original included, passed every error-level budget."""
    USAGE_ERROR = 2
    """Bad command line, invalid policy, or a file the policy names is missing."""
    RUNTIME_ERROR = 3
    """The model, a plugin or ONNX Runtime failed; nothing could be decided."""
    INCONCLUSIVE = 4
    """No candidate surely passed and a timing budget stayed undecided at the time cap."""

    @classmethod
    def combined(cls, codes: Iterable[int]) -> ExitCode:
        """One code for several models: usage errors first, then runtime errors, failed
        budgets and inconclusive ones; pass only when every model passed (or there were none)."""
        present = {cls(code) for code in codes}
        return next((code for code in SEVERITY if code in present), cls.PASS)

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self]

    @property
    def verdict(self) -> str:
        return {
            ExitCode.PASS: "pass",
            ExitCode.BUDGET_FAILED: "fail",
            ExitCode.INCONCLUSIVE: "inconclusive",
        }.get(self, "error")


DESCRIPTIONS = {
    ExitCode.PASS: "pass",
    ExitCode.BUDGET_FAILED: "a budget failed",
    ExitCode.USAGE_ERROR: "usage or policy error",
    ExitCode.RUNTIME_ERROR: "model, plugin or runtime error",
    ExitCode.INCONCLUSIVE: "inconclusive",
}

SEVERITY = (
    ExitCode.USAGE_ERROR,
    ExitCode.RUNTIME_ERROR,
    ExitCode.BUDGET_FAILED,
    ExitCode.INCONCLUSIVE,
    ExitCode.PASS,
)
