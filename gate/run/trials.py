"""Step 2 as a loop: propose, build, judge and learn, one trial at a time.

``SearchLoop.run`` asks the search (gate.run.search) for its next trial, builds it
(in a child process unless the policy says otherwise), has the ``Judge`` validate and
time it, tells the search what came of it and, when it missed accuracy only, queues
it again with the nodes that lost most left in float. It stops when the search says
so (``search.max_trials``, ``max_seconds``, nothing left worth trying).
"""

from __future__ import annotations

from pathlib import Path

from gate.errors import first_line, listed
from gate.host.manager import Host
from gate.policy.loading import Policy, Recipe
from gate.progress import RESULT_PREFIX, Progress
from gate.report.model import ModelReport
from gate.run.candidates import ORIGINAL, Candidate, build_candidate
from gate.run.data import FeedSet
from gate.run.isolation import Isolation, build_isolated, save_feeds
from gate.run.load import LoadedModel
from gate.run.runtime import Target
from gate.run.scoring import Judge
from gate.run.search import (
    FALLBACK_COVERAGE,
    Search,
    Trial,
    fallback_coverage,
    fallback_trial,
    known_worse,
    propose,
    search_context,
    step_back,
)
from gate.run.sensitivity import rank_sources
from gate.stats import PASS


class SearchLoop:
    """The candidates of one run, built and judged most promising first."""

    def __init__(
        self,
        policy: Policy,
        host: Host,
        model: LoadedModel,
        target: Target,
        calibration: FeedSet,
        judge: Judge,
        work: Path,
        report: ModelReport,
        say: Progress,
    ) -> None:
        self.policy, self.host, self.model, self.target = policy, host, model, target
        self.calibration, self.judge, self.scores = calibration, judge, judge.scores
        self.work, self.report, self.say = work, report, say
        self.best_so_far: tuple[str, float] = (ORIGINAL, 1.0)
        self.trials: dict[str, Trial] = {}
        """Every trial built so far, by name (a fallback's parent is looked up here)."""
        self.rankings: dict[str, list[tuple[tuple[str, ...], float]]] = {}
        self.made_worse: dict[str, set[str]] = {}
        self.full_steps: set[str] = set()  # fallbacks whose next step reverts the most
        """Per fallback parent, the nodes whose revert lost accuracy: never reverted again."""
        self.calibration_file = work / "calibration.npz"
        self.isolate = self._isolation()

    def run(self) -> list[Candidate]:
        """Every candidate built, in the order tried; the report follows as they come."""
        if self.isolate:
            save_feeds(self.calibration.feeds, self.calibration_file)
        search = self._new_search()
        built: list[Candidate] = []
        while (trial := search.next_trial()) is not None:
            self.say(f"trial {trial.order}: building {trial.name}")
            candidate = self._build(trial.recipe, search)
            if not candidate.failed:
                self.say(f"trial {trial.order}: validating and measuring {trial.name}")
            entry = self.judge.judge(candidate)
            entry.search = trial.describe()
            self.trials[trial.name] = trial
            built.append(candidate)
            outcome = self.scores.outcome_so_far(candidate)
            search.observe(trial, outcome, entry.metrics.get("speedup"))
            self.say(RESULT_PREFIX + self._progress_line(candidate))
            if outcome == "accuracy":
                self._fallback(search, trial, candidate)
            entries = self.scores.entries
            self.report.candidates = [entries[ORIGINAL], *(entries[c.name] for c in built)]
            self.report.search = search.describe()
        self.report.search = search.describe()
        return built

    def _isolation(self) -> bool:
        """Whether candidates are built in a child process, as the report's build section says."""
        isolate = self.policy.build.isolate
        registered = [info.name for info in self.host.infos if info.source == "registered"]
        if isolate and registered:
            isolate = False
            self.report.warnings.append(
                f"plugins registered in this process ({listed(registered)}) cannot be seen by a child "
                "process: candidates were built in-process, without crash isolation"
            )
        self.report.build = {
            "isolate": isolate,
            "timeout_s": self.policy.build.timeout_s if isolate else None,
            "memory_mb": self.policy.build.memory_mb if isolate else None,
        }
        return isolate

    def _new_search(self) -> Search:
        policy = self.policy
        if policy.recipes is not None:
            return Search(
                [Trial(recipe, "policy") for recipe in policy.recipes], policy.search, False
            )
        context = search_context(
            self.model.path,
            self.report.testbed,
            self.target.provider,
            policy.calibration_path is not None,
            policy.baseline_graph["level"],
        )
        trials, declined = propose(self.host, context, policy.search)
        return Search(
            trials, policy.search, True,
            declined=declined, context=context, to_beat=1.0 + policy.min_gain,
        )  # fmt: skip

    def _build(self, recipe: Recipe, search: Search) -> Candidate:
        if not self.isolate:
            return build_candidate(
                recipe, self.model.path, self.model.input_shapes, self.host,
                self.work / "candidates", self.target.provider,
                lambda: iter(self.calibration.feeds), self.calibration.source,
            )  # fmt: skip
        timeout, limited_by = search.build_timeout(self.policy.build.timeout_s)
        return build_isolated(
            recipe, self.model.path, self.model.input_shapes, self.work / "candidates",
            self.target.provider, self.calibration_file, self.calibration.source,
            Isolation(timeout, self.policy.build.memory_mb, limited_by),
            self.target.provider_options,
        )  # fmt: skip

    def _progress_line(self, candidate: Candidate) -> str:
        """One result line, with the best candidate so far that meets every budget measured yet."""
        entry = self.scores.entries[candidate.name]
        if candidate.failed:
            return f"{candidate.name}: {'skipped' if candidate.skipped else 'failed'}: {candidate.error}"
        speedup = entry.metrics.get("speedup")
        if speedup is None:  # the build stage: validated, timed later on the target
            passing = self.scores.outcome_so_far(candidate) == "passed"
            return f"{candidate.name}: {'meets' if passing else 'misses'} the accuracy budgets"
        passing = all(
            r.decision == PASS
            for r in self.scores.evaluate_so_far(candidate.name)
            if r.budget.level == "error"
        )
        estimate = self.scores.estimates.get(candidate.name, {}).get("speedup")
        surely_faster = (
            estimate is not None
            and estimate.low > 1.0
            and estimate.point >= 1.0 + self.policy.min_gain
        )
        if passing and surely_faster and estimate.point > self.best_so_far[1]:
            self.best_so_far = (candidate.name, estimate.point)
        best, best_speedup = self.best_so_far
        return (
            f"{candidate.name}: {speedup:.2f}x, {'meets' if passing else 'misses'} the budgets so far; "
            f"best so far: {best} ({best_speedup:.2f}x)"
        )

    def _rank(
        self, search: Search, trial: Trial, candidate: Candidate
    ) -> list[tuple[tuple[str, ...], float]] | None:
        """The candidate's node groups by the error they add, worst first (kept for a later
        step back); None, with the reason in the log, when ranking failed."""
        name = candidate.name
        assert candidate.path is not None
        self.say(f"ranking the nodes of {name} by the error they add")
        # The float graph the quantiser was given: rewritten (fused) or equalised first.
        reference = self.model.path
        for step, file in (
            (trial.recipe.rewrite, "rewritten.onnx"),
            ((trial.recipe.quantize or {}).get("equalize"), "equalized.onnx"),
        ):
            if step and (candidate.path.parent / file).is_file():
                reference = candidate.path.parent / file
        try:
            ranking = rank_sources(
                reference, candidate.path, self.calibration.feeds, self.work / "sensitivity" / name
            )
        except Exception as exc:
            search.log.append(
                f"{name}: no accuracy fallback: ranking its nodes failed: {first_line(exc)}"
            )
            return None
        self.scores.entries[name].sensitivity = [source.describe() for source in ranking[:10]]
        self.rankings[name] = [(source.nodes, source.added) for source in ranking]
        return self.rankings[name]

    def _cannot_pass_in_time(self, search: Search, trial: Trial, parent: Trial) -> str | None:
        """Why going on from ``trial`` cannot pay, from what its last step bought: nothing
        (after a full step: a small one is retried at full size), or speed at a rate per
        unit of accuracy that, carried on to the budget, leaves it no faster than what it
        must beat; None: it may pay."""
        mine, theirs = self.scores.accuracy_of(trial.name), self.scores.accuracy_of(parent.name)
        if mine is None or theirs is None:
            return None
        gained, short = mine[0] - theirs[0], -mine[1]
        if short <= 0:
            return None
        if gained <= 0:
            if self._step_coverage(parent.name) < FALLBACK_COVERAGE[1]:
                # A near miss on a coarse metric (top-1 on few inputs, mAP on few boxes) can
                # measure the same after a small step: take a full one before giving up.
                self.full_steps.add(trial.name)
                return None
            return f"keeping more in float than {parent.name} bought no accuracy"
        speeds = [self.scores.estimates.get(t.name, {}).get("speedup") for t in (trial, parent)]
        if speeds[0] is None or speeds[1] is None or speeds[1].low <= speeds[0].high:
            return None  # untimed (the build stage), or the speed it cost is within noise
        cost = speeds[1].point - speeds[0].point
        projected = speeds[0].point - cost / gained * short
        if projected < search.to_beat:
            return (
                f"its last step cost {cost:.2f}x of speed for {gained:.3g} of accuracy; at that "
                f"rate it would reach the budget at about {max(projected, 0.0):.2f}x, short of "
                f"the {search.to_beat:.2f}x it must beat"
            )
        return None

    def _step_coverage(self, name: str) -> float:
        """The share of its error the next fallback of ``name`` reverts."""
        if name in self.full_steps:
            return FALLBACK_COVERAGE[1]
        return fallback_coverage(self.scores.shortfall(name))

    def _fallback(self, search: Search, trial: Trial, candidate: Candidate) -> None:
        """Queue the candidate again with the nodes that lost the most accuracy left in float."""
        name, quantize = candidate.name, trial.recipe.quantize
        if not self.policy.search.fallback or quantize is None or candidate.path is None:
            return
        quantizer = self.host.records["quantizer"].get(quantize["plugin"])
        speedup = self.scores.estimates.get(name, {}).get("speedup")
        refused = search.why_no_fallback(trial, quantizer, speedup)
        if refused is not None:
            search.log.append(refused)
            return
        base, groups = trial, None
        parent = self.trials.get(trial.derived_from or "")
        ranked = self.rankings.get(parent.name) if parent is not None else None
        if parent is not None and ranked and self.scores.less_accurate(name, parent.name):
            if parent.name in self.made_worse:
                search.log.append(
                    f"{name}: no accuracy fallback: a second revert from {parent.name} lost "
                    "accuracy too, so its loss is not where the error ranking finds it"
                )
                return
            worse = self.made_worse.setdefault(parent.name, set())
            worse |= set(trial.kept_in_float) - set(parent.kept_in_float)
            base, groups = parent, step_back(ranked, worse)
            search.log.append(
                f"{name} lost more accuracy than {parent.name}: stepping back to {parent.name}, "
                f"the {len(worse)} node(s) that made it worse quantised again"
            )
        if groups is None and parent is not None:
            hopeless = self._cannot_pass_in_time(search, trial, parent)
            if hopeless:
                search.log.append(f"{name}: no accuracy fallback: {hopeless}")
                return
        if groups is None:
            groups = self._rank(search, trial, candidate)
            if groups is None:
                return
            # What made an ancestor worse stays quantised in every later descendant too.
            inherited = known_worse(self.trials, self.made_worse, trial.name)
            if inherited:
                groups = step_back(groups, inherited)
        measured = self.scores.estimates.get(base.name, {}).get("speedup")
        child = fallback_trial(
            base,
            groups,
            measured.point if measured is not None else base.expected_speedup or 1.0,
            set(self.trials),
            self._step_coverage(base.name),
        )
        if child is None:
            search.log.append(
                f"{name}: no accuracy fallback: nothing it still quantises adds measurable error"
            )
            return
        refused = search.add_fallback(child)
        if refused:
            search.log.append(f"{name}: no accuracy fallback: {refused}")
            return
        search.log.append(f"{child.reason}; retrying as {child.name}")
