"""Step 4: time the original and each candidate in paired, alternating runs.

Every candidate is timed in its own block against the original: both warmed,
then run in alternating order (original first on even rounds, candidate first
on odd ones) on the same bound inputs, so drift and cache effects hit both
equally. A shared loop over all candidates would leave the rarely-run ones
cold (an identical copy measured 0.60x that way; see anchors/optimisers.md).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gate.policy import MeasureSettings
from gate.records import Sample


@dataclass
class Timing:
    candidate_ms: list[float] = field(default_factory=list)
    original_ms: list[float] = field(default_factory=list)
    stopped_by: str = ""
    seconds: float = 0.0

    @property
    def speedup(self) -> float:
        return float(np.median(self.original_ms) / np.median(self.candidate_ms))

    @property
    def paired_speedup(self) -> float:
        """Median of per-round ratios: robust to slow drift within the block."""
        ratios = np.asarray(self.original_ms) / np.asarray(self.candidate_ms)
        return float(np.median(ratios))


class BoundRunner:
    """A session with its inputs bound once, so the timed call does no Python-side copying."""

    def __init__(self, session: Any, feed: Mapping[str, np.ndarray]) -> None:
        self.session = session
        self.binding = session.io_binding()
        for name, value in feed.items():
            self.binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for output in session.get_outputs():
            self.binding.bind_output(output.name)

    def timed_run(self) -> float:
        start = time.perf_counter_ns()
        self.session.run_with_iobinding(self.binding)
        return (time.perf_counter_ns() - start) / 1e6


def time_pair(original: Any, candidate: Any, feed: Sample, settings: MeasureSettings) -> Timing:
    """Alternate original and candidate until enough runs or the time cap."""
    base, cand = BoundRunner(original, feed), BoundRunner(candidate, feed)
    for _ in range(settings.warmup_runs):
        base.timed_run()
        cand.timed_run()
    timing = Timing()
    started = time.perf_counter()
    rounds = 0
    while True:
        if rounds % 2 == 0:
            timing.original_ms.append(base.timed_run())
            timing.candidate_ms.append(cand.timed_run())
        else:
            timing.candidate_ms.append(cand.timed_run())
            timing.original_ms.append(base.timed_run())
        rounds += 1
        elapsed = time.perf_counter() - started
        if rounds >= settings.max_runs:
            timing.stopped_by = "max_runs"
            break
        if rounds >= settings.min_runs and elapsed >= settings.max_seconds:
            timing.stopped_by = "max_seconds"
            break
    timing.seconds = time.perf_counter() - started
    return timing


def latency_metrics(samples_ms: list[float], batch: int) -> dict[str, float]:
    values = np.asarray(samples_ms)
    p50 = float(np.percentile(values, 50))
    return {
        "latency_ms.p50": p50,
        "latency_ms.p95": float(np.percentile(values, 95)),
        "latency_ms.p99": float(np.percentile(values, 99)),
        "latency_ms.mean": float(values.mean()),
        "throughput_per_s": batch * 1000.0 / p50,
    }


def usd_per_million(usd_per_hour: float, throughput_per_s: float) -> float:
    return usd_per_hour / (throughput_per_s * 3600.0) * 1e6


COST_FORMULA = "usd_per_million = usd_per_hour / (throughput_per_s * 3600) * 1e6"
