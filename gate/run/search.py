"""Step 2, searched: which candidates to build, in what order, and when to stop.

With ``candidates: auto`` every quantiser and graph optimiser proposes what is
worth trying on this model and target (:class:`gate.records.Proposal`); the
search tries them in order of expected value, revises the expectations of a
whole family after each measurement, inserts accuracy fallbacks for fast but
inaccurate quantised candidates, and stops at ``search.max_trials`` or
``search.max_seconds``. A policy's own list is tried in its order, with the
same limits and fallbacks.

Nothing here builds or times anything: the pipeline does, and reports back
through :meth:`Search.observe`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

from gate.errors import listed
from gate.graph import QUANTIZED_OPS, decode_tail, graphs, model_kind, op_counts, weight_share
from gate.host.manager import Host, call_plugin
from gate.policy.loading import DEFAULT_GRAPH_PLUGIN, Recipe, SearchSettings
from gate.records import Proposal, SearchContext
from gate.stats import Estimate

PRIOR_SPREAD = 0.35
"""How far off a plugin's expected speedup may be: the sd of its log (about +-35%)."""
LEARNING_CLAMP = (0.25, 4.0)
"""A measurement moves its family's expectations by at most this factor."""
FALLBACK_COVERAGE = (0.1, 0.5)
"""Each fallback excludes the fewest nodes that add a share of the remaining error: twice
the share of its accuracy loss the candidate must win back, within these bounds (a
candidate just short of its budget reverts a little, one far off halves its error)."""
MIN_BUILD_SECONDS = 30.0
COMBINATION_FAILED = 0.1
"""After a rewrite + quantiser combination fails, its siblings keep this share of their odds."""


def search_context(
    model_path: Path,
    testbed: dict[str, Any],
    provider: str,
    has_calibration: bool,
    baseline_level: str,
) -> SearchContext:
    import numpy as np
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    counts = op_counts(graph)
    share = weight_share(graph)
    cpu = testbed.get("cpu") or {}
    parameters = sum(int(np.prod(t.dims)) for body in graphs(graph) for t in body.initializer)
    return SearchContext(
        provider=provider,
        arch=str(cpu.get("arch") or ""),
        cpu_flags=frozenset(cpu.get("flags") or ()),
        vnni=bool(cpu.get("vnni")),
        op_counts=dict(counts),
        weight_share=share,
        parameters=parameters,
        kind=model_kind(counts, share),
        quantized_ops=tuple(sorted(set(counts) & QUANTIZED_OPS)),
        has_calibration=has_calibration,
        baseline_level=baseline_level,
        decode_tail=decode_tail(graph),
    )


def describe_context(context: SearchContext) -> dict[str, Any]:
    top = sorted(context.weight_share.items(), key=lambda item: -item[1])[:5]
    return {
        "provider": context.provider,
        "arch": context.arch,
        "cpu_flags": sorted(context.cpu_flags),
        "vnni": context.vnni,
        "model_kind": context.kind,
        "parameters": context.parameters,
        "weight_share": {op: round(value, 3) for op, value in top},
        "quantized_ops": list(context.quantized_ops),
        "decode_tail": len(context.decode_tail),
        "calibration_data": context.has_calibration,
    }


