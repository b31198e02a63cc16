"""Step 3 and 4 for one candidate: validate it and time it against the original.

``Scoreboard`` keeps what the judged candidates measured and says how each stands
against the budgets so far; ``Judge`` fills it, one candidate at a time. The search,
the memory measurement and the decision all read the scoreboard; none of them opens
a session of its own to judge a candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from gate.errors import ModelError, first_line
from gate.metrics import MEASURED_METRICS, MEMORY_METRICS, TIMING_METRICS
from gate.policy.loading import Budget, Policy
from gate.records import Sample
from gate.report.model import CandidateEntry
from gate.run.candidates import ORIGINAL, Candidate
from gate.run.decide import BudgetResult, evaluate, utc_today
from gate.run.judging import judge_accuracy
from gate.run.load import file_sha256, model_size_bytes
from gate.run.measure import CallRunner, Estimator, Timing, latency_quantiles, time_pair
from gate.run.memory import measure_memory
from gate.run.runtime import Target, make_session, onnxruntime_errors, run_all, run_stream
from gate.run.task import TaskChoice
from gate.run.validate import ValidationSetup
from gate.stats import FAIL, Estimate


@dataclass
class Scoreboard:
    """Every judged candidate's entry and timing estimates, and the budgets they face.

    ``timed`` is False in the build stage: candidates are validated there and timed
    on the target later, so timing budgets are not known yet."""

    policy: Policy
    budgets: list[Budget] = field(default_factory=list)
    timed: bool = True
    today: date = field(default_factory=utc_today)
    entries: dict[str, CandidateEntry] = field(default_factory=dict)
    timings: dict[str, Timing] = field(default_factory=dict)
    estimates: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    runtime: Estimate | None = None
    """Framework latency / the original's in ONNX Runtime, when the gate exported the model."""

    def evaluate(self, name: str, budgets: list[Budget] | None = None) -> list[BudgetResult]:
        """``name``'s results on ``budgets`` (all of them by default)."""
        policy = self.policy
        return evaluate(
            self.budgets if budgets is None else budgets, self.entries[name].metrics,
            self.estimates.get(name, {}), policy.waivers, policy.name, self.today,
        )  # fmt: skip

    def evaluate_so_far(self, name: str) -> list[BudgetResult]:
        """Budgets decided so far: memory is measured once the search is over, and
        timing not at all in the build stage."""
        unknown = MEMORY_METRICS if self.timed else TIMING_METRICS | MEMORY_METRICS
        return self.evaluate(name, [b for b in self.budgets if b.metric not in unknown])

    def outcome_so_far(self, candidate: Candidate) -> str:
        """What the search learns from a judged candidate: passed, accuracy, rejected,
        failed or skipped. ``accuracy`` means it missed accuracy budgets and nothing else."""
        if candidate.skipped:
            return "skipped"
        if candidate.failed:
            return "failed"
        missed = [
            r for r in self.evaluate_so_far(candidate.name)
            if r.budget.level == "error" and r.decision == FAIL and r.waiver is None
        ]  # fmt: skip
        if not missed:
            return "passed"
        if all(r.budget.metric not in MEASURED_METRICS for r in missed):
            return "accuracy"
        return "rejected"

    def record_timing(self, entry: CandidateEntry, estimates: dict[str, Estimate]) -> None:
        if self.runtime is not None and "speedup" in estimates:
            # Both ratios are paired within their own blocks, so drift between the blocks
            # (which moves latencies, not ratios) does not enter the product.
            estimates["runtime_speedup"] = self.runtime.times(estimates["speedup"])
        self.estimates[entry.name] = estimates
        for name, estimate in estimates.items():
            entry.metrics[name] = estimate.point
            entry.intervals[name] = [estimate.low, estimate.high]

    def accuracy_budget(self) -> Budget | None:
        """The first error-level accuracy budget: what the tie order and the fallback's
        step back compare candidates by."""
        return next(
            (b for b in self.budgets if b.level == "error" and b.metric not in MEASURED_METRICS),
            None,
        )

    def less_accurate(self, name: str, than: str) -> bool:
        """``name`` is surely worse than ``than`` on the accuracy budget's metric."""
        budget = self.accuracy_budget()
        if budget is None:
            return False
        mine = self.entries[name].metrics.get(budget.metric)
        theirs = self.entries[than].metrics.get(budget.metric)
        if mine is None or theirs is None:
            return False
        return mine < theirs if budget.op == ">=" else mine > theirs

    def accuracy_of(self, name: str) -> tuple[float, float] | None:
        """``name``'s value of the accuracy budget's metric, signed so that higher is
        better, and how far it is above the budget's threshold (negative: short of it)."""
        budget = self.accuracy_budget()
        value = self.entries[name].metrics.get(budget.metric) if budget is not None else None
        if budget is None or value is None:
            return None
        sign = 1.0 if budget.op == ">=" else -1.0
        return sign * value, sign * (value - budget.threshold)

    def shortfall(self, name: str) -> float | None:
        """How far ``name`` is from passing its accuracy budgets, as the share of its loss
        (from the original's own value of each metric) it must win back; the largest over
        the error-level accuracy budgets it misses, None when that cannot be told."""
        original = self.entries.get("original")
        shares = []
        for result in self.evaluate_so_far(name):
            budget = result.budget
            if (
                budget.level != "error"
                or result.passed
                or result.waiver is not None
                or budget.metric in MEASURED_METRICS
            ):
                continue
            ideal = original.metrics.get(budget.metric) if original is not None else None
            if ideal is None or result.actual is None:
                continue
            loss = abs(ideal - result.actual)
            if loss > 0:
                shares.append(min(abs(budget.threshold - result.actual) / loss, 1.0))
        return max(shares) if shares else None

    def speedups(self) -> dict[str, Estimate]:
        return {name: e["speedup"] for name, e in self.estimates.items() if "speedup" in e}


