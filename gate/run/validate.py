"""Step 3: run the original and each candidate on the validation feeds and compare."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gate.errors import listed
from gate.host.manager import call_plugin
from gate.records import Sample, ValidationContext, Validator


@dataclass
class ValidationSetup:
    """What every candidate's validation shares in one run: the task, its options, the
    judged outputs, the feeds and labels, and a cache validators fill from the reference."""

    task: str
    options: dict[str, Any]
    outputs: list[str]
    """The judged outputs; the first is ``validation.output``."""
    feeds: Sequence[Sample]
    labels: Any
    synthetic: bool
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def output(self) -> str:
        return self.outputs[0]


def applies(validator: Validator, task: str) -> bool:
    return not validator.tasks or task in validator.tasks


def validate_outputs(
    validators: Sequence[Validator],
    reference: Sequence[Sample],
    candidate: Sequence[Sample],
    setup: ValidationSetup,
    details: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Every active validator's metrics for one candidate.

    A validator that needs labels is skipped when there are none. A plugin
    error propagates as :class:`gate.errors.PluginError` naming the plugin;
    :class:`gate.records.VacuousData` propagates as raised. ``details`` collects
    what validators put in the context's ``details``.
    """
    context = ValidationContext(
        reference, candidate, setup.output, setup.labels, setup.synthetic, setup.options,
        setup.task, setup.feeds, tuple(setup.outputs), setup.cache,
        {} if details is None else details,
    )  # fmt: skip
    metrics: dict[str, float] = {}
    for validator in validators:
        if validator.needs_labels and setup.labels is None:
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
    setup: ValidationSetup, validators: Sequence[Validator], task: dict[str, Any] | None
) -> dict[str, Any]:
    synthetic = setup.synthetic
    return {
        "output": setup.output,
        "outputs": setup.outputs,
        "task": task,
        "validators": [v.name for v in validators if not (v.needs_labels and setup.labels is None)],
        "synthetic_inputs": synthetic,
        "note": (
            "accuracy measured on synthetic inputs: it shows agreement with the original on "
            "random data, not accuracy on real data; give data.validation for a real check"
            if synthetic
            else "measured on data.validation"
        ),
    }
