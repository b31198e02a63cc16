"""Step 1b: what every candidate is judged by - the outputs, the task they mean (declared
or inferred), the labels and charset read for it, the validators that apply, and, for an
exported model, how far the export itself is from the framework model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gate.errors import GateError, PolicyError, first_line, listed
from gate.files import read_regular
from gate.host.manager import Host, call_plugin
from gate.policy.guards import cwd_relative
from gate.policy.loading import Policy
from gate.records import Sample, VacuousData
from gate.run.candidates import ORIGINAL, Candidate
from gate.run.check import active_validators
from gate.run.data import load_box_labels, load_labels, load_text_labels
from gate.run.load import LoadedModel
from gate.run.task import (
    CHARSET_MAX_BYTES,
    TaskChoice,
    charset_symbols,
    choose_task,
    layout_problem,
    ports,
)
from gate.run.validate import ValidationSetup, applies, validate_outputs

TENSOR_INSTEAD = "validation.task: tensor judges raw outputs instead"
"""How a task's vacuous-data error ends: ``onnx-gate init`` recognises it and falls back."""


def judged_outputs(policy: Policy, model: LoadedModel) -> list[str]:
    """validation.output first (by default the first float output: exporters often pass
    ids or masks straight through first), then validation.outputs; each must be a tensor
    output of the model."""
    output_names = [spec.name for spec in model.outputs]
    floats = [spec.name for spec in model.outputs if np.issubdtype(spec.dtype, np.floating)]
    first = policy.validation_output or (floats or output_names)[0]
    judged = [first, *(o for o in policy.validation_outputs or () if o != first)]
    for name in judged:
        if name in output_names:
            continue
        why = (
            f"output '{name}' is not a tensor (a ZipMap's sequence of maps, say) and "
            f"cannot be judged; tensor outputs: {listed(output_names)}"
            if name in model.untensored_outputs
            else f"the model has no output '{name}' (outputs: {listed(output_names)})"
        )
        key = (
            "outputs"
            if policy.validation_outputs and name != policy.validation_output
            else "output"
        )
        raise PolicyError(policy.problem(("validation", key), why))
    return judged


@dataclass
class ResolvedTask:
    choice: TaskChoice
    setup: ValidationSetup
    validators: list[Any]
    labels: Any


