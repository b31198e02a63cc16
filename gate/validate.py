"""Step 3: run the original and each candidate on the validation feeds and compare."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gate.host import call_plugin
from gate.records import Sample, ValidationContext, Validator


def validate_outputs(
    validators: Sequence[Validator],
    reference: Sequence[Sample],
    candidate: Sequence[Sample],
    output: str,
    labels: np.ndarray | None,
    synthetic: bool,
) -> dict[str, float]:
    """Every active validator's metrics for one candidate.

    A validator that needs labels is skipped when there are none. A plugin
    error propagates as :class:`gate.errors.PluginError` naming the plugin.
    """
    context = ValidationContext(reference, candidate, output, labels, synthetic)
    metrics: dict[str, float] = {}
    for validator in validators:
        if validator.needs_labels and labels is None:
            continue
        produced = call_plugin(validator, "validate", validator.validate, context)
        for name, value in (produced or {}).items():
            metrics[name] = float(value)
    return metrics


def describe_validation(
    output: str, synthetic: bool, validators: Sequence[Validator], labels: Any
) -> dict[str, Any]:
    return {
        "output": output,
        "validators": [v.name for v in validators if not (v.needs_labels and labels is None)],
        "synthetic_inputs": synthetic,
        "note": (
            "accuracy measured on synthetic inputs: it shows agreement with the original on "
            "random data, not accuracy on real data; give data.validation for a real check"
            if synthetic
            else "measured on data.validation"
        ),
    }