@dataclass
class Trial:
    """A recipe waiting in the search, with what is expected of it and where it came from."""

    recipe: Recipe
    origin: str
    """``policy`` (listed in the policy), ``proposed`` (by a plugin) or ``fallback``."""
    expected_speedup: float | None = None
    accuracy_risk: float = 0.0
    reason: str = ""
    families: tuple[str, ...] = ()
    parent: str | None = None
    excluded_nodes: tuple[str, ...] = ()
    prior_speedup: float | None = None
    """The proposer's expectation, as reported; ``expected_speedup`` moves as the search learns."""
    order: int | None = None
    """Position in which it was tried (1-based); None while waiting."""
    counted: bool = True
    """False for a trial a plugin skipped: it cost next to nothing, so search.max_trials ignores it."""
    derived_from: str | None = None
    """A fallback's own parent (``parent`` is the root of its chain)."""

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def kept_in_float(self) -> tuple[str, ...]:
        """Nodes its quantiser leaves alone: its recipe's own ``nodes_to_exclude`` (a
        placement variant's decoding tail, a policy's list) and what fallbacks added."""
        own = (self.recipe.quantize or {}).get("nodes_to_exclude") or ()
        return tuple(dict.fromkeys((*own, *self.excluded_nodes)))

    def value(self, to_beat: float) -> float:
        """Expected improvement over the speedup ``to_beat``, times the chance of keeping accuracy.

        The speedup is taken as log-normal around the expectation (``PRIOR_SPREAD``),
        so a recipe expected at 0.97x still has a small chance to beat 1.05x, and a
        risky 1.5x one is worth more than a safe 1.0x one.
        """
        if not self.expected_speedup:
            return 0.0
        mean, sigma = self.expected_speedup, PRIOR_SPREAD
        d1 = (math.log(mean / to_beat) + sigma**2) / sigma
        normal = NormalDist()
        gain = mean * math.exp(sigma**2 / 2) * normal.cdf(d1) - to_beat * normal.cdf(d1 - sigma)
        return max(gain, 0.0) * (1.0 - self.accuracy_risk)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"origin": self.origin, "order": self.order}
        if self.expected_speedup is not None:
            described.update(
                expected_speedup=round(self.prior_speedup or self.expected_speedup, 3),
                accuracy_risk=round(self.accuracy_risk, 3),
            )
        if self.reason:
            described["reason"] = self.reason
        if self.parent:
            described.update(parent=self.parent, excluded_nodes=list(self.excluded_nodes))
        return described


def _same_combination(one: Trial, other: Trial) -> bool:
    """Both quantise with the same plugin after the same rewrite."""
    return one.recipe.rewrite == other.recipe.rewrite and (one.recipe.quantize or {}).get(
        "plugin"
    ) == (other.recipe.quantize or {}).get("plugin")


@dataclass
class Declined:
    plugin: str
    name: str
    reason: str

    def describe(self) -> dict[str, str]:
        return {"plugin": self.plugin, "name": self.name, "reason": self.reason}


def propose(
    host: Host, context: SearchContext, settings: SearchSettings
) -> tuple[list[Trial], list[Declined]]:
    """Every plugin's proposals as trials, plus what plugins considered and declined.

    A graph optimiser that rewrites (transformer fusion) is also combined with
    every quantiser proposal, since fusing first lets quantisation use fused kernels.
    A plugin that raises, or proposes something unusable, is recorded as declined.
    """
    trials: list[Trial] = []
    declined: list[Declined] = []
    quantized: list[tuple[Any, Proposal]] = []
    rewrites: list[tuple[Any, Proposal]] = []
    graph = {"plugin": DEFAULT_GRAPH_PLUGIN, "level": context.baseline_level}
    for kind in ("graph_optimizer", "quantizer"):
        for record in host.records[kind].values():
            if record.propose is None or record.name in settings.exclude:
                continue
            try:
                proposals = list(call_plugin(record, "propose candidates", record.propose, context))
                for proposal in proposals:
                    _check_proposal(record, proposal)
            except Exception as exc:  # a plugin's bad guess must not stop the search
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                declined.append(Declined(record.plugin, record.name, message))
                continue
            for proposal in proposals:
                step = {"plugin": record.name, **proposal.options}
                if proposal.declined:
                    declined.append(Declined(record.plugin, proposal.name, proposal.reason))
                    continue
                if kind == "quantizer":
                    quantized.append((record, proposal))
                    recipe = Recipe(proposal.name, dict(graph), step)
                elif record.rewrites:
                    rewrites.append((record, proposal))
                    recipe = Recipe(proposal.name, dict(graph), rewrite=step)
                else:
                    recipe = Recipe(proposal.name, step)
                trials.append(_trial(recipe, proposal))
    for rewriter, rewrite in rewrites:
        for quantizer, quantize in quantized:
            combined = Proposal(
                f"{rewrite.name}+{quantize.name}",
                {},
                rewrite.expected_speedup * quantize.expected_speedup,
                f"{quantize.reason}; after {rewrite.name}",
                1.0 - (1.0 - rewrite.accuracy_risk) * (1.0 - quantize.accuracy_risk),
            )
            recipe = Recipe(
                combined.name,
                dict(graph),
                {"plugin": quantizer.name, **quantize.options},
                rewrite={"plugin": rewriter.name, **rewrite.options},
            )
            trial = _trial(recipe, combined)
            trial.families = tuple(f for f in (rewrite.family, quantize.family) if f)
            trials.append(trial)
    return _unique(trials, declined), declined


