"""What the report says about a run before any candidate exists: the model, the data, the
validation, how timing works, the cost formula and the baseline."""

from __future__ import annotations

from typing import Any

from gate.policy.guards import cwd_relative
from gate.policy.loading import Policy
from gate.run.candidates import ORIGINAL
from gate.run.data import FeedSet
from gate.run.load import LoadedModel
from gate.run.measure import COST_FORMULA, timer_overhead_ns
from gate.run.validate import ValidationSetup, describe_validation

TIMING_METHOD = (
    "each candidate timed against the original in its own block of alternating runs "
    "(order flipped every round) after warm-up, inputs bound once with IOBinding, "
    "thread spinning off for every session; speedup is the median of paired ratios; "
    "sampling stops once every timing budget's interval is on one side of its threshold"
)


def describe_model(policy: Policy, model: LoadedModel) -> dict[str, Any]:
    """report.json's ``model``."""
    return {
        "path": cwd_relative(policy.model_path),
        "exporter": model.exporter,
        "sha256": model.sha256,
        "size_mb": model.size_bytes / 1e6,
        "opsets": model.opsets,
        "inputs": [spec.describe() for spec in model.inputs],
        "outputs": [spec.describe() for spec in model.outputs],
        "notes": model.notes,
    }


def describe_run(
    policy: Policy,
    validation: FeedSet,
    calibration: FeedSet,
    setup: ValidationSetup,
    validators: list[Any],
    batch: int,
) -> dict[str, Any]:
    """report.json's ``data``, ``validation``, ``measurement``, ``baseline`` and, with a
    price, ``cost``."""
    measure = policy.measure
    sections: dict[str, Any] = {
        "data": {
            "validation": validation.describe(policy.base_dir),
            "calibration": calibration.describe(policy.base_dir),
            "labels": cwd_relative(policy.labels_path) if policy.labels_path else None,
        },
        "validation": describe_validation(setup, validators, None),
        "measurement": {
            "method": TIMING_METHOD,
            "warmup_runs": measure.warmup_runs,
            "min_runs": measure.min_runs,
            "max_runs": measure.max_runs,
            "max_seconds": measure.max_seconds
            or "4, or time for 60 rounds of a slow model (at most 120)",
            "confidence": measure.confidence,
            "interval": "distribution-free order-statistic interval of the quantile",
            "on_inconclusive": measure.on_inconclusive,
            "input": "the first validation sample",
            "batch": batch,
            "timer_overhead_ns": timer_overhead_ns(),
            "harness": (
                "the timed region holds only run_with_iobinding on inputs bound once; "
                "bench/RESULTS.md compares it with a bare session.run loop"
            ),
            "memory": "peak RSS of a child process per model" if measure.memory else "off",
        },
    }
    if policy.usd_per_hour is not None:
        sections["cost"] = {"formula": COST_FORMULA, "usd_per_hour": policy.usd_per_hour}
    level = policy.baseline_graph["level"]
    sections["baseline"] = {
        "candidate": ORIGINAL,
        "description": (
            "the original model on the target provider with ONNX Runtime's default session options"
            if level == "all"
            else f"the original model with graph_optimization_level={level}"
        ),
        "session": {"graph_optimization_level": level},
    }
    return sections
