"""Step 3: run the original and each candidate on the validation feeds and compare."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gate.errors import listed
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
        produced = call_plugin(validator, "validate", _checked(validator), context)
        metrics.update(produced)
    return metrics


def _checked(validator: Validator) -> Callable[[ValidationContext], dict[str, float]]:
    """The validator's function, with its result held to the metrics it declared."""

    def validate(context: ValidationContext) -> dict[str, float]:
        produced = validator.validate(context) or {}
        undeclared = sorted(set(produced) - set(validator.metrics))
        if undeclared:
            raise ValueError(f"returned undeclared metric(s) {listed(undeclared)}")
        return {name: float(value) for name, value in produced.items()}

    return validate


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
