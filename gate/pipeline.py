"""The whole run: load -> candidates -> validate -> measure -> decide -> report.

``run_gate`` never raises for an expected failure: it returns the report and
exit code, and report.json is written whatever happened.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gate.candidates import (
    ORIGINAL,
    Candidate,
    build_candidate,
    default_recipes,
    original_candidate,
)
from gate.check import active_validators, check_policy
from gate.data import FeedSet, calibration_feeds, load_labels, validation_feeds
from gate.decide import Standing, choose, evaluate
from gate.errors import GateError, ModelError, PolicyError, UsageError
from gate.exitcodes import ExitCode
from gate.host import Host, call_plugin, get_host
from gate.load import LoadedModel, copy_model, file_sha256, load_model, model_size_bytes
from gate.measure import COST_FORMULA, Timing, latency_metrics, time_pair, usd_per_million
from gate.policy import Policy, load_policy
from gate.report import MODEL_FILE, environment, new_report, write_report_json
from gate.runtime import Target, make_session, run_all
from gate.validate import describe_validation, validate_outputs

Progress = Callable[[str], None]


@dataclass
class GateResult:
    report: dict[str, Any]
    exit_code: ExitCode
    output_dir: Path


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _prepare_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".onnx-gate-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"output directory {output_dir} is not writable: {exc.strerror or exc}"
        ) from None
    # A model left by an earlier run must never be mistaken for this run's choice.
    for stale in (output_dir / MODEL_FILE, output_dir / f"{MODEL_FILE}.data"):
        stale.unlink(missing_ok=True)


def run_gate(
    policy_path: str | Path,
    output_dir: str | Path = "gate-report",
    *,
    host: Host | None = None,
    progress: Progress | None = None,
    keep_candidates: bool = False,
) -> GateResult:
    """Run the gate for one policy and write its reports into ``output_dir``.

    With ``keep_candidates`` every built candidate is also saved as
    ``candidates/NAME.onnx`` for inspection.
    """
    started = time.perf_counter()
    policy_path, output_dir = Path(policy_path), Path(output_dir)
    report = new_report(Path(_relative(policy_path)))
    say = progress or (lambda message: None)
    try:
        _prepare_output_dir(output_dir)
        host = host or get_host()
        policy = load_policy(policy_path)
        check_policy(policy, host)
        with tempfile.TemporaryDirectory(prefix="onnx-gate-") as work:
            _execute(policy, host, Path(work), output_dir, report, say, keep_candidates)
    except GateError as exc:
        report.update(verdict="error", exit_code=int(exc.exit_code), message=exc.message)
        report["errors"].extend(exc.lines())
    except Exception as exc:  # a bug in the gate: still report, and say where
        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = f"internal error: {type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
        report.update(verdict="error", exit_code=int(ExitCode.RUNTIME_ERROR), message=message)
        report["errors"].append(message)
    report["environment"] = environment()
    report["duration_s"] = round(time.perf_counter() - started, 3)
    if output_dir.is_dir():
        try:
            _write_reports(report, output_dir, host)
        except OSError as exc:  # a pass nobody can read is no pass
            message = f"cannot write the report into {output_dir}: {exc.strerror or exc}"
            report.update(verdict="error", exit_code=int(ExitCode.RUNTIME_ERROR), message=message)
            report["errors"].append(message)
    return GateResult(report, ExitCode(report["exit_code"]), output_dir)


def _write_reports(report: dict[str, Any], output_dir: Path, host: Host | None) -> None:
    if host is not None:
        for reporter in host.records["reporter"].values() if _records_ok(host) else []:
            try:
                call_plugin(reporter, "write", reporter.write, report, output_dir)
            except GateError as exc:
                report["errors"].append(exc.message)
    write_report_json(report, output_dir)


def _records_ok(host: Host) -> bool:
    try:
        host.records  # noqa: B018 - building the registry may itself fail
    except GateError:
        return False
    return True


def _execute(
    policy: Policy,
    host: Host,
    work: Path,
    output_dir: Path,
    report: dict[str, Any],
    say: Progress,
    keep_candidates: bool,
) -> None:
    import onnxruntime

    # Quantisers and optimisers open their own sessions; keep their warnings out of CI logs.
    onnxruntime.set_default_logger_severity(3)
    provider = host.get("execution_provider", policy.provider, "target.provider")
    if not call_plugin(provider, "check availability", provider.is_available):
        raise GateError(
            f"execution provider '{provider.name}' ({provider.ort_name}) is not available here; "
            f"it needs the package {provider.package}"
        )
    options = call_plugin(
        provider, "map options", provider.provider_options, policy.provider_options
    )
    target = Target(provider.ort_name, options, policy.threads)
    report["target"] = {
        "provider": provider.name,
        "usd_per_hour": policy.usd_per_hour,
        **target.describe(),
    }

    say(f"loading {policy.model_path.name}")
    model = load_model(policy, host, work / "export")
    report["model"] = _describe_model(model, policy)
    report["warnings"].extend(model.warnings)
    output_names = [spec.name for spec in model.outputs]
    # Default to the first float output: exporters often pass ids or masks straight through first.
    floats = [spec.name for spec in model.outputs if np.issubdtype(spec.dtype, np.floating)]
    judged = policy.validation_output or (floats or output_names)[0]
    if judged not in output_names:
        raise PolicyError(
            policy.problem(
                ("validation", "output"),
                f"the model has no output '{judged}' (outputs: {', '.join(output_names)})",
            )
        )

    validation = validation_feeds(policy, model)
    labels = (
        load_labels(policy.labels_path, len(validation.feeds), "data.labels")
        if policy.labels_path
        else None
    )
    calibration = calibration_feeds(policy, model)
    if validation.source == "synthetic":
        report["warnings"].append(
            f"no data.validation: validated on {len(validation.feeds)} synthetic samples; "
            "accuracy metrics show agreement on random inputs only"
        )
    recipes = (
        policy.recipes
        if policy.recipes is not None
        else default_recipes(policy.calibration_path is not None)
    )
    validators = active_validators(policy, host)
    report["data"] = {
        "validation": validation.describe(policy.base_dir),
        "calibration": calibration.describe(policy.base_dir),
        "labels": _relative(policy.labels_path) if policy.labels_path else None,
    }
    report["validation"] = describe_validation(
        judged, validation.source == "synthetic", validators, labels
    )
    batch = _batch_size(model)
    report["measurement"] = {
        "method": (
            "each candidate timed against the original in its own block of alternating runs "
            "(order flipped every round) after warm-up, inputs bound once with IOBinding, "
            "thread spinning off for every session"
        ),
        "warmup_runs": policy.measure.warmup_runs,
        "min_runs": policy.measure.min_runs,
        "max_runs": policy.measure.max_runs,
        "max_seconds": policy.measure.max_seconds,
        "input": "the first validation sample",
        "batch": batch,
    }
    if policy.usd_per_hour is not None:
        report["cost"] = {"formula": COST_FORMULA, "usd_per_hour": policy.usd_per_hour}
    report["baseline"] = {
        "candidate": ORIGINAL,
        "description": (
            "the original model on the target provider with ONNX Runtime's default session options"
            if policy.baseline_graph["level"] == "all"
            else f"the original model with graph_optimization_level={policy.baseline_graph['level']}"
        ),
        "session": {"graph_optimization_level": policy.baseline_graph["level"]},
    }

    original = original_candidate(model, policy)
    try:
        original_session = make_session(model.path, original.session, target)
        reference = run_all(original_session, validation.feeds)
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot run the original model: {_first_line(exc)}") from exc

    candidates = [original]
    for recipe in recipes:
        say(f"building {recipe.name}")
        candidates.append(
            build_candidate(
                recipe,
                model,
                host,
                work / "candidates",
                target.provider,
                lambda: iter(calibration.feeds),
                calibration.source,
            )
        )

    entries: dict[str, dict[str, Any]] = {}
    timings: dict[str, Timing] = {}
    for candidate in candidates:
        say(f"validating and measuring {candidate.name}")
        entries[candidate.name] = _judge(
            candidate,
            model,
            policy,
            target,
            original_session,
            reference,
            validation,
            labels,
            validators,
            judged,
            timings,
        )

    if keep_candidates:
        kept = output_dir / "candidates"
        shutil.rmtree(kept, ignore_errors=True)
        kept.mkdir()
        for item in candidates:
            if item.path is not None and item.name != ORIGINAL and entries[item.name]["artifact"]:
                copy_model(item.path, kept / f"{item.name}.onnx")
                entries[item.name]["artifact"]["path"] = f"candidates/{item.name}.onnx"

    if original.failed:  # without a judged reference nothing can be decided
        report["candidates"] = [entries[c.name] for c in candidates]
        raise GateError(f"the original model failed to {original.stage}: {original.error}")

    original_runs = [ms for timing in timings.values() for ms in timing.original_ms]
    if not original_runs:  # every candidate failed: time the original against itself
        timing = time_pair(original_session, original_session, validation.feeds[0], policy.measure)
        original_runs = timing.original_ms + timing.candidate_ms
    entries[ORIGINAL]["metrics"].update(latency_metrics(original_runs, batch), speedup=1.0)
    entries[ORIGINAL]["timing"] = {
        "runs": len(original_runs),
        "note": "all of the original's paired runs",
    }

    standings = []
    for candidate in candidates:
        entry = entries[candidate.name]
        if candidate.failed:
            entry["status"] = "failed"
            continue
        metrics = entry["metrics"]
        if policy.usd_per_hour is not None:
            metrics["usd_per_million"] = usd_per_million(
                policy.usd_per_hour, metrics["throughput_per_s"]
            )
        results = evaluate(policy.budgets, metrics)
        entry["budgets"] = [result.to_json() for result in results]
        standing = Standing(candidate.name, metrics["speedup"], results)
        entry["status"] = "passed" if standing.eligible else "rejected"
        entry["reasons"] = [r.explain() for r in results if r.counts]
        standings.append(standing)

    chosen, reason = choose(standings, policy.min_gain)
    report["candidates"] = [entries[c.name] for c in candidates]
    report["chosen"], report["decision"] = chosen, reason
    if chosen is None:
        report.update(verdict="fail", exit_code=int(ExitCode.BUDGET_FAILED), message=reason)
        return
    entries[chosen]["chosen"] = True
    winner = next(c for c in candidates if c.name == chosen)
    assert winner.path is not None
    report["output_model"] = _save_model(winner.path, output_dir / MODEL_FILE)
    report["output_model"]["session"] = winner.session
    for item in entries[chosen]["budgets"]:
        if item["level"] == "warn" and not item["passed"]:
            report["warnings"].append(
                f"{chosen}: {item['metric']} expected {item['op']} {item['threshold']:g}, found {item['actual']}"
            )
    report.update(verdict="pass", exit_code=int(ExitCode.PASS), message=f"chosen: {chosen}")


def _judge(
    candidate: Candidate,
    model: LoadedModel,
    policy: Policy,
    target: Target,
    original_session: Any,
    reference: list[dict[str, np.ndarray]],
    validation: FeedSet,
    labels: np.ndarray | None,
    validators: list[Any],
    judged: str,
    timings: dict[str, Timing],
) -> dict[str, Any]:
    """Validate and time one candidate; a failure is recorded on it, never raised."""
    entry: dict[str, Any] = {
        "name": candidate.name,
        "status": "failed",
        "chosen": False,
        "recipe": candidate.recipe,
        "session": candidate.session,
        "stage": None,
        "error": None,
        "notes": candidate.notes,
        "metrics": {},
        "budgets": [],
        "reasons": [],
        "timing": None,
        "artifact": None,
    }
    if not candidate.failed:
        assert candidate.path is not None
        entry["artifact"] = {
            "sha256": file_sha256(candidate.path),
            "size_bytes": model_size_bytes(candidate.path),
        }
        entry["metrics"]["size_mb"] = entry["artifact"]["size_bytes"] / 1e6
        session = original_session
        if candidate.name != ORIGINAL:
            try:
                session = make_session(candidate.path, candidate.session, target)
            except Exception as exc:
                candidate.fail("load", f"ONNX Runtime cannot load it: {_first_line(exc)}")
        if not candidate.failed:
            try:
                outputs = (
                    reference if candidate.name == ORIGINAL else run_all(session, validation.feeds)
                )
                entry["metrics"].update(
                    validate_outputs(
                        validators,
                        reference,
                        outputs,
                        judged,
                        labels,
                        validation.source == "synthetic",
                    )
                )
            except GateError as exc:
                candidate.fail("validate", exc.message)
            except Exception as exc:
                candidate.fail("validate", f"{type(exc).__name__}: {_first_line(exc)}")
        if not candidate.failed and candidate.name != ORIGINAL:
            try:
                timing = time_pair(original_session, session, validation.feeds[0], policy.measure)
            except Exception as exc:
                candidate.fail("measure", f"{type(exc).__name__}: {_first_line(exc)}")
            else:
                timings[candidate.name] = timing
                entry["metrics"].update(latency_metrics(timing.candidate_ms, _batch_size(model)))
                entry["metrics"]["speedup"] = timing.speedup
                entry["timing"] = {
                    "runs": len(timing.candidate_ms),
                    "stopped_by": timing.stopped_by,
                    "seconds": round(timing.seconds, 3),
                    "original_p50_ms_in_block": float(np.median(timing.original_ms)),
                    "paired_ratio_median": timing.paired_speedup,
                }
    entry["stage"], entry["error"] = candidate.stage, candidate.error
    return entry


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


def _batch_size(model: LoadedModel) -> int:
    """Samples per inference: the first input's leading dimension when it is symbolic."""
    first = model.inputs[0]
    if first.dims and not isinstance(first.dims[0], int) and first.shape:
        return max(int(first.shape[0]), 1)
    return 1


def _describe_model(model: LoadedModel, policy: Policy) -> dict[str, Any]:
    return {
        "path": _relative(policy.model_path),
        "exporter": model.exporter,
        "sha256": model.sha256,
        "size_mb": model.size_bytes / 1e6,
        "opsets": model.opsets,
        "inputs": [spec.describe() for spec in model.inputs],
        "outputs": [spec.describe() for spec in model.outputs],
    }


def _save_model(source: Path, destination: Path) -> dict[str, Any]:
    copy_model(source, destination)
    return {
        "path": destination.name,
        "sha256": file_sha256(destination),
        "size_bytes": model_size_bytes(destination),
    }
