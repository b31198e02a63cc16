"""Step 4: time the original and each candidate in paired, alternating runs.

Every candidate is timed in its own block against the original: both warmed,
then run in alternating order (original first on even rounds, candidate first
on odd ones) on the same bound inputs, so drift and cache effects hit both
equally. A shared loop over all candidates would leave the rarely-run ones
cold (an identical copy measured 0.60x that way; see anchors/optimisers.md).

Sampling is adaptive: after ``min_runs`` pairs and ``min_seconds`` the block stops as soon as
``is_decided`` says every question asked of it is answered, or at
``max_seconds`` / ``max_runs``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gate.metrics import TIMING_METRICS
from gate.policy.loading import Budget, MeasureSettings
from gate.records import Sample
from gate.stats import (
    CONFIDENCE,
    UNDECIDED,
    Estimate,
    abba_ratios,
    coefficient_of_variation,
    decide,
    per_unit,
    quantile_estimate,
    ratio_estimate,
)

QUANTILE_METRICS = {"latency_ms.p50": 0.50, "latency_ms.p95": 0.95, "latency_ms.p99": 0.99}
MIN_PAIRS = 5
BURST_TARGET_MS = 0.5
DEFAULT_CAP_S = 4.0
CAP_ROUNDS = 60  # enough rounds for a 95% bound on a median of ABBA ratios, with room to spare
LONGEST_CAP_S = 120.0
COST_FORMULA = "usd_per_million = usd_per_hour / (throughput_per_s * 3600) * 1e6"


@dataclass
class Timing:
    """One block. ``*_ms`` hold every timed run (for percentiles); ``*_turns`` the
    mean of each turn's burst, paired round by round (for the speedup)."""

    candidate_ms: list[float] = field(default_factory=list)
    original_ms: list[float] = field(default_factory=list)
    candidate_turns: list[float] = field(default_factory=list)
    original_turns: list[float] = field(default_factory=list)
    burst: int = 1
    cap_seconds: float = 0.0
    stopped_by: str = ""
    seconds: float = 0.0

    @property
    def rounds(self) -> int:
        return len(self.candidate_turns)

    def describe(self) -> dict[str, Any]:
        ratios = abba_ratios(self.original_turns, self.candidate_turns)
        return {
            "rounds": self.rounds,
            "burst": self.burst,
            "timed_runs": len(self.candidate_ms),
            "stopped_by": self.stopped_by,
            "seconds": round(self.seconds, 3),
            "cap_seconds": round(self.cap_seconds, 3),
            "cv_candidate": coefficient_of_variation(self.candidate_ms),
            "cv_original": coefficient_of_variation(self.original_ms),
            "cv_paired_ratio": coefficient_of_variation(ratios),
            "original_p50_ms_in_block": float(np.median(self.original_ms)),
        }


class BoundRunner:
    """A session with its inputs bound once, so the timed call does no Python-side copying.

    Outputs stay bound between runs, so ONNX Runtime writes into the buffers of the
    previous run - unless the model declares an output shape that differs from what it
    returns (published models often do): ORT then refuses its own buffer from the last
    run ("Invalid rank for output"), so outputs are bound afresh before each run, outside
    the timed region, and allocated inside it as ``InferenceSession.run`` would.
    """

    def __init__(self, session: Any, feed: Mapping[str, np.ndarray]) -> None:
        self.session = session
        self.binding = session.io_binding()
        for name, value in feed.items():
            self.binding.bind_cpu_input(name, np.ascontiguousarray(value))
        self.output_names = [output.name for output in session.get_outputs()]
        self._bind_outputs()
        self.rebind: bool | None = None
        """Known after the first run (a warm-up, untimed by callers)."""

    def _bind_outputs(self) -> None:
        self.binding.clear_binding_outputs()
        for name in self.output_names:
            self.binding.bind_output(name)

    def _declared_shapes_wrong(self) -> bool:
        return any(
            not shape_fits(output.shape, value.shape())
            for output, value in zip(
                self.session.get_outputs(), self.binding.get_outputs(), strict=True
            )
            if output.type.startswith("tensor(")  # a ZipMap's sequence of maps has no shape
        )

    def timed_run(self) -> float:
        if self.rebind:
            self._bind_outputs()
        start = time.perf_counter_ns()
        try:
            self.session.run_with_iobinding(self.binding)
        except RuntimeError:
            if self.rebind is not False:
                raise
            # A declared shape the check let through (ORT says [] for "unknown" and for a
            # scalar alike) and ORT refused last run's buffer: bind afresh from now on.
            self.rebind = True
            return self.timed_run()
        elapsed = (time.perf_counter_ns() - start) / 1e6
        if self.rebind is None:
            self.rebind = self._declared_shapes_wrong()
        return elapsed


