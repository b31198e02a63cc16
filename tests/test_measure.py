"""The timing harness on real ONNX Runtime sessions, watched by a recording wrapper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from gate.demo.build import mlp_model
from gate.policy.loading import MeasureSettings
from gate.run.measure import time_pair, timing_estimates
from gate.run.runtime import Target, make_session


class Recording:
    """Wraps a real session and notes each timed run in a shared log."""

    def __init__(self, session, name: str, log: list[str]) -> None:
        self.session, self.name, self.log = session, name, log

    def io_binding(self):
        return self.session.io_binding()

    def get_outputs(self):
        return self.session.get_outputs()

    def run_with_iobinding(self, binding) -> None:
        self.log.append(self.name)
        self.session.run_with_iobinding(binding)


@pytest.fixture
def sessions(tmp_path: Path):
    rng = np.random.default_rng(0)
    path = tmp_path / "m.onnx"
    onnx.save_model(
        mlp_model(
            [(rng.normal(size=(8, 16)), np.zeros(16)), (rng.normal(size=(16, 4)), np.zeros(4))]
        ),
        str(path),
    )
    target = Target("CPUExecutionProvider", {}, 1)
    log: list[str] = []
    original = Recording(make_session(path, {}, target), "O", log)
    candidate = Recording(make_session(path, {}, target), "C", log)
    return original, candidate, log, {"x": np.ones((1, 8), np.float32)}


def test_runs_alternate_and_flip_order_every_round(sessions):
    original, candidate, log, feed = sessions
    settings = MeasureSettings(warmup_runs=3, min_runs=6, max_runs=6, max_seconds=60, burst=1)
    timing = time_pair(original, candidate, feed, settings)
    assert log[:6] == ["O", "C"] * 3  # warm-up: both equally warm
    assert log[6:] == ["O", "C", "C", "O"] * 3  # measured rounds: ABBA ordering
    assert len(timing.original_ms) == len(timing.candidate_ms) == 6
    assert timing.stopped_by == "max_runs"


def test_bursts_refill_then_time_several_runs_per_turn(sessions):
    original, candidate, log, feed = sessions
    settings = MeasureSettings(warmup_runs=1, min_runs=2, max_runs=2, max_seconds=60, burst=3)
    timing = time_pair(original, candidate, feed, settings)
    # Each turn: one untimed refill run, then three timed ones; turns alternate ABBA.
    assert log[2:] == ["O"] * 4 + ["C"] * 8 + ["O"] * 4
    assert len(timing.original_ms) == 6 and len(timing.original_turns) == 2
    assert timing.original_turns[0] == pytest.approx(sum(timing.original_ms[:3]) / 3)
    assert timing.describe()["burst"] == 3


def test_auto_burst_fills_about_half_a_millisecond():
    from gate.run.measure import auto_burst

    assert auto_burst(0.05) == 10
    assert auto_burst(0.001) == 32
    assert auto_burst(0.4) == 1
    assert auto_burst(20.0) == 1


def test_sampling_stops_once_decided(sessions):
    original, candidate, _, feed = sessions
    settings = MeasureSettings(
        warmup_runs=1, min_runs=20, max_runs=10000, max_seconds=60, min_seconds=0
    )
    checks: list[int] = []

    def decided_after_two_checks(timing) -> bool:
        checks.append(timing.rounds)
        return len(checks) == 2

    timing = time_pair(original, candidate, feed, settings, decided_after_two_checks)
    assert timing.stopped_by == "decided"
    assert checks == [20, 30]
    assert timing.rounds == 30 and len(timing.candidate_ms) == 30 * timing.burst


def test_the_time_cap_stops_an_undecided_block(sessions):
    original, candidate, _, feed = sessions
    settings = MeasureSettings(warmup_runs=1, min_runs=10, max_runs=10**9, max_seconds=0.2)
    timing = time_pair(original, candidate, feed, settings, lambda timing: False)
    assert timing.stopped_by == "max_seconds"
    assert 0.2 <= timing.seconds < 1.5
    described = timing.describe()
    assert described["rounds"] == timing.rounds and described["cv_paired_ratio"] >= 0


def test_estimates_derive_throughput_and_cost_from_the_median():
    candidate = [2.0] * 50
    original = [3.0] * 50
    estimates = timing_estimates(candidate, (original, candidate), batch=4, usd_per_hour=0.36)
    assert estimates["latency_ms.p50"].point == 2.0
    assert estimates["throughput_per_s"].point == 2000.0  # 4 samples per 2 ms
    assert estimates["usd_per_million"].point == pytest.approx(0.36 / (2000 * 3600) * 1e6)
    assert estimates["speedup"].point == 1.5
    assert timing_estimates(candidate, None, 1, None)["speedup"].low == 1.0


def test_no_early_stop_before_min_seconds(sessions):
    original, candidate, _, feed = sessions
    settings = MeasureSettings(
        warmup_runs=1, min_runs=5, max_runs=10**9, max_seconds=10, min_seconds=0.3
    )
    timing = time_pair(original, candidate, feed, settings, lambda timing: True)
    assert timing.stopped_by == "decided"
    assert timing.seconds >= 0.3


def test_the_default_cap_gives_slow_models_enough_rounds():
    from gate.run.measure import block_cap

    default = MeasureSettings()
    assert block_cap(default, round_ms=1.0) == 4.0  # fast models: 4 s
    assert block_cap(default, round_ms=400.0) == pytest.approx(24.0)  # 60 rounds of 0.4 s
    assert block_cap(default, round_ms=10_000.0) == 120.0  # never more than two minutes
    assert (
        block_cap(MeasureSettings(max_seconds=2.5), round_ms=400.0) == 2.5
    )  # the policy's word wins