def _check_proposal(record: Any, proposal: Any) -> None:
    """A proposal becomes a recipe and a folder name: hold it to what a policy could say."""
    import re

    from gate.policy.loading import POLICY_SCHEMA, format_location, load_schema, schema_problems

    if not isinstance(proposal, Proposal):
        raise ValueError(f"proposed a {type(proposal).__name__}, not a gate.Proposal")
    pattern = load_schema(POLICY_SCHEMA)["$defs"]["recipe"]["properties"]["name"]["pattern"]
    if not isinstance(proposal.name, str) or not re.fullmatch(pattern, proposal.name):
        raise ValueError(f"proposed an invalid candidate name {proposal.name!r}")
    if proposal.declined:
        return
    if not (math.isfinite(proposal.expected_speedup) and proposal.expected_speedup > 0):
        raise ValueError(f"{proposal.name}: expected_speedup must be a positive number")
    if not 0.0 <= proposal.accuracy_risk <= 1.0:
        raise ValueError(f"{proposal.name}: accuracy_risk must be between 0 and 1")
    problems = schema_problems(dict(proposal.options), record.options_schema)
    if "plugin" in proposal.options or problems:
        where, message = problems[0] if problems else (("plugin",), "is not an option")
        raise ValueError(f"{proposal.name}: option {format_location(where)}: {message}")


def _trial(recipe: Recipe, proposal: Proposal) -> Trial:
    return Trial(
        recipe,
        "proposed",
        proposal.expected_speedup,
        proposal.accuracy_risk,
        proposal.reason,
        (proposal.family,) if proposal.family else (),
        prior_speedup=proposal.expected_speedup,
    )


def _unique(trials: list[Trial], declined: list[Declined]) -> list[Trial]:
    seen: dict[str, Trial] = {}
    for trial in trials:
        if trial.name == "original":
            declined.append(
                Declined("", trial.name, "'original' is reserved for the model as given")
            )
        elif trial.name in seen:
            declined.append(
                Declined("", trial.name, "another plugin already proposed a candidate of this name")
            )
        else:
            seen[trial.name] = trial
    return list(seen.values())


