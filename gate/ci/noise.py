"""``onnx-gate noise``: how much this machine's timings wobble, from an A/A comparison.

The original model is timed against a second session of itself exactly as a
candidate would be. The true speedup is 1.0, so whatever spread shows up is
the runner's noise: thresholds closer to 1.0 than that cannot be decided.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gate.errors import ModelError
from gate.host.manager import get_host
from gate.policy.loading import load_policy
from gate.policy.settings import RunOptions, RunSettings
from gate.report.document import new_report, write_atomic
from gate.run.candidates import original_candidate
from gate.run.check import check_policy
from gate.run.measure import time_pair
from gate.run.pipeline import GateRun
from gate.run.runtime import make_session
from gate.stats import abba_ratios, coefficient_of_variation, quantile_estimate, ratio_estimate


def measure_noise(
    policy_path: str | Path,
    seconds: float,
    sessions: int = 5,
    allowed_paths: Sequence[Path] = (),
) -> dict[str, Any]:
    """A/A blocks over ``sessions`` fresh session pairs sharing ``seconds``. Raises GateError on bad input.

    One block's interval only covers the noise within that block. Fresh
    sessions also differ from each other (memory placement, thread
    placement), by a few percent on a shared runner: the spread of the
    per-pair medians shows that part, which is what separates two CI runs.
    """
    policy = load_policy(policy_path, allowed_paths)
    host = get_host()
    check_policy(policy, host)
    policy.measure = dataclasses.replace(
        policy.measure, max_seconds=seconds / sessions, max_runs=10**9, memory=False
    )
    report = new_report(Path(policy_path))
    timings = []
    with tempfile.TemporaryDirectory(prefix="onnx-gate-noise-") as work:
        settings = RunSettings(policy, RunOptions(output_dir=Path(work)))
        run = GateRun(settings, host, Path(work), report, lambda message: None)
        run.prepare()
        original = original_candidate(run.model, policy)
        for _ in range(sessions):
            try:
                first = make_session(run.model.path, original.session, run.target)
                second = make_session(run.model.path, original.session, run.target)
                timings.append(time_pair(first, second, run.validation.feeds[0], policy.measure))
            except Exception as exc:
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ModelError(
                    f"ONNX Runtime cannot run the original model: {first_line}"
                ) from exc
            del first, second
    confidence = policy.measure.confidence
    original_ms = [ms for t in timings for ms in t.original_ms]
    candidate_ms = [ms for t in timings for ms in t.candidate_ms]
    ratios = np.concatenate([abba_ratios(t.original_turns, t.candidate_turns) for t in timings])
    pooled = quantile_estimate(ratios, 0.5, confidence)
    per_pair = [
        ratio_estimate(t.original_turns, t.candidate_turns, confidence).point for t in timings
    ]
    within = max(1.0 - pooled.low, pooled.high - 1.0, 0.0)
    between = max(abs(point - 1.0) for point in per_pair)
    margin = max(within, between)
    return {
        "model": report.model["path"] if report.model else None,
        "testbed": report.get("testbed"),
        "target": report.get("target"),
        "seconds": round(sum(t.seconds for t in timings), 2),
        "session_pairs": sessions,
        "rounds": sum(t.rounds for t in timings),
        "burst": timings[0].burst,
        "abba_quads": len(ratios),
        "latency_ms_p50": quantile_estimate(original_ms, 0.5, confidence).point,
        "aa_speedup": pooled.to_json(),
        "aa_speedup_per_session_pair": per_pair,
        "within_block_half_width": within,
        "between_sessions_max_offset": between,
        "paired_ratio_p5_p95": [float(np.percentile(ratios, 5)), float(np.percentile(ratios, 95))],
        "cv_latency": coefficient_of_variation(original_ms + candidate_ms),
        "cv_paired_ratio": coefficient_of_variation(ratios),
        "advice": (
            f"identical models measured {min(per_pair):.3f}x to {max(per_pair):.3f}x over {sessions} fresh "
            f"session pairs (pooled {pooled.point:.3f}x, {confidence:.0%} interval {pooled.low:.3f}-"
            f"{pooled.high:.3f}). Keep speedup thresholds at least {2 * margin:.3f} from 1.0, e.g. "
            f"'speedup min {1 - max(2 * margin, 0.02):.2f}', and selection.min_gain at least {margin:.2f}"
        ),
    }


def write_noise(result: dict[str, Any], output_dir: Path) -> Path:
    import json

    path = output_dir / "noise.json"
    write_atomic(path, json.dumps(result, indent=2) + "\n")
    return path
