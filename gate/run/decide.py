"""Step 5: hold each candidate's metrics against the budgets, then choose."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from gate.errors import PolicyError, listed
from gate.exitcodes import ExitCode
from gate.metrics import MEASURED_METRICS, TIMING_METRICS
from gate.policy.loading import Budget, Policy, Waiver
from gate.report.document import explain_budget
from gate.report.model import CandidateEntry
from gate.run.candidates import ORIGINAL, Candidate
from gate.run.task import DEFAULT_FLOORS
from gate.stats import FAIL, PASS, UNDECIDED, Estimate, decide


@dataclass(frozen=True)
class BudgetResult:
    budget: Budget
    actual: float | None
    decision: str
    """``pass``, ``fail`` or ``inconclusive`` (before ``on_inconclusive`` and waivers apply)."""
    estimate: Estimate | None = None
    waiver: Waiver | None = None
    """Set only on a result that did not pass and that an unexpired waiver covers."""

    @property
    def passed(self) -> bool:
        return self.decision == PASS

    def effective(self, on_inconclusive: str) -> str:
        """The decision after waivers and the policy's mapping of inconclusive (warn counts
        as a pass)."""
        if self.waiver is not None:
            return PASS
        if self.decision != UNDECIDED or on_inconclusive == "inconclusive":
            return self.decision
        return PASS if on_inconclusive == "warn" else FAIL

    def explain(self) -> str:
        return explain_budget(self.to_json())

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
            "line": self.budget.line,
            "waived": self.waiver is not None,
            "waiver": self.waiver.to_json() if self.waiver else None,
        }


def evaluate(
    budgets: Sequence[Budget],
    metrics: Mapping[str, float],
    estimates: Mapping[str, Estimate],
    waivers: Sequence[Waiver] = (),
    model: str = "",
    today: date | None = None,
) -> list[BudgetResult]:
    """Timing metrics are decided on their intervals; everything else on its value.

    A result that does not pass carries the first unexpired waiver covering its budget.
    """
    today = today or utc_today()
    active = [w for w in waivers if not w.expired(today)]
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
        waiver = None
        if decision != PASS and budget.level != "off":
            waiver = next((w for w in active if w.covers(budget, model)), None)
        results.append(BudgetResult(budget, actual, decision, estimate, waiver))
    return results


def utc_today() -> date:
    return datetime.now(timezone.utc).date()


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
    if len(standings) == 1:
        return ORIGINAL, "no other candidate could be measured: the original is kept"
    if not others:
        return ORIGINAL, "no other candidate passed every error-level budget"
    best = max(others, key=lambda s: s.speedup.point)
    return ORIGINAL, (
        f"no passing candidate is surely faster: the best, {best.name}, is {_interval(best.speedup)} "
        f"(a replacement needs >= {1 + min_gain:.2f}x with an interval above 1.0; selection.min_gain)"
    )


def _explained(results: Sequence[BudgetResult], shown: int = 5) -> str:
    """The budgets that decided, each explained: the first few, then how many more."""
    text = "; ".join(result.explain() for result in results[:shown])
    more = len(results) - shown
    return text + (f"; and {more:,} more (report.json lists every one)" if more > 0 else "")


def outcome(
    standing: Standing,
    chosen: str | None,
    standings: Sequence[Standing],
    min_gain: float,
    final: Final | None = None,
) -> str:
    """Why this measured candidate won or lost, in one sentence for the decision log."""
    if standing.name == chosen:
        return "chosen"
    lost = [b for b in final.bouts if standing.name in (b.holder, b.challenger)] if final else []
    if lost and lost[-1].winner != standing.name:
        bout = lost[-1]
        if bout.speedup is None:
            return (
                f"passes, but its head-to-head block against {bout.winner} could not be run "
                f"({bout.why}), so {bout.winner} kept its place"
            )
        return f"passes, but lost the head-to-head final to {bout.winner}: {bout.why}"
    if standing.status == "rejected":
        return "rejected: " + _explained(standing.blocking())
    if standing.status == "inconclusive":
        return "inconclusive: " + _explained(standing.blocking())
    speed = _interval(standing.speedup)
    if standing.name == ORIGINAL:
        return f"passes; {chosen} replaces it" if chosen else "passes"
    if standing.speedup.high < 1.0:
        return f"passes, but is slower than the original ({speed})"
    if standing.speedup.low <= 1.0:
        return f"passes, but is not surely faster than the original ({speed})"
    if standing.speedup.point < 1.0 + min_gain:
        return f"passes and is faster, but by less than selection.min_gain ({speed})"
    winner = next((s for s in standings if s.name == chosen), None)
    if winner is not None:
        return f"passes, but {chosen} is faster ({speed} against {_interval(winner.speedup)})"
    return f"passes ({speed})"


def recommend(
    entries: Sequence[Mapping[str, Any]], chosen: str | None, synthetic_data: bool
) -> str:
    """A short recommendation for the summary, from what was measured."""
    by_name = {entry["name"]: entry for entry in entries}
    quantised = [e for e in entries if (e.get("recipe") or {}).get("quantize")]
    lost_accuracy = [
        e for e in quantised
        if e["status"] == "rejected"
        and any(b["metric"] not in MEASURED_METRICS and not b["passed"] for b in e.get("budgets", []))
    ]  # fmt: skip
    faster_but_inaccurate = [
        e for e in lost_accuracy if (e.get("metrics") or {}).get("speedup", 0.0) > 1.0
    ]
    fell_back = any((e.get("search") or {}).get("origin") == "fallback" for e in entries)
    recovery = (
        "keeping the nodes that lost the most accuracy in float (the search's fallback) did not "
        "recover it: consider quantisation-aware training, or a larger search.max_fallbacks"
        if fell_back
        else "exclude the sensitive nodes (nodes_to_exclude, op_types_to_quantize), or consider "
        "quantisation-aware training"
    )
    caveat = (
        " Validation ran on synthetic inputs: confirm with data.validation before relying on it."
        if synthetic_data
        else ""
    )
    if chosen is None:
        if quantised and len(lost_accuracy) == len(quantised):
            return f"Every quantised candidate lost too much accuracy: {recovery}."
        return "Nothing met every budget: relax a budget, or look at the reasons per candidate."
    recipe = by_name[chosen].get("recipe") or {}
    quantize = recipe.get("quantize") or {}
    plugin = quantize.get("plugin")
    kept = len(quantize.get("nodes_to_exclude") or ())
    in_float = (
        f" {kept} node(s) that lost the most accuracy stay in float (nodes_to_exclude)."
        if kept
        else ""
    )
    if chosen == ORIGINAL:
        advice = "No recipe beat the original on this target while meeting every budget: ship it as it is."
        if faster_but_inaccurate:
            advice += f" Some quantised candidates were faster but lost accuracy: {recovery}."
        return advice + caveat
    if plugin == "dynamic":
        return (
            "Graph optimisation with dynamic quantisation: the simplest lever, fine where accuracy "
            "is not business-critical." + in_float + caveat
        )
    if plugin == "static":
        return (
            "Static quantisation met your accuracy budgets: keep the calibration and validation data "
            "representative of production, since static quantisation depends on them."
            + in_float
            + caveat
        )
    return f"{chosen} met every budget and was the fastest." + in_float + caveat


ROW_STATUS = {PASS: "pass", FAIL: "fail", UNDECIDED: "inconclusive"}


def budget_rows(model: str, subject: Standing | None) -> list[dict[str, Any]]:
    """One row per budget for CI (JUnit test cases, annotations, code-quality issues).

    The subject is the chosen candidate, or the original when nothing was chosen: the
    model that would ship. ``blocking`` says whether the row holds the build back, after
    waivers and ``measure.on_inconclusive`` (warn: an undecided budget passes with a
    warning; fail: it fails).
    """
    if subject is None:
        return []
    rows = []
    for result in subject.results:
        budget = result.budget
        effective = result.effective(subject.on_inconclusive)
        if result.waiver is not None:
            status = "waived"
        elif result.decision == FAIL and result.actual is None:
            status = "not_measured"
        elif result.decision == UNDECIDED and effective == FAIL:
            status = "fail"  # measure.on_inconclusive: fail
        else:
            status = ROW_STATUS[result.decision]
        rows.append(
            {
                "model": model,
                "id": budget.location,
                "metric": budget.metric,
                "level": budget.level,
                "op": budget.op,
                "threshold": budget.threshold,
                "line": budget.line,
                "candidate": subject.name,
                "actual": result.actual,
                "status": status,
                "blocking": budget.level == "error" and effective != PASS,
                "message": result.explain(),
                "waiver": result.waiver.to_json() if result.waiver else None,
            }
        )
    return rows


def waiver_summary(
    waivers: Sequence[Waiver], model: str, standings: Sequence[Standing], today: date
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each waiver for this model with what it covered; warnings so none goes unnoticed."""
    summary, warnings = [], []
    for waiver in waivers:
        if waiver.model is not None and waiver.model != model:
            continue
        covered = [
            f"{standing.name}: {result.budget.metric}"
            for standing in standings
            for result in standing.results
            if result.waiver is waiver
        ]
        what = f"waiver for {waiver.budget} (owner {waiver.owner}: {waiver.reason})"
        if waiver.expired(today):
            status = "expired"
            warnings.append(
                f"{what} expired on {waiver.expires.isoformat()}: the budget is enforced again"
            )
        elif covered:
            status = "applied"
            days = (waiver.expires - today).days
            warnings.append(
                f"{what} waives {len(covered)} failure(s) until {waiver.expires.isoformat()} "
                f"({days} day(s) left): {listed(covered, shown=5)}"
            )
        else:
            status = "unused"
        summary.append({**waiver.to_json(), "status": status, "covers": covered})
    return summary, warnings