@dataclass
class Search:
    """The queue of trials and the search's limits; the pipeline pulls and reports back."""

    trials: list[Trial]
    settings: SearchSettings
    auto: bool
    clock: Callable[[], float] = time.perf_counter
    declined: list[Declined] = field(default_factory=list)
    context: SearchContext | None = None
    tried: list[Trial] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    stopped_by: str = "running"
    """``running``, then ``exhausted`` (every trial tried), ``max_trials`` or ``max_seconds``."""
    started: float = 0.0
    to_beat: float = 1.0
    """The speedup a trial must beat to matter: 1 + selection.min_gain, or the best passing one."""

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.waiting = list(self.trials)

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining_seconds(self) -> float:
        return self.settings.max_seconds - self.elapsed

    def next_trial(self) -> Trial | None:
        """The most promising waiting trial, or None when done or out of budget."""
        if not self.waiting:
            self.stopped_by = "exhausted"
            return None
        if sum(t.counted for t in self.tried) >= self.settings.max_trials:
            self.stopped_by = "max_trials"
            return None
        if self.remaining_seconds() <= 0:
            self.stopped_by = "max_seconds"
            return None
        fallbacks = [t for t in self.waiting if t.origin == "fallback"]
        if fallbacks and self.auto:  # recover a fast candidate's accuracy before moving on
            trial = fallbacks[0]
        elif self.auto:
            trial = max(self.waiting, key=lambda t: t.value(self.to_beat))
        else:
            trial = self.waiting[0]
        self.waiting.remove(trial)
        self.tried.append(trial)
        trial.order = len(self.tried)
        return trial

    def build_timeout(self, configured: float) -> tuple[float, str]:
        """Seconds the next build may take, and the setting that decided it."""
        remaining = max(self.remaining_seconds(), MIN_BUILD_SECONDS)
        if remaining < configured:
            return remaining, "search.max_seconds"
        return configured, "build.timeout_s"

    def observe(self, trial: Trial, outcome: str, speedup: float | None) -> None:
        """Revise the expectations of waiting trials that share a family with ``trial``.

        ``outcome``: ``passed``, ``accuracy`` (missed an accuracy budget), ``rejected``
        (another budget), ``failed`` (build, load or run) or ``skipped``.
        """
        if outcome == "skipped":
            trial.counted = False
            if trial.recipe.rewrite is not None and trial.recipe.quantize is None:
                # The rewrite itself declined the model: every combination with it would too.
                dropped = [t for t in self.waiting if t.recipe.rewrite == trial.recipe.rewrite]
                self.waiting = [t for t in self.waiting if all(t is not d for d in dropped)]
                if dropped:
                    self.log.append(
                        f"{trial.name} was skipped, so {len(dropped)} candidate(s) built on it were dropped"
                    )
            return
        if outcome == "passed" and speedup is not None:
            self.to_beat = max(self.to_beat, speedup)
        if not self.auto:
            return
        if (
            outcome == "failed"
            and trial.recipe.rewrite
            and trial.recipe.quantize
            and trial.origin != "fallback"  # its own exclusions may be what broke it
        ):
            # A quantiser that cannot build on a rewritten graph (ORT's static quantiser on
            # some fused graphs) fails the same way in its other variants there.
            same = [t for t in self.waiting if _same_combination(t, trial)]
            for other in same:
                other.accuracy_risk = 1.0 - (1.0 - other.accuracy_risk) * COMBINATION_FAILED
            if same:
                self.log.append(
                    f"{trial.name} failed: {len(same)} other {trial.recipe.quantize['plugin']} "
                    f"candidate(s) on the same rewrite are now far less likely to be tried"
                )
            return
        if not trial.families or trial.origin == "fallback":
            # A fallback's outcome speaks for its own chain, which the fallback rules
            # follow; counting it against the family too would write off every sibling.
            return
        factor = 1.0
        if speedup is not None and trial.expected_speedup:
            low, high = LEARNING_CLAMP
            factor = min(max(speedup / trial.expected_speedup, low), high)
        for other in self.waiting:
            if other.origin != "proposed" or not set(other.families) & set(trial.families):
                continue
            if other.expected_speedup is not None:
                other.expected_speedup *= factor
            if outcome in ("accuracy", "failed"):
                other.accuracy_risk = 1.0 - (1.0 - other.accuracy_risk) * 0.5
            elif outcome == "passed":
                other.accuracy_risk *= 0.5

    def fallbacks_of(self, root: str) -> int:
        """Fallbacks already made for the candidate named ``root``."""
        return sum(1 for t in (*self.tried, *self.waiting) if t.parent == root)

    def why_no_fallback(self, trial: Trial, quantizer: Any, speedup: Estimate | None) -> str | None:
        """Why a candidate that missed only accuracy budgets is not retried with its worst
        nodes in float (its quantizer takes no nodes_to_exclude, it cannot be fast enough,
        or search.max_fallbacks is spent); None: it is."""
        name, plugin = trial.name, (trial.recipe.quantize or {}).get("plugin")
        if quantizer is None or "nodes_to_exclude" not in quantizer.options_schema.get(
            "properties", {}
        ):
            return f"{name}: no accuracy fallback: quantizer '{plugin}' takes no nodes_to_exclude"
        if speedup is not None and speedup.high < self.to_beat:
            return (
                f"{name}: no accuracy fallback: at {speedup.point:.2f}x (at most {speedup.high:.2f}x) "
                f"it cannot beat {self.to_beat:.2f}x (the original by selection.min_gain, or the "
                "best passing candidate), and keeping nodes in float only slows it"
            )
        if self.fallbacks_of(trial.parent or name) >= self.settings.max_fallbacks:
            return (
                f"{name}: no more fallbacks (search.max_fallbacks: {self.settings.max_fallbacks})"
            )
        return None

    def add_fallback(self, trial: Trial) -> str | None:
        """Queue a fallback: next in auto mode, after the policy's own list otherwise.

        Returns why it was refused, or None.
        """
        if any(t.name == trial.name for t in (*self.tried, *self.waiting)):
            return f"a candidate is already named {trial.name}"
        if self.auto:
            self.waiting.insert(0, trial)
        else:
            self.waiting.append(trial)
        return None

    def describe(self) -> dict[str, Any]:
        why = {
            "max_trials": f"search.max_trials ({self.settings.max_trials}) reached",
            "max_seconds": f"search.max_seconds ({self.settings.max_seconds:g}) reached",
        }.get(self.stopped_by, "the search has not reached it yet")
        ranked = (
            sorted(self.waiting, key=lambda t: -t.value(self.to_beat))
            if self.auto
            else self.waiting
        )
        described: dict[str, Any] = {
            "mode": "auto" if self.auto else "list",
            "max_trials": self.settings.max_trials,
            "max_seconds": self.settings.max_seconds,
            "fallback": self.settings.fallback,
            "max_fallbacks": self.settings.max_fallbacks,
            "exclude": list(self.settings.exclude),
            "tried": len(self.tried),
            "fallbacks": sum(1 for t in self.tried if t.origin == "fallback"),
            "seconds": round(self.elapsed, 3),
            "stopped_by": self.stopped_by,
            "not_tried": [{"name": t.name, "not_tried": why, **t.describe()} for t in ranked],
            "declined": [d.describe() for d in self.declined],
            "log": list(self.log),
        }
        if self.context is not None:
            described["context"] = describe_context(self.context)
        return described