def resolve_task(
    policy: Policy,
    host: Host,
    model: LoadedModel,
    setup: ValidationSetup,
    reference: list[Sample],
) -> ResolvedTask:
    """What the outputs mean (validation.task, or what auto infers), held to the shapes
    the original returned (``reference``); the labels and charset read for it; the
    validators of that task. ``setup`` is the tensor judgement made before the task was known."""
    judged = setup.outputs[0]
    inputs, outputs = ports(model.inputs), ports(model.outputs)
    choice = choose_task(policy.task, policy.task_options, model.metadata, inputs, outputs, judged)
    problem = layout_problem(choice, inputs, outputs, judged)
    if problem is not None:
        option, why = problem
        location = ("validation", choice.task, option)
        if location not in policy.lines:
            location = ("validation", "task")
        raise PolicyError(policy.problem(location, why))
    for name in policy.validators or ():
        validator = host.records["validator"][name]
        if not applies(validator, choice.task):
            raise PolicyError(
                policy.problem(
                    ("validation", "validators"),
                    f"validator '{name}' judges {listed(sorted(validator.tasks))}, not "
                    f"task {choice.task}"
                    + ("" if choice.declared else f" (inferred: {choice.source})"),
                )
            )
    labels = None
    if policy.labels_path is not None:
        labels = _task_labels(policy, choice, judged, len(setup.feeds), reference)
    cache: dict[str, Any] = {}
    if policy.charset_path is not None:
        refuse = lambda why: PolicyError(  # noqa: E731
            policy.problem(("validation", "ctc", "charset"), f"{policy.charset_path.name} {why}")
        )
        data = read_regular(policy.charset_path, CHARSET_MAX_BYTES, refuse)
        try:
            cache["ctc-charset"] = charset_symbols(data)
        except UnicodeDecodeError as exc:
            raise refuse(f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        choice.options["charset"] = cwd_relative(policy.charset_path)  # cached above; shown only
    resolved = ValidationSetup(
        choice.task, choice.options, setup.outputs, setup.feeds, labels, setup.synthetic, cache
    )
    return ResolvedTask(choice, resolved, active_validators(policy, host, choice.task), labels)


def _task_labels(
    policy: Policy, choice: TaskChoice, judged: str, samples: int, reference: list[Sample]
) -> Any:
    path = policy.labels_path
    assert path is not None
    if choice.task in ("embedding", "stream"):
        raise PolicyError(policy.problem(("data", "labels"), f"task {choice.task} takes no labels"))
    if choice.task == "detection":
        return load_box_labels(path, samples, "data.labels", policy.limits)
    if choice.task == "ctc":
        labels = load_text_labels(path, "data.labels", policy.limits)
        axis = 1 if choice.options.get("layout") == "tbc" else 0
        lines = sum(int(sample[judged].shape[axis]) for sample in reference)
        if labels.shape[0] != lines:
            raise PolicyError(f"data.labels: {labels.shape[0]} strings for {lines} text lines")
        if policy.charset_path is None:
            raise PolicyError(
                policy.problem(
                    ("data", "labels"),
                    "text labels need validation.ctc.charset to turn classes into text",
                )
            )
        return labels
    return load_labels(path, samples, "data.labels", policy.limits)


def framework_agreement(
    policy: Policy, host: Host, exporter: Any, setup: ValidationSetup, reference: list[Sample]
) -> tuple[dict[str, Any], list[str]]:
    """report.json's ``export`` and its warnings: the exported model held to the framework
    model (framework-vs-ONNX), apart from every candidate's ONNX-vs-optimised."""
    judged = setup.outputs[0]
    described: dict[str, Any] = {"exporter": exporter.name, "output": judged}
    try:
        framework = call_plugin(
            exporter, "run the framework model", exporter.reference,
            policy.model_path, policy.exporter_options, setup.feeds,
        )  # fmt: skip
        if any(judged not in outputs for outputs in framework):
            raise GateError(f"it gives no output '{judged}'")
        # The export is held to the framework as tensors, one feed at a time.
        labels = setup.labels if setup.task in ("classification", "tensor") else None
        tensors = ValidationSetup("tensor", {}, [judged], setup.feeds, labels, setup.synthetic)
        validators = active_validators(policy, host, "tensor")
        described["framework_vs_onnx"] = validate_outputs(validators, framework, reference, tensors)
    except GateError as exc:
        described["error"] = exc.message
        return described, [
            f"the exported model could not be compared with the framework model: {exc.message}"
        ]
    metrics = described["framework_vs_onnx"]
    if metrics.get("cosine_similarity", 1.0) < 0.999 or metrics.get("top1_agreement", 1.0) < 1.0:
        agreement = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
        return described, [
            f"the exported ONNX model differs from the {exporter.name} model ({agreement}): "
            "every candidate is judged against the export, so check the export first"
        ]
    return described, []


def judge_accuracy(
    candidate: Candidate,
    outputs: Callable[[], list[Sample]],
    reference: list[Sample],
    validators: list[Any],
    setup: ValidationSetup,
    policy: Policy,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The candidate's accuracy metrics against the original, and the validators' details.
    A failure (its outputs, a validator) is recorded on the candidate, never raised, except
    when the original's own decisions are empty: then the data cannot judge anything, and
    that is a policy error naming data.validation."""
    details: dict[str, Any] = {}
    try:
        produced = reference if candidate.name == ORIGINAL else outputs()
        metrics = validate_outputs(validators, reference, produced, setup, details)
        return metrics, details
    except VacuousData as exc:
        if candidate.name != ORIGINAL:
            candidate.fail("validate", str(exc))
            return {}, {}
        fix = (
            "give data.validation with real inputs the model decides on"
            if setup.synthetic
            else "give inputs the original decides on (real photos, text lines, speech)"
        )
        raise PolicyError(
            policy.problem(("data", "validation"), f"{exc}; {fix}")
            + f" (task {setup.task}; {TENSOR_INSTEAD})"
        ) from None
    except GateError as exc:
        candidate.fail("validate", exc.message)
    except Exception as exc:
        candidate.fail("validate", f"{type(exc).__name__}: {first_line(exc)}")
    return {}, {}