def count_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many budget rows ended each way, each row counted once (levels off left out):
    pass, waived, fail (blocking), inconclusive (blocking, undecided), warn (missed but not
    blocking: a warn-level budget, or an undecided one under on_inconclusive: warn)."""
    counts = {"budgets": 0, "pass": 0, "fail": 0, "waived": 0, "inconclusive": 0, "warn": 0}
    for row in rows:
        if row["level"] == "off":
            continue
        counts["budgets"] += 1
        if row["status"] in ("pass", "waived"):
            counts[row["status"]] += 1
        elif not row.get("blocking", row["level"] == "error"):
            counts["warn"] += 1
        elif row["status"] == "inconclusive":
            counts["inconclusive"] += 1
        else:
            counts["fail"] += 1
    return counts


@dataclass
class Decision:
    """What deciding sets in report.json (besides each candidate's entry) and the chosen one."""

    chosen: str | None
    report: dict[str, Any]
    """chosen, decision, budgets, counts, waivers, recommendation; verdict, exit_code and
    message when nothing is chosen."""
    warnings: list[str]
    chosen_warnings: list[str]
    """Warnings about the chosen model, once it is written."""


def decide_run(
    policy: Policy,
    candidates: Sequence[Candidate],
    entries: Mapping[str, CandidateEntry],
    results_of: Callable[[str], list[BudgetResult]],
    speedups: Mapping[str, Estimate],
    synthetic: bool,
    today: date,
    final: Callable[[str, list[str]], Final | None] | None = None,
) -> Decision:
    """Hold every candidate to the budgets (``results_of``), choose, and explain each
    outcome: fills each entry's status, budgets, reasons and outcome (the decision log).

    ``final(leader, contenders)`` runs the head-to-head final (``run_final``) when a
    candidate leads: its choice stands. None: no final (nothing can be timed here)."""
    on_inconclusive = policy.measure.on_inconclusive
    standings = []
    for candidate in candidates:
        entry = entries[candidate.name]
        if candidate.failed:
            entry.status = "skipped" if candidate.skipped else "failed"
            continue
        results = results_of(candidate.name)
        entry.budgets = [result.to_json() for result in results]
        standing = Standing(candidate.name, speedups[candidate.name], results, on_inconclusive)
        entry.status = standing.status
        entry.reasons = [r.explain() for r in standing.blocking()]
        standings.append(standing)

    chosen, reason = choose(standings, policy.min_gain)
    settled = None
    if final is not None and chosen not in (None, ORIGINAL) and policy.final_contenders:
        leader = next(s for s in standings if s.name == chosen)
        contenders = final_contenders(standings, chosen, policy.min_gain, policy.final_contenders)
        settled = final(chosen, [s.name for s in contenders])
        if settled is not None and settled.chosen != chosen:
            chosen, reason = (
                settled.chosen,
                (
                    f"{settled.why} (the head-to-head final of the fastest passing candidates; "
                    f"{leader.name} led against the original: {_interval(leader.speedup)})"
                ),
            )
        elif settled is not None and settled.contenders:
            reason += (
                f"; it kept its place in a head-to-head final against {listed(settled.contenders)}"
            )
    report: dict[str, Any] = {"chosen": chosen, "decision": reason}
    report["final"] = settled.to_json() if settled is not None else None
    subject = next(
        (s for s in standings if s.name == (chosen or ORIGINAL)),
        standings[0] if standings else None,
    )
    report["budgets"] = budget_rows(policy.name, subject)
    report["counts"] = count_rows(report["budgets"])
    report["waivers"], warnings = waiver_summary(policy.waivers, policy.name, standings, today)
    for candidate in candidates:  # the decision log: why each one won or lost
        entry = entries[candidate.name]
        standing = next((s for s in standings if s.name == candidate.name), None)
        if standing is not None:
            entry.outcome = outcome(standing, chosen, standings, policy.min_gain, settled)
        else:
            what = "skipped" if candidate.skipped else f"failed to {candidate.stage}"
            entry.outcome = f"{what}: {candidate.error}"
    report["recommendation"] = recommend(
        [entries[c.name].to_json() for c in candidates], chosen, synthetic
    )
    if chosen is None:
        if any(s.status == "inconclusive" for s in standings):
            report.update(
                verdict="inconclusive",
                exit_code=int(ExitCode.INCONCLUSIVE),
                message=(
                    "no candidate surely passed, and a timing budget could not be decided within "
                    "measure.max_seconds: raise it, use a relative budget, or set measure.on_inconclusive"
                ),
            )
        else:
            report.update(verdict="fail", exit_code=int(ExitCode.BUDGET_FAILED), message=reason)
        return Decision(None, report, warnings, [])
    standing = next(s for s in standings if s.name == chosen)
    chosen_warnings = _chosen_warnings(chosen, standing.results, on_inconclusive)
    if chosen != ORIGINAL and standing.speedup.low <= 1.0:
        chosen_warnings.append(
            f"{chosen} is not surely faster than the original "
            f"({standing.speedup.point:.2f}x): it is chosen because the original misses "
            "an error-level budget"
        )
    return Decision(chosen, report, warnings, chosen_warnings)


def _chosen_warnings(chosen: str, results: list[BudgetResult], on_inconclusive: str) -> list[str]:
    warnings = []
    for result in results:
        if result.budget.level == "warn" and result.decision != PASS:
            warnings.append(f"{chosen}: {result.explain()}")
        elif (
            result.budget.level == "error"
            and result.decision == UNDECIDED
            and on_inconclusive == "warn"
        ):
            warnings.append(f"{chosen}: {result.explain()} (measure.on_inconclusive: warn)")
    return warnings


DEFAULT_ACCURACY_FLOOR = 0.99
"""The floor of the default budget when the task's own metric is not produced."""


def default_accuracy_budget(
    budgets: Sequence[Budget],
    validators: Sequence[Any],
    produced: Mapping[str, float],
    task: str,
    judged: str,
) -> tuple[Budget | None, str | None]:
    """Without an error-level accuracy budget nothing would stop a quantiser that destroys
    the model: the budget holding every candidate to agreeing with the original (the task's
    default floor), and the warning that says so; or only a warning."""
    accuracy = {metric for validator in validators for metric in validator.metrics}
    levels = {b.level for b in budgets if b.metric in accuracy}
    if "error" in levels:
        return None, None
    if levels:  # the policy chose warn or off: respected, but not silently
        return (
            None,
            "no accuracy budget is at level error: a candidate that loses accuracy can be chosen",
        )
    floor_metric, floor = DEFAULT_FLOORS[task]
    preferred = [floor_metric, "cosine_similarity", "top1_agreement"]
    metric = next((m for m in preferred if m in produced), None)
    if metric is None:
        return None, (
            f"the policy sets no accuracy budget and output '{judged}' gives no agreement "
            "metric: candidates are not checked for accuracy"
        )
    floor = floor if metric == floor_metric else DEFAULT_ACCURACY_FLOOR
    return Budget(metric, ">=", floor, "error", "default"), (
        f"the policy sets no error-level accuracy budget: every candidate is held to "
        f"{metric} >= {floor} against the original (task {task}); set your own in budgets"
    )


def require_budget_metrics(policy: Policy, produced: Mapping[str, float], output: Any) -> None:
    """A budget on a metric the original did not produce can never be met: a policy error
    naming each such budget. Timing and memory metrics are measured later."""
    accuracy = [name for name in produced if name != "size_mb"]
    problems = []
    for index, budget in enumerate(policy.budgets):
        if budget.level == "off" or budget.metric in produced:
            continue
        if budget.metric in TIMING_METRICS or budget.metric.endswith("memory_mb"):
            continue  # measured later
        problems.append(
            policy.problem(
                ("budgets", index, "metric"),
                f"'{budget.metric}' is not produced for output '{output.name}' "
                f"({output.dtype}, shape {output.shape or output.dims}), which gives "
                f"{listed(accuracy, 'no accuracy metric')}; choose one of those or "
                "another validation.output",
            )
        )
    if problems:
        raise PolicyError(
            f"{policy.path.name}: budgets name metrics this model does not produce", problems
        )


# -- the head-to-head final -----------------------------------------------------


SIZE_TIE = 0.01
"""Files within 1% of each other's size are equal to the tie order: two builds of the same
arithmetic differ by a few hundred bytes of names, which must not pick the slower one."""


@dataclass(frozen=True)
class TieBreak:
    """What separates two candidates neither of which is surely faster, in order: the
    accuracy metric (the first error-level accuracy budget's, oriented by its operator),
    then fewer quantised operators, then the smaller file (by more than ``SIZE_TIE``)."""

    metric: str | None
    higher_is_better: bool
    accuracy: Mapping[str, float | None]
    quantised_ops: Mapping[str, int]
    size_mb: Mapping[str, float | None]

    def settle(self, holder: str, challenger: str) -> tuple[str, str]:
        """The winner of a tie and why, in words; the holder keeps its place on a full tie."""
        if self.metric is not None:
            held, challenging = self.accuracy.get(holder), self.accuracy.get(challenger)
            if held is not None and challenging is not None and held != challenging:
                challenger_better = (challenging > held) == self.higher_is_better
                winner, loser = (challenger, holder) if challenger_better else (holder, challenger)
                words = "higher" if self.higher_is_better else "lower"
                return winner, (
                    f"{words} {self.metric} ({self.accuracy[winner]:.6g} against "
                    f"{self.accuracy[loser]:.6g})"
                )
        held_ops, challenging_ops = self.quantised_ops[holder], self.quantised_ops[challenger]
        if held_ops != challenging_ops:
            winner, loser = (
                (challenger, holder) if challenging_ops < held_ops else (holder, challenger)
            )
            return winner, (
                f"fewer quantised operators ({self.quantised_ops[winner]} against "
                f"{self.quantised_ops[loser]})"
            )
        held_size, challenging_size = self.size_mb.get(holder), self.size_mb.get(challenger)
        if (
            held_size is not None
            and challenging_size is not None
            and abs(held_size - challenging_size) > SIZE_TIE * max(held_size, challenging_size)
        ):
            winner, loser = (
                (challenger, holder) if challenging_size < held_size else (holder, challenger)
            )
            return winner, (
                f"smaller ({self.size_mb[winner]:.4g} MB against {self.size_mb[loser]:.4g} MB)"
            )
        return holder, "equal on every count of the tie order, so it keeps its place"


@dataclass(frozen=True)
class Bout:
    """One paired block of the final: ``challenger`` timed against ``holder``."""

    holder: str
    challenger: str
    speedup: Estimate | None
    """The challenger's speedup over the holder; None when the block could not be run."""
    winner: str
    why: str

    def to_json(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "challenger": self.challenger,
            "speedup": self.speedup.point if self.speedup else None,
            "interval": [self.speedup.low, self.speedup.high] if self.speedup else None,
            "rounds": self.speedup.samples if self.speedup else None,
            "winner": self.winner,
            "why": self.why,
        }


@dataclass(frozen=True)
class Final:
    """The head-to-head final: the leader by speedup over the original against the next
    fastest passing candidates, each timed against whoever holds the place."""

    leader: str
    contenders: list[str]
    bouts: list[Bout]
    chosen: str

    @property
    def why(self) -> str:
        if not self.contenders:
            return "no other passing candidate may replace the original"
        if self.chosen == self.leader:
            held = "; ".join(f"against {b.challenger}, {b.why}" for b in self.bouts)
            return f"{self.leader} kept its place: {held}"
        path = [
            f"{b.challenger} took the place of {b.holder}: {b.why}"
            for b in self.bouts
            if b.winner == b.challenger
        ]
        return "; then ".join(path)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Final:
        """A final a measure stage recorded, for the decide stage, which cannot time."""
        bouts = []
        for bout in data["bouts"]:
            low, high = bout["interval"] or (None, None)
            speedup = (
                None
                if bout["speedup"] is None
                else Estimate(bout["speedup"], low, high, int(bout.get("rounds") or 0))
            )
            bouts.append(
                Bout(bout["holder"], bout["challenger"], speedup, bout["winner"], bout["why"])
            )
        return cls(data["leader"], list(data["contenders"]), bouts, data["chosen"])

    def to_json(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "contenders": self.contenders,
            "bouts": [bout.to_json() for bout in self.bouts],
            "chosen": self.chosen,
            "why": self.why,
        }


def may_replace(standings: Sequence[Standing], min_gain: float) -> Callable[[Standing], bool]:
    """The test ``choose`` holds a replacement of the original to, as one predicate."""
    original = next((s for s in standings if s.name == ORIGINAL), None)
    if original is not None and original.eligible:
        return lambda s: s.eligible and s.speedup.point >= 1.0 + min_gain and s.speedup.low > 1.0
    if original is not None and original.status == "inconclusive":
        return lambda s: s.eligible and s.speedup.low > 1.0
    return lambda s: s.eligible


def final_contenders(
    standings: Sequence[Standing], leader: str, min_gain: float, limit: int
) -> list[Standing]:
    """The next ``limit`` fastest candidates that may replace the original as the leader
    does. Not only those whose intervals overlap the leader's: each was timed against the
    original in a block of its own, and blocks drift apart by more than their intervals
    say (the same model timed twice in one run: 1.14x and 1.07x, bench/RESULTS.md). A
    bout the leader wins clearly stops after ``measure.min_runs``, so asking costs little."""
    qualifies = may_replace(standings, min_gain)
    others = [s for s in standings if s.name not in (leader, ORIGINAL) and qualifies(s)]
    return sorted(others, key=lambda s: -s.speedup.point)[:limit]


def settle_bout(
    holder: str, challenger: str, speedup: Estimate | None, ties: TieBreak, error: str = ""
) -> Bout:
    """Who holds the place after ``challenger`` was timed against ``holder``: the one
    surely faster, else the tie order."""
    if speedup is None:
        return Bout(holder, challenger, None, holder, f"the block could not be run ({error})")
    shown = _interval(speedup)
    if speedup.low > 1.0:
        return Bout(holder, challenger, speedup, challenger, f"surely faster ({shown})")
    if speedup.high < 1.0:
        return Bout(holder, challenger, speedup, holder, f"{challenger} is surely slower ({shown})")
    winner, why = ties.settle(holder, challenger)
    return Bout(holder, challenger, speedup, winner, f"tied ({shown}); {why}")


def run_final(
    leader: str,
    contenders: Sequence[str],
    time_against: Callable[[str, str], tuple[Estimate | None, str]],
    ties: TieBreak,
) -> Final:
    """King of the hill: each contender, fastest first, timed against whoever holds the
    place. ``time_against(holder, challenger)`` gives the challenger's speedup over the
    holder from one paired block (or None and why it failed)."""
    holder, bouts = leader, []
    for challenger in contenders:
        speedup, error = time_against(holder, challenger)
        bout = settle_bout(holder, challenger, speedup, ties, error)
        bouts.append(bout)
        holder = bout.winner
    return Final(leader, list(contenders), bouts, holder)