def step_back(
    parent_ranking: Sequence[tuple[tuple[str, ...], float]], made_worse: Collection[str]
) -> list[tuple[tuple[str, ...], float]]:
    """The parent's ranking without the groups that touch ``made_worse``: for a fallback
    that lost more accuracy than its parent (errors that cancelled no longer do), the next
    try starts from the parent again and reverts the next groups instead."""
    worse = set(made_worse)
    return [(nodes, added) for nodes, added in parent_ranking if not worse & set(nodes)]


def known_worse(
    trials: Mapping[str, Trial], made_worse: Mapping[str, Collection[str]], name: str
) -> set[str]:
    """The nodes whose revert made an ancestor of ``name`` (or ``name`` itself) less
    accurate: a descendant ranking afresh must not revert them again."""
    worse: set[str] = set()
    seen: set[str] = set()
    current: str | None = name
    while current is not None and current not in seen:
        seen.add(current)
        worse |= set(made_worse.get(current, ()))
        trial = trials.get(current)
        current = trial.derived_from if trial is not None else None
    return worse


def fallback_coverage(shortfall: float | None) -> float:
    """The share of its remaining error a fallback reverts, from how far the candidate
    is from passing (:meth:`gate.run.scoring.Scoreboard.shortfall`; None: half)."""
    low, high = FALLBACK_COVERAGE
    return high if shortfall is None else min(max(2.0 * shortfall, low), high)


def fallback_trial(
    parent: Trial,
    ranking: Sequence[tuple[tuple[str, ...], float]],
    measured_speedup: float,
    taken: Collection[str] = (),
    coverage: float = FALLBACK_COVERAGE[1],
) -> Trial | None:
    """The parent's recipe with more nodes excluded, or None when nothing is left to exclude.

    ``ranking`` is (nodes, error they add) worst first, measured on the parent's
    own model. The fewest groups that add ``coverage`` of the error are excluded on
    top of what the parent keeps in float: at the most, each step halves what is left.
    """
    assert parent.recipe.quantize is not None
    kept = parent.kept_in_float
    already = set(kept)
    ranking = [(nodes, error) for nodes, error in ranking if error > 0 and set(nodes) - already]
    if not ranking:
        return None
    total = sum(error for _, error in ranking)
    chosen: list[str] = []
    covered = 0.0
    for nodes, error in ranking:
        chosen += [node for node in nodes if node not in already and node not in chosen]
        covered += error
        if covered >= coverage * total:
            break
    excluded = (*kept, *chosen)
    root = parent.parent or parent.name
    quantize = {**parent.recipe.quantize, "nodes_to_exclude": list(excluded)}
    name = base = f"{root}-x{len(excluded)}"
    for letter in "bcdefghijklmnopqrstuvwxyz":  # a step back can exclude as many, other nodes
        if name not in taken:
            break
        name = f"{base}{letter}"
    shown = listed(chosen, shown=5)
    return Trial(
        Recipe(name, dict(parent.recipe.graph), quantize, rewrite=parent.recipe.rewrite),
        "fallback",
        measured_speedup * 0.95,
        0.5,
        f"{parent.name} missed an accuracy budget: {len(chosen)} more node(s) kept in float "
        f"({shown}), where {covered / total:.0%} of its quantisation error arises",
        parent.families,
        parent=root,
        excluded_nodes=excluded,
        prior_speedup=measured_speedup * 0.95,
        derived_from=parent.name,
    )
