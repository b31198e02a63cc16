"""``onnx-gate noise``: how much this machine's timings wobble, from an A/A comparison.

The original model is timed against a second session of itself exactly as a
candidate would be. The true speedup is 1.0, so whatever spread shows up is
the runner's noise: thresholds closer to 1.0 than that cannot be decided.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gate.candidates import original_candidate
from gate.check import check_policy
from gate.host import get_host
from gate.measure import time_pair
from gate.pipeline import GateRun
from gate.policy import load_policy
from gate.report import new_report, write_atomic
from gate.runtime import make_session
from gate.stats import abba_ratios, coefficient_of_variation, quantile_estimate, ratio_estimate


def measure_noise(policy_path: str | Path, seconds: float) -> dict[str, Any]:
    """Run an A/A block for ``seconds`` and describe its spread. Raises GateError on bad input."""
    policy = load_policy(policy_path)
    host = get_host()
    check_policy(policy, host)
    policy.measure = dataclasses.replace(
        policy.measure, max_seconds=seconds, max_runs=10**9, memory=False
    )
    report = new_report(Path(policy_path))
    with tempfile.TemporaryDirectory(prefix="onnx-gate-noise-") as work:
        run = GateRun(policy, host, Path(work), Path(work), report, lambda message: None, False)
        run.prepare()
        original = original_candidate(run.model, policy)
        first = make_session(run.model.path, original.session, run.target)
        second = make_session(run.model.path, original.session, run.target)
        timing = time_pair(first, second, run.validation.feeds[0], policy.measure)
    confidence = policy.measure.confidence
    ratio = ratio_estimate(timing.original_ms, timing.candidate_ms, confidence)
    ratios = abba_ratios(timing.original_ms, timing.candidate_ms)
    half_width = max(1.0 - ratio.low, ratio.high - 1.0, 0.0)
    return {
        "model": report["model"]["path"] if report["model"] else None,
        "testbed": report.get("testbed"),
        "target": report.get("target"),
        "seconds": round(timing.seconds, 2),
        "rounds": len(timing.original_ms),
        "abba_quads": len(ratios),
        "latency_ms_p50": quantile_estimate(timing.original_ms, 0.5, confidence).point,
        "aa_speedup": ratio.to_json(),
        "aa_speedup_off_by": abs(ratio.point - 1.0),
        "interval_half_width": half_width,
        "paired_ratio_p5_p95": [
            float(np.percentile(ratios, 5)),
            float(np.percentile(ratios, 95)),
        ],
        "cv_latency": coefficient_of_variation(timing.original_ms + timing.candidate_ms),
        "cv_paired_ratio": coefficient_of_variation(ratios),
        "advice": (
            f"an identical model measured {ratio.point:.3f}x ({confidence:.0%} interval "
            f"{ratio.low:.3f}-{ratio.high:.3f}) in {timing.seconds:.0f} s. Budgets on speedup closer to "
            f"1.0 than about {2 * half_width:.3f} are likely to be inconclusive in that time; "
            f"e.g. 'speedup min {1 - max(2 * half_width, 0.02):.2f}' catches a slowdown this machine can see"
        ),
    }


def write_noise(result: dict[str, Any], output_dir: Path) -> Path:
    import json

    path = output_dir / "noise.json"
    write_atomic(path, json.dumps(result, indent=2) + "\n")
    return path
