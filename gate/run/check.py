"""Policy checks that need the registered plugins: names, plugin options, metrics."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gate.errors import PolicyError, UnknownNameError, listed
from gate.files import not_regular
from gate.host.manager import Host
from gate.metrics import MEASURED_METRICS, MEMORY_METRICS, NEEDS_PRICE, TIMING_METRICS
from gate.policy.loading import Policy, schema_problems
from gate.run.task import Port, choose_task, layout_problem, ports
from gate.run.validate import applies


def available_metrics(policy: Policy, host: Host) -> dict[str, str]:
    """Every metric a budget may name, with the reason a missing one is unavailable."""
    metrics = dict.fromkeys(MEASURED_METRICS, "")
    task = None if policy.task == "auto" else policy.task  # auto: known once the model is read
    for validator in active_validators(policy, host, task):
        for metric in validator.metrics:
            needs = "data.labels" if validator.needs_labels and policy.labels_path is None else ""
            metrics[metric] = needs
    for metric in NEEDS_PRICE:
        if policy.usd_per_hour is None:
            metrics[metric] = "target.usd_per_hour"
    for metric in MEMORY_METRICS:
        if not policy.measure.memory:
            metrics[metric] = "measure.memory: true"
    suffix = policy.model_path.suffix.lower()
    exporter = host.records["exporter"].get(policy.exporter or "") or next(
        (e for e in host.records["exporter"].values() if suffix in e.suffixes), None
    )
    if exporter is None or exporter.timer is None:
        metrics["runtime_speedup"] = "a model the gate exports from a framework (model.path)"
    return metrics


def active_validators(policy: Policy, host: Host, task: str | None) -> list[Any]:
    """The validators a run uses: those ``validation.validators`` names, else every one
    that judges ``task`` (every registered one when the task is not known yet)."""
    records = host.records["validator"]
    if policy.validators is not None:
        return [records[name] for name in policy.validators if name in records]
    return [
        records[name]
        for name in host.names("validator")
        if task is None or applies(records[name], task)
    ]


def check_policy(policy: Policy, host: Host) -> None:
    """Raise :class:`PolicyError` with every problem found; return when the policy is usable."""
    problems: list[str] = []

    def lookup(kind: str, name: str, location: tuple[Any, ...]) -> Any:
        try:
            return host.get(kind, name)
        except UnknownNameError as exc:
            problems.append(policy.problem(location, exc.message))
            return None

    def check_options(record: Any, options: dict[str, Any], location: tuple[Any, ...]) -> None:
        for where, message in schema_problems(options, record.options_schema, location):
            problems.append(policy.problem(where, message))

    for location, path in (
        (("model", "path"), policy.model_path),
        (("data", "calibration"), policy.calibration_path),
        (("data", "validation"), policy.validation_path),
        (("data", "labels"), policy.labels_path),
        (("validation", "ctc", "charset"), policy.charset_path),
    ):
        if path is None:
            continue
        why = not_regular(path)
        if why:  # a FIFO would block the reader, /dev/zero never end
            problems.append(policy.problem(location, f"{path.name} {why}; refused"))
        elif not path.is_file():
            problems.append(policy.problem(location, f"file not found: {path}"))
    if policy.labels_path is not None and policy.validation_path is None:
        problems.append(
            policy.problem(
                ("data", "labels"), "labels need data.validation (they label its samples)"
            )
        )

    for name, spec in policy.inputs.items():
        if spec.value_range is not None:
            low, high = spec.value_range
            if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
                problems.append(
                    policy.problem(
                        ("inputs", name, "range"),
                        f"needs finite [low, high) with low < high; got [{low:g}, {high:g}]",
                    )
                )

    # Availability is a runtime question (exit 3), checked when the run starts; the
    # options are the policy's, so they are checked here.
    provider = lookup("execution_provider", policy.provider, ("target", "provider"))
    if provider is not None and provider.options_schema:
        check_options(provider, policy.provider_options, ("target", "provider_options"))
    exporter = None
    if policy.exporter is not None:
        exporter = lookup("exporter", policy.exporter, ("model", "exporter"))
    else:  # the one load_model will pick by the file's suffix
        suffix = policy.model_path.suffix.lower()
        exporter = next(
            (e for e in host.records["exporter"].values() if suffix in e.suffixes), None
        )
    if exporter is not None:
        check_options(exporter, policy.exporter_options, ("model", "options"))
    if policy.validators is not None:
        for index, name in enumerate(policy.validators):
            validator = lookup("validator", name, ("validation", "validators", index))
            if (
                validator is not None
                and policy.task != "auto"
                and not applies(validator, policy.task)
            ):
                problems.append(
                    policy.problem(
                        ("validation", "validators", index),
                        f"validator '{name}' judges {listed(sorted(validator.tasks))}, not "
                        f"validation.task {policy.task}",
                    )
                )
    problems.extend(task_problems(policy))

    seen: dict[str, int] = {}
    for index, recipe in enumerate(policy.recipes or []):
        location: tuple[Any, ...] = ("candidates", index)
        if recipe.name == "original":
            problems.append(
                policy.problem((*location, "name"), "'original' is reserved for the model as given")
            )
        if recipe.name in seen:
            problems.append(
                policy.problem(
                    (*location, "name"),
                    f"duplicate candidate name '{recipe.name}' (first at candidates[{seen[recipe.name]}])",
                )
            )
        seen.setdefault(recipe.name, index)
        for step, options in (("rewrite", recipe.rewrite), ("graph", recipe.graph)):
            if options is None:
                continue
            optimizer = lookup("graph_optimizer", options["plugin"], (*location, step, "plugin"))
            if optimizer is not None:
                check_options(
                    optimizer,
                    {k: v for k, v in options.items() if k != "plugin"},
                    (*location, step),
                )
        if recipe.quantize is not None:
            quantizer = lookup(
                "quantizer", recipe.quantize["plugin"], (*location, "quantize", "plugin")
            )
            if quantizer is not None:
                options = {k: v for k, v in recipe.quantize.items() if k != "plugin"}
                check_options(quantizer, options, (*location, "quantize"))

    searchable = set(host.names("quantizer")) | set(host.names("graph_optimizer"))
    for index, name in enumerate(policy.search.exclude):
        if name not in searchable:
            valid = listed(sorted(searchable), shown=20)
            problems.append(
                policy.problem(
                    ("search", "exclude", index),
                    f"unknown quantizer or graph optimizer '{name}' (valid: {valid})",
                )
            )

    metrics = available_metrics(policy, host)
    for index, budget in enumerate(policy.budgets):
        location = ("budgets", index, "metric")
        if budget.metric not in metrics:
            known = listed(sorted(metrics), shown=12)
            problems.append(
                policy.problem(location, f"unknown metric '{budget.metric}' (known: {known})")
            )
        elif metrics[budget.metric] and budget.level != "off":
            problems.append(
                policy.problem(
                    location,
                    f"'{budget.metric}' needs {metrics[budget.metric]}"
                    + ("" if metrics[budget.metric].endswith(")") else " in the policy"),
                )
            )
        if budget.metric not in TIMING_METRICS and "aggregation" in policy.raw["budgets"][index]:
            problems.append(
                policy.problem(
                    ("budgets", index, "aggregation"),
                    f"applies to timing metrics only; '{budget.metric}' is not measured with an interval",
                )
            )
        if not math.isfinite(budget.threshold):
            problems.append(
                policy.problem(("budgets", index), "the threshold must be a finite number")
            )
    explicit = policy.raw.get("measure", {})
    cap = policy.measure.max_seconds
    if "min_seconds" in explicit and cap is not None and policy.measure.min_seconds > cap:
        problems.append(
            policy.problem(("measure", "min_seconds"), "must not exceed measure.max_seconds")
        )
    if policy.measure.min_runs > policy.measure.max_runs:
        problems.append(policy.problem(("measure", "min_runs"), "must not exceed measure.max_runs"))
    if problems:
        raise PolicyError(f"{policy.path.name}: {len(problems)} problem(s)", problems)


def task_problems(policy: Policy) -> list[str]:
    """A declared ``validation.task`` held to what the model file declares (before any run)."""
    problems = []
    if policy.labels_path is not None and policy.task in ("embedding", "stream"):
        problems.append(
            policy.problem(("data", "labels"), f"validation.task {policy.task} takes no labels")
        )
    if policy.task == "auto":
        return problems
    for task in sorted(set(policy.task_options) - {policy.task}):
        problems.append(
            policy.problem(
                ("validation", task),
                f"options for task {task}, but validation.task is {policy.task}",
            )
        )
    signature = _declared_signature(policy)
    if signature is None:
        return problems
    inputs, outputs = signature
    floats = [port.name for port in outputs if port.floating]
    judged = policy.validation_output or (floats or [port.name for port in outputs])[0]
    if judged not in {port.name for port in outputs}:
        return problems  # named on its own line when the run starts
    choice = choose_task(policy.task, policy.task_options, {}, inputs, outputs, judged)
    problem = layout_problem(choice, inputs, outputs, judged)
    if problem is not None:
        option, why = problem
        location = (
            ("validation", policy.task, option) if option != "task" else ("validation", "task")
        )
        if location not in policy.lines:  # an inferred option: point at the task
            location = ("validation", "task")
        problems.append(policy.problem(location, why))
    return problems


def _declared_signature(policy: Policy) -> tuple[list[Port], list[Port]] | None:
    """The .onnx file's inputs (with the policy's fixed shapes) and outputs as declared;
    None for a framework file or a model that cannot be read (the run names why)."""
    from gate.policy.guards import check_model_file
    from gate.run.load import _tensor_specs

    path = policy.model_path
    if path.suffix.lower() != ".onnx" or not_regular(path) or not path.is_file():
        return None
    try:
        proto = check_model_file(path, path.name, policy.limits)
        initializers = {tensor.name for tensor in proto.graph.initializer}
        declared = _tensor_specs(proto.graph.input, initializers)
        outputs = ports(_tensor_specs(proto.graph.output, set(), []))
    except Exception:  # the run reads it again and says what is wrong
        return None
    inputs = [
        Port(
            spec.name,
            tuple(policy.inputs[spec.name].shape)
            if spec.name in policy.inputs and policy.inputs[spec.name].shape
            else tuple(d if isinstance(d, int) else None for d in spec.dims),
            np.dtype(spec.dtype),
        )
        for spec in declared
    ]
    return inputs, outputs