@dataclass
class Judge:
    """Holds each candidate to the original: its outputs on the validation data against
    the original's (``reference``), by the task's validators, and its latency against the
    original's in paired blocks on the first sample."""

    policy: Policy
    target: Target
    feeds: list[Sample]
    original_session: Any
    reference: list[Sample]
    setup: ValidationSetup
    validators: list[Any]
    task: TaskChoice | None
    estimator: Estimator
    scores: Scoreboard

    def outputs(self, session: Any) -> list[Sample]:
        """A session's outputs on the validation feeds: one stream for task stream."""
        if self.task is not None and self.task.task == "stream":
            return run_stream(session, self.feeds, self.task.options["state"])
        return run_all(session, self.feeds)

    def judge(self, candidate: Candidate) -> CandidateEntry:
        """Validate and time one candidate, and keep its entry on the scoreboard.
        A failure is recorded on the candidate, never raised."""
        entry = CandidateEntry(
            name=candidate.name, recipe=candidate.recipe, session=candidate.session,
            notes=candidate.notes,
        )  # fmt: skip
        if not candidate.failed:
            assert candidate.path is not None
            size = model_size_bytes(candidate.path)
            entry.artifact = {"sha256": file_sha256(candidate.path), "size_bytes": size}
            entry.metrics["size_mb"] = size / 1e6
            session = self.original_session
            if candidate.name != ORIGINAL:
                try:
                    session = make_session(candidate.path, candidate.session, self.target)
                except Exception as exc:
                    candidate.fail("load", f"ONNX Runtime cannot load it: {first_line(exc)}")
            if not candidate.failed:
                self._validate(candidate, session, entry)
            if not candidate.failed and candidate.name != ORIGINAL and self.scores.timed:
                self._time(candidate, session, entry)
        entry.stage, entry.error = candidate.stage, candidate.error
        self.scores.entries[candidate.name] = entry
        return entry

    def _validate(self, candidate: Candidate, session: Any, entry: CandidateEntry) -> None:
        metrics, details = judge_accuracy(
            candidate, lambda: self.outputs(session), self.reference, self.validators,
            self.setup, self.policy,
        )  # fmt: skip
        entry.metrics.update(metrics)
        if details:
            entry.validation = details

    def _is_decided(self, original_only: bool = False) -> Callable[[Timing], bool]:
        return self.estimator.stopping_rule(
            self.scores.budgets, self.policy.min_gain, original_only=original_only
        )

    def _time(self, candidate: Candidate, session: Any, entry: CandidateEntry) -> None:
        try:
            timing = time_pair(
                self.original_session, session, self.feeds[0], self.policy.measure,
                self._is_decided(),
            )  # fmt: skip
        except Exception as exc:
            candidate.fail("measure", f"{type(exc).__name__}: {first_line(exc)}")
            return
        self.scores.timings[candidate.name] = timing
        estimates = self.estimator(
            timing.candidate_ms, (timing.original_turns, timing.candidate_turns)
        )
        self.scores.record_timing(entry, estimates)
        entry.timing = {
            **timing.describe(),
            "latency_quantiles_ms": latency_quantiles(timing.candidate_ms),
        }

    def time_original(self, model_path: Path, session_options: dict[str, Any]) -> None:
        """Time the original in a block of its own, against a second session of itself.

        Pooling its runs from every candidate's block would give it more samples
        (a narrower interval) the more candidates a policy lists; its own A/A
        block puts it on the same footing as each candidate, with the same
        stopping rule for its own timing budgets.
        """
        original = self.scores.entries[ORIGINAL]
        try:
            twin = make_session(model_path, session_options, self.target)
            timing = time_pair(
                self.original_session, twin, self.feeds[0], self.policy.measure,
                self._is_decided(original_only=True),
            )  # fmt: skip
        except onnxruntime_errors() as exc:  # ORT's own failure on a real model: say where
            raise ModelError(
                f"the original model {self.policy.model_path.name} could not be timed: "
                f"{type(exc).__name__}: {first_line(exc)}"
            ) from exc
        del twin
        self.scores.timings[ORIGINAL] = timing
        self.scores.record_timing(original, self.estimator(timing.original_ms, None))
        original.timing = {
            **timing.describe(),
            "latency_quantiles_ms": latency_quantiles(timing.original_ms),
            "note": "the original against a second session of itself",
        }

    def time_framework(self, run: Callable[[], Any]) -> tuple[Estimate, Timing]:
        """The framework model (``run``, one inference) against the original session in a
        paired block on the first sample: framework latency / ONNX Runtime latency."""
        timing = time_pair(
            CallRunner(run), self.original_session, self.feeds[0], self.policy.measure,
            self.estimator.head_to_head_rule(self.policy.min_gain),
        )  # fmt: skip
        turns = (timing.original_turns, timing.candidate_turns)
        return self.estimator(timing.candidate_ms, turns)["speedup"], timing

    def head_to_head(self, holder: Candidate, challenger: Candidate) -> Estimate:
        """The challenger's speedup over the holder, from one paired block of their own on
        the first sample (the head-to-head final)."""
        assert holder.path is not None and challenger.path is not None
        first = make_session(holder.path, holder.session, self.target)
        second = make_session(challenger.path, challenger.session, self.target)
        timing = time_pair(
            first, second, self.feeds[0], self.policy.measure,
            self.estimator.head_to_head_rule(self.policy.min_gain),
        )  # fmt: skip
        turns = (timing.original_turns, timing.candidate_turns)
        return self.estimator(timing.candidate_ms, turns)["speedup"]

    def measure_memory(self, candidates: list[Candidate], say: Callable[[str], None]) -> str | None:
        """Peak memory of the original and of each candidate still in the running, each in a
        fresh process; the method used, or None when nothing was measured."""
        target = self.target
        described = {
            "provider": target.provider, "options": target.provider_options,
            "threads": target.threads, "fallback": target.fallback,
        }  # fmt: skip
        method = None
        for candidate in candidates:
            if candidate.failed or candidate.path is None:
                continue
            if candidate.name != ORIGINAL and self.scores.outcome_so_far(candidate) != "passed":
                continue  # out already: a fresh process per model costs a second or more
            say(f"measuring memory of {candidate.name}")
            entry = self.scores.entries[candidate.name]
            try:
                figures = measure_memory(
                    candidate.path, candidate.session, described, self.feeds[0]
                )
            except Exception as exc:
                entry.notes.append(f"memory not measured: {first_line(exc)}")
                continue
            method = figures.pop("memory_method", "ru_maxrss")
            entry.metrics.update(figures)
        return method