class CallRunner:
    """A framework model's run (a function of no arguments) timed like a session, so it
    takes the original's place in a paired block (``runtime_speedup``)."""

    rebind = False

    def __init__(self, run: Callable[[], Any]) -> None:
        self.run = run

    def timed_run(self) -> float:
        start = time.perf_counter_ns()
        self.run()
        return (time.perf_counter_ns() - start) / 1e6


def _runner(model: Any, feed: Sample) -> BoundRunner | CallRunner:
    return model if isinstance(model, CallRunner) else BoundRunner(model, feed)


def shape_fits(declared: Sequence[Any] | None, returned: Sequence[int]) -> bool:
    """Whether a returned shape fits a declared one: same rank, and each fixed dimension
    equal (symbolic and unknown dimensions fit any size; ORT reports an output declared
    without a shape as [], so [] fits anything)."""
    if not declared:
        return True
    if len(declared) != len(returned):
        return False
    return all(
        not isinstance(d, int) or d <= 0 or d == n for d, n in zip(declared, returned, strict=True)
    )


def auto_burst(latency_ms: float) -> int:
    """Timed runs per turn for ``measure.burst: 0``: enough to fill about 0.5 ms, at most 32.

    Alternating single runs of two sub-millisecond models measures each with
    the other's data in the caches and its worker threads asleep: on the
    bundled 0.05 ms model that hid most of a 1.7-3x int8 speedup. Bursts after
    one untimed refill run measure each model warm, as it runs in production.
    The price, measured on a shared 2-core runner: fresh session pairs of one
    model then differ by up to 10% instead of 2%, so single runs stay the
    default and bursts are opt-in (check them with ``onnx-gate noise``).
    """
    if latency_ms <= 0:
        return 1
    return int(min(32, max(1, round(BURST_TARGET_MS / latency_ms))))


def block_cap(settings: MeasureSettings, round_ms: float) -> float:
    """Seconds a block may run: ``measure.max_seconds`` when the policy sets it; otherwise
    4 s, or time for 60 rounds of a slow model (at most 120 s), so that a 200 ms model
    is not left undecided on a handful of rounds."""
    if settings.max_seconds is not None:
        return settings.max_seconds
    return min(LONGEST_CAP_S, max(DEFAULT_CAP_S, CAP_ROUNDS * round_ms / 1000.0))


def time_pair(
    original: Any,
    candidate: Any,
    feed: Sample,
    settings: MeasureSettings,
    is_decided: Callable[[Timing], bool] | None = None,
) -> Timing:
    """Alternate turns of original and candidate until decided, or until a cap. Either may be
    a ``CallRunner`` (a framework model) instead of a session."""
    base, cand = _runner(original, feed), _runner(candidate, feed)
    warm = []
    for _ in range(max(settings.warmup_runs, 1)):
        warm.append(base.timed_run())
        warm.append(cand.timed_run())
    if base.rebind or cand.rebind:  # allocate outputs in both timed regions, or in neither
        base.rebind = cand.rebind = True
    burst = settings.burst or auto_burst(float(np.median(warm)))
    refill = 1 if burst > 1 else 0
    cap = block_cap(settings, 2 * (burst + refill) * float(np.median(warm)))
    timing = Timing(burst=burst, cap_seconds=cap)

    def turn(runner: BoundRunner, runs: list[float], turns: list[float]) -> None:
        for _ in range(refill):
            runner.timed_run()
        times = [runner.timed_run() for _ in range(burst)]
        runs.extend(times)
        turns.append(sum(times) / burst)

    started = time.perf_counter()
    rounds, next_check = 0, settings.min_runs
    while True:
        if rounds % 2 == 0:
            turn(base, timing.original_ms, timing.original_turns)
            turn(cand, timing.candidate_ms, timing.candidate_turns)
        else:
            turn(cand, timing.candidate_ms, timing.candidate_turns)
            turn(base, timing.original_ms, timing.original_turns)
        rounds += 1
        if rounds >= settings.max_runs:
            timing.stopped_by = "max_runs"
            break
        # The time cap wins over min_runs for slow models, but never below a handful of rounds.
        if rounds >= MIN_PAIRS and time.perf_counter() - started >= cap:
            timing.stopped_by = "max_seconds"
            break
        if rounds >= next_check:
            # Checks cost a sort; space them out so they stay a small share of the block.
            next_check = rounds + max(10, rounds // 10)
            # A block shorter than min_seconds can sit inside one burst of a neighbour's load.
            long_enough = time.perf_counter() - started >= settings.min_seconds
            if long_enough and is_decided is not None and is_decided(timing):
                timing.stopped_by = "decided"
                break
    timing.seconds = time.perf_counter() - started
    return timing


LATENCY_QUANTILES = tuple(q / 20 for q in range(21))


def latency_quantiles(runs: Sequence[float]) -> list[float]:
    """Every 5th percentile of a block's timed runs, min and max included: the latency
    distribution in 21 numbers (report.html draws it)."""
    return [float(v) for v in np.quantile(np.asarray(runs, dtype=np.float64), LATENCY_QUANTILES)]


def _mean_estimate(samples: list[float], confidence: float) -> Estimate:
    from statistics import NormalDist

    values = np.asarray(samples, dtype=np.float64)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    mean = float(values.mean())
    return Estimate(mean, mean - half, mean + half, len(values), confidence)


def timing_estimates(
    candidate_ms: list[float],
    paired_turns: tuple[list[float], list[float]] | None,
    batch: int,
    usd_per_hour: float | None,
    confidence: float = CONFIDENCE,
    session_noise: float = 0.0,
) -> dict[str, Estimate]:
    """Every timing metric with its interval.

    ``candidate_ms`` are single runs (for percentiles); ``paired_turns`` the
    (original, candidate) turn means of a block, None for the original itself.
    Intervals from one block only see the noise inside it; fresh sessions of
    one model differ by a percent or two more (``onnx-gate noise``), so every
    interval is widened by ``session_noise`` each way.
    """
    estimates = {
        name: quantile_estimate(candidate_ms, q, confidence).widened(session_noise)
        for name, q in QUANTILE_METRICS.items()
    }
    estimates["latency_ms.mean"] = _mean_estimate(candidate_ms, confidence).widened(session_noise)
    median = estimates["latency_ms.p50"]
    estimates["throughput_per_s"] = median.map(per_unit(batch * 1000.0), decreasing=True)
    if usd_per_hour is not None:
        # usd / (throughput * 3600) * 1e6 is proportional to latency: map the median latency directly.
        estimates["usd_per_million"] = median.map(
            lambda ms: usd_per_hour * ms / (batch * 3600.0 * 1000.0) * 1e6
        )
    if paired_turns is None:
        estimates["speedup"] = Estimate(1.0, 1.0, 1.0, len(candidate_ms), confidence)
    else:
        estimates["speedup"] = ratio_estimate(*paired_turns, confidence).widened(session_noise)
    return estimates


def timer_overhead_ns(repeats: int = 2000) -> float:
    """Median cost of the two clock reads around every timed run."""
    deltas = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        deltas.append(time.perf_counter_ns() - start)
    return float(np.median(deltas))


EARLY_STOP_STRICTNESS = 10
"""Looking again and again until an interval excludes the threshold would decide wrongly
far more often than 1 - confidence: early stops use an interval this much stricter."""


@dataclass(frozen=True)
class Estimator:
    """One run's timing estimates: its batch, its price and its measure.* settings."""

    batch: int
    usd_per_hour: float | None
    measure: MeasureSettings

    def __call__(
        self,
        samples: list[float],
        paired_turns: tuple[list[float], list[float]] | None,
        confidence: float | None = None,
    ) -> dict[str, Estimate]:
        return timing_estimates(
            samples, paired_turns, self.batch, self.usd_per_hour,
            confidence or self.measure.confidence, self.measure.session_noise,
        )  # fmt: skip

    def stopping_rule(
        self, budgets: Sequence[Budget], min_gain: float, original_only: bool = False
    ) -> Callable[[Timing], bool]:
        """When a block may stop: every interval-aggregated timing budget and the
        question "is it surely faster, or surely not enough faster" are answered."""
        timed = [
            b for b in budgets
            if b.metric in TIMING_METRICS and b.aggregation == "interval" and b.level != "off"
        ]  # fmt: skip
        stricter = 1.0 - (1.0 - self.measure.confidence) / EARLY_STOP_STRICTNESS

        def is_decided(timing: Timing) -> bool:
            if original_only:  # its speedup is 1 by definition; only its own budgets matter
                estimates = self(timing.original_ms, None, stricter)
            else:
                turns = (timing.original_turns, timing.candidate_turns)
                estimates = self(timing.candidate_ms, turns, stricter)
            for budget in timed:
                estimate = estimates.get(budget.metric)
                if (
                    estimate is not None
                    and decide(estimate, budget.op, budget.threshold) == UNDECIDED
                ):
                    return False
            if original_only:
                return True
            speedup = estimates["speedup"]
            return speedup.low > 1.0 or speedup.high < 1.0 + min_gain

        return is_decided

    def head_to_head_rule(self, min_gain: float) -> Callable[[Timing], bool]:
        """When a block between two candidates may stop: one is surely faster, or they
        surely differ by less than ``min_gain`` either way (a tie, settled by the tie order)."""
        stricter = 1.0 - (1.0 - self.measure.confidence) / EARLY_STOP_STRICTNESS
        # Intervals are widened by measure.session_noise: a narrower band could never hold one.
        band = max(min_gain, 2 * self.measure.session_noise)

        def is_decided(timing: Timing) -> bool:
            turns = (timing.original_turns, timing.candidate_turns)
            speedup = self(timing.candidate_ms, turns, stricter)["speedup"]
            tied = speedup.low > 1.0 / (1.0 + band) and speedup.high < 1.0 + band
            return speedup.low > 1.0 or speedup.high < 1.0 or tied

        return is_decided
