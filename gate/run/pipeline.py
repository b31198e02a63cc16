"""One model's whole run: load -> candidates -> validate -> measure -> decide -> report.

``run_model`` never raises for an expected failure: it returns the report and
exit code, and report.json is written whatever happened (an interrupted run
writes a partial one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gate.errors import (
    GateError,
    InterruptedAfterReport,
    ModelError,
    UsageError,
    first_line,
    listed,
)
from gate.exitcodes import ExitCode
from gate.files import REPORT_MAX_BYTES, read_json, temp_beside
from gate.host.manager import Host, call_plugin, get_host
from gate.metrics import MEASURED_METRICS, MEMORY_METRICS, TIMING_METRICS
from gate.policy.guards import cwd_relative
from gate.policy.loading import Budget, Policy, Recipe, load_policy
from gate.policy.settings import RunOptions, RunSettings
from gate.progress import RESULT_PREFIX, Progress
from gate.records import Sample
from gate.report.document import (
    MODEL_FILE,
    REPORT_FILE,
    environment,
    new_report,
    signals_held,
    write_report_json,
)
from gate.report.model import CandidateEntry, ModelReport, SuiteReport
from gate.run.candidates import ORIGINAL, Candidate, build_candidate, original_candidate
from gate.run.check import active_validators, check_policy
from gate.run.data import (
    calibration_feeds,
    validation_feeds,
)
from gate.run.decide import (
    BudgetResult,
    decide_run,
    default_accuracy_budget,
    evaluate,
    require_budget_metrics,
    utc_today,
)
from gate.run.describe import describe_model, describe_run
from gate.run.isolation import Isolation, build_isolated, probe_isolated, probe_limits, save_feeds
from gate.run.judging import framework_agreement, judge_accuracy, judged_outputs, resolve_task
from gate.run.load import (
    LoadedModel,
    cannot_run_message,
    copy_model,
    file_sha256,
    load_model,
    model_size_bytes,
    with_returned_shapes,
)
from gate.run.measure import Estimator, Timing, time_pair
from gate.run.memory import measure_memory
from gate.run.runtime import make_session, onnxruntime_errors, run_all, run_stream
from gate.run.search import Search, Trial, fallback_trial, propose, search_context
from gate.run.sensitivity import rank_sources
from gate.run.target import choose_target
from gate.run.testbed import fingerprint, memory_limit_bytes
from gate.run.validate import ValidationSetup, describe_validation
from gate.stats import FAIL, PASS, Estimate

TIMING_INPUT = "timing-input.npz"


@dataclass
class GateResult:
    report: dict[str, Any]
    exit_code: ExitCode
    output_dir: Path


def _prepare_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        # A fresh name, created exclusively: a FIFO committed under a fixed name would block.
        temp_beside(output_dir / ".onnx-gate-write-test").unlink()
    except OSError as exc:
        raise UsageError(
            f"output directory {output_dir} is not writable: {exc.strerror or exc}"
        ) from None


def remove_previous_output(output_dir: Path) -> None:
    """Delete the model an earlier run chose, so it is never mistaken for this run's.

    Only a file whose digest an earlier report.json recorded is removed: a model
    of the user's that happens to be called model.onnx is never touched.
    """
    model = output_dir / MODEL_FILE
    try:
        previous = read_json(output_dir / REPORT_FILE, REPORT_MAX_BYTES, OSError)
        recorded = (previous.get("output_model") or {}).get("sha256")
    except (OSError, ValueError, AttributeError):
        return
    try:  # a model.onnx committed as a link to /proc/kmsg must not block the digest
        stale = bool(recorded) and model.is_file() and file_sha256(model) == recorded
    except OSError:
        return
    if stale:
        model.unlink()
        (output_dir / f"{MODEL_FILE}.data").unlink(missing_ok=True)


def run_model(
    policy_path: str | Path,
    options: RunOptions,
    *,
    policy: Policy | None = None,
    host: Host | None = None,
    progress: Progress | None = None,
    runner: type[GateRun] | None = None,
) -> GateResult:
    """Gate one model: ``policy`` (one model of the policy file), or the file's only model.
    ``runner`` runs it (a whole run by default; the CI layer passes a staged run)."""
    started = time.perf_counter()
    policy_path, output_dir = Path(policy_path), options.output_dir
    report = new_report(Path(cwd_relative(policy_path)), policy.name if policy else None)
    say = progress or (lambda message: None)
    interrupted: BaseException | None = None
    try:
        report.testbed = fingerprint()  # in every report, failed runs included
        _prepare_output_dir(output_dir)
        remove_previous_output(output_dir)
        host = host or get_host()
        policy = policy or load_policy(policy_path, options.allowed_paths)
        report.name = policy.name
        report.regressions = [regression.to_json() for regression in policy.regressions]
        check_policy(policy, host)
        if (output_dir / MODEL_FILE).resolve() == policy.model_path:
            raise UsageError(
                f"--output-dir {output_dir} holds the policy's model as {MODEL_FILE}; "
                "the chosen model would overwrite it: choose another output directory"
            )
        with tempfile.TemporaryDirectory(prefix="onnx-gate-") as work:
            settings = RunSettings(policy, options)
            (runner or GateRun)(settings, host, Path(work), report, say).execute()
    except GateError as exc:
        report.update(verdict="error", exit_code=int(exc.exit_code), message=exc.message)
        report.errors.extend(exc.lines())
    except KeyboardInterrupt as exc:  # Ctrl-C or the CLI's SIGTERM handler: report what is known
        interrupted = exc
        message = "interrupted before the run finished; this report is partial"
        report.update(
            verdict="error", exit_code=int(ExitCode.RUNTIME_ERROR), message=message, partial=True
        )
        report.errors.append(message)
    except Exception as exc:  # a bug in the gate: still report, and say where
        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = f"internal error: {type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
        report.update(verdict="error", exit_code=int(ExitCode.RUNTIME_ERROR), message=message)
        report.errors.append(message)
    report.environment = environment()
    report.duration_s = round(time.perf_counter() - started, 3)
    with contextlib.suppress(OSError):  # a run that failed before it made the folder
        output_dir.mkdir(parents=True, exist_ok=True)
    if output_dir.is_dir():
        try:
            write_reports(report, output_dir, host)
        except OSError as exc:  # a pass nobody can read is no pass
            message = f"cannot write the report into {output_dir}: {exc.strerror or exc}"
            report.update(verdict="error", exit_code=int(ExitCode.RUNTIME_ERROR), message=message)
            report.errors.append(message)
        except KeyboardInterrupt:  # held while the files were written; they are whole
            interrupted = interrupted or InterruptedAfterReport(report.exit_code)
    if interrupted is not None:
        raise interrupted
    return GateResult(report.to_json(), ExitCode(report.exit_code), output_dir)


def write_reports(report: ModelReport | SuiteReport, output_dir: Path, host: Host | None) -> None:
    """Every reporter plugin's files, then report.json, atomically and with signals held.
    Reporters read the report as JSON."""
    document = report.to_json()
    reporters: list[Any] = []
    if host is not None:
        try:
            reporters = list(host.records["reporter"].values())
        except GateError:  # the registry itself is what failed; report.json still goes out
            reporters = []
    written = []
    with signals_held():
        for reporter in reporters:
            try:
                paths = call_plugin(reporter, "write", reporter.write, document, output_dir)
                written += [Path(path).name for path in paths or ()]
            except GateError as exc:
                report.errors.append(exc.message)
        report.files = sorted({REPORT_FILE, *written})
        write_report_json(report.to_json(), output_dir)


def report_usage_error(policy_path: Path, output_dir: Path, error: GateError | None) -> GateResult:
    """A run refused before it started (a bad --shard, a policy that is a folder) still
    writes its report.json, and removes the previous run's chosen model. ``error`` None: a
    signal arrived before the run began, and the report says it is partial."""
    report = new_report(Path(cwd_relative(policy_path)))
    if error is None:
        message = "interrupted before the run started; this report is partial"
        error = GateError(message)
        report.partial = True
    report.update(verdict="error", exit_code=int(error.exit_code), message=error.message)
    report.errors.extend(error.lines())
    report.environment = environment()
    try:
        _prepare_output_dir(output_dir)
        remove_previous_output(output_dir)
        write_reports(report, output_dir, None)
    except (GateError, OSError, KeyboardInterrupt):
        pass  # the console still says what went wrong
    return GateResult(report, error.exit_code, output_dir)


class GateRun:
    """One model's run, as README's "How a run works" lists it.

    ``execute`` is the whole of it: ``prepare`` (1. load: the target, the model, its data),
    ``_judge_original`` (the reference every candidate is held to), ``_search``
    (2. candidates, each 3. validated and 4. timed before the next is chosen) and
    ``_finish`` (the original's own timing, memory, then 5. decide and 6. the chosen
    model). The steps are functions in this package's modules; this class holds what
    they share, and ``report`` always says how far the run got. ``StagedRun``
    (gate.ci.stages) runs the same steps split where artifacts move between CI jobs.
    """

    def __init__(
        self, settings: RunSettings, host: Host, work: Path, report: ModelReport, say: Progress
    ) -> None:
        self.settings, self.policy = settings, settings.policy
        self.host, self.work, self.report, self.say = host, work, report, say
        self.output_dir = settings.options.output_dir
        self.keep_candidates = settings.options.keep_candidates
        self.entries: dict[str, CandidateEntry] = {}
        self.timings: dict[str, Timing] = {}
        self.estimates: dict[str, dict[str, Estimate]] = {}
        self.best_so_far: tuple[str, float] = (ORIGINAL, 1.0)
        self.today = utc_today()
        self.timed = True
        """False in the build stage: candidates are built and validated, timed elsewhere."""

    # -- stages --------------------------------------------------------------

    def prepare(self) -> None:
        """Target, model and data: everything before any candidate exists."""
        import onnxruntime

        # Quantisers and optimisers open their own sessions; keep ORT's log lines out of CI logs.
        onnxruntime.set_default_logger_severity(4)
        chosen = choose_target(self.policy, self.host)
        self.report.warnings.extend(chosen.warnings)
        self.report.target = chosen.described
        self.report.testbed = fingerprint(chosen.described)
        self.target = chosen.target
        self.say(f"loading {self.policy.model_path.name}")
        self.model = load_model(self.policy, self.host, self.work / "export")
        self.report.model = describe_model(self.policy, self.model)
        self.report.warnings.extend(self.model.warnings)
        for note in self.model.notes:
            self.say(note)
        self._prepare_data()
        self.report.update(
            **describe_run(
                self.policy, self.validation, self.calibration, self.setup, self.validators,
                self.batch,
            )
        )  # fmt: skip

    def execute(self) -> None:
        """load -> candidates -> validate -> measure -> decide -> report."""
        self.prepare()
        original = self._judge_original()
        self._finish([original, *self._search()])

    def _judge_original(self) -> Candidate:
        """Open, validate and check the original: a broken reference or a budget it cannot
        produce is known before minutes go into building and timing candidates."""
        original = original_candidate(self.model, self.policy)
        self._probe_original(original)  # whatever build.isolate says: no plugin runs there
        try:
            self.original_session = make_session(self.model.path, original.session, self.target)
            self.reference = run_all(self.original_session, self.validation.feeds)
        except Exception as exc:
            raise ModelError(cannot_run_message(self.model.path, first_line(exc))) from exc
        self.model.outputs, mismatched = with_returned_shapes(self.model.outputs, self.reference[0])
        self.report.model["outputs"] = [spec.describe() for spec in self.model.outputs]
        self.report.warnings.extend(mismatched)
        self._resolve_task()
        self._framework_reference()
        if self.task is not None and self.task.task == "stream":
            try:
                self.reference = self._outputs(self.original_session)
            except Exception as exc:
                raise ModelError(
                    cannot_run_message(self.model.path, f"as a stream: {first_line(exc)}")
                ) from exc
        self.entries[ORIGINAL] = self._judge(original)
        self.entries[ORIGINAL].search = {"origin": "original"}
        self.report.candidates = [self.entries[ORIGINAL]]
        if original.failed:  # without a judged reference nothing can be decided
            raise GateError(f"the original model failed to {original.stage}: {original.error}")
        self._require_budget_metrics()
        self._default_accuracy_budget()
        return original

    def _framework_reference(self) -> None:
        """When the gate exported the model, hold the export itself to the framework model."""
        exporter = self.host.records["exporter"].get(self.model.exporter)
        if exporter is None or exporter.reference is None:
            return
        described, warnings = framework_agreement(
            self.policy, self.host, exporter, self.setup, self.reference
        )
        self.report.export = described
        self.report.warnings.extend(warnings)

    def _finish(self, candidates: list[Candidate]) -> None:
        """Time the original against itself, measure memory, keep, decide."""
        self.report.candidates = [self.entries[c.name] for c in candidates]
        self._save_timing_input()
        self._measure_original()
        if self.policy.measure.memory:
            self._measure_memory(candidates)
        if self.keep_candidates:
            self._keep(candidates)
        self._decide(candidates)

    def _progress_line(self, candidate: Candidate) -> str:
        """One result line, with the best candidate so far that meets every budget measured yet."""
        entry = self.entries[candidate.name]
        if candidate.failed:
            return f"{candidate.name}: {'skipped' if candidate.skipped else 'failed'}: {candidate.error}"
        speedup = entry.metrics.get("speedup")
        if speedup is None:  # the build stage: validated, timed later on the target
            passing = self._outcome_so_far(candidate) == "passed"
            return f"{candidate.name}: {'meets' if passing else 'misses'} the accuracy budgets"
        passing = all(
            r.decision == PASS
            for r in self._evaluate_without_memory(candidate.name)
            if r.budget.level == "error"
        )
        estimate = self.estimates.get(candidate.name, {}).get("speedup")
        surely_faster = (
            estimate is not None
            and estimate.low > 1.0
            and estimate.point >= 1.0 + self.policy.min_gain
        )
        if passing and surely_faster and estimate.point > self.best_so_far[1]:
            self.best_so_far = (candidate.name, estimate.point)
        best, best_speedup = self.best_so_far
        return (
            f"{candidate.name}: {speedup:.2f}x, {'meets' if passing else 'misses'} the budgets so far; "
            f"best so far: {best} ({best_speedup:.2f}x)"
        )

    def _probe_original(self, original: Candidate) -> None:
        """Open and run the original once in a child process first: a model that crashes
        ONNX Runtime, hangs it or asks it for all memory must not take the gate down."""
        feeds = self.work / "probe.npz"
        save_feeds(self.validation.feeds, feeds)
        probed = probe_isolated(
            dataclasses.replace(original, notes=[]), self.work / "probe",
            self.target.provider, self.target.provider_options, feeds,
            probe_limits(self.policy.build, self.target.provider, memory_limit_bytes()),
        )  # fmt: skip
        if probed.failed:
            detail = (probed.error or "").removeprefix("ONNX Runtime cannot run it: ")
            raise ModelError(
                cannot_run_message(
                    self.model.path, detail.replace("the load process", "its process")
                )
            )

    def _search(self) -> list[Candidate]:
        """Build and judge candidates one at a time, most promising first, within search.*."""
        isolate = self.policy.build.isolate
        registered = [info.name for info in self.host.infos if info.source == "registered"]
        if isolate and registered:
            isolate = False
            self.report.warnings.append(
                f"plugins registered in this process ({listed(registered)}) cannot be seen by a child "
                "process: candidates were built in-process, without crash isolation"
            )
        self.isolate = isolate
        self.report.build = {
            "isolate": isolate,
            "timeout_s": self.policy.build.timeout_s if isolate else None,
            "memory_mb": self.policy.build.memory_mb if isolate else None,
        }
        self.calibration_file = self.work / "calibration.npz"
        if isolate:
            save_feeds(self.calibration.feeds, self.calibration_file)
        search = self._new_search()
        built: list[Candidate] = []
        while (trial := search.next_trial()) is not None:
            self.say(f"trial {trial.order}: building {trial.name}")
            candidate = self._build(trial.recipe, search)
            if not candidate.failed:
                self.say(f"trial {trial.order}: validating and measuring {trial.name}")
            entry = self._judge(candidate)
            entry.search = trial.describe()
            self.entries[candidate.name] = entry
            built.append(candidate)
            outcome = self._outcome_so_far(candidate)
            search.observe(trial, outcome, entry.metrics.get("speedup"))
            self.say(RESULT_PREFIX + self._progress_line(candidate))
            if outcome == "accuracy":
                self._fallback(search, trial, candidate)
            self.report.candidates = [
                self.entries[ORIGINAL],
                *(self.entries[c.name] for c in built),
            ]
            self.report.search = search.describe()
        self.report.search = search.describe()
        return built

    def _new_search(self) -> Search:
        policy = self.policy
        if policy.recipes is not None:
            return Search(
                [Trial(recipe, "policy") for recipe in policy.recipes], policy.search, False
            )
        context = search_context(
            self.model.path,
            self.report.testbed,
            self.target.provider,
            policy.calibration_path is not None,
            policy.baseline_graph["level"],
        )
        trials, declined = propose(self.host, context, policy.search)
        return Search(
            trials, policy.search, True,
            declined=declined, context=context, to_beat=1.0 + policy.min_gain,
        )  # fmt: skip

    def _build(self, recipe: Recipe, search: Search) -> Candidate:
        if not self.isolate:
            return build_candidate(
                recipe, self.model.path, self.model.input_shapes, self.host,
                self.work / "candidates", self.target.provider,
                lambda: iter(self.calibration.feeds), self.calibration.source,
            )  # fmt: skip
        timeout, limited_by = search.build_timeout(self.policy.build.timeout_s)
        return build_isolated(
            recipe, self.model.path, self.model.input_shapes, self.work / "candidates",
            self.target.provider, self.calibration_file, self.calibration.source,
            Isolation(timeout, self.policy.build.memory_mb, limited_by),
            self.target.provider_options,
        )  # fmt: skip

    def _evaluate_without_memory(self, name: str) -> list[BudgetResult]:
        """Budgets decided so far: memory is measured once the search is over, and
        timing not at all in the build stage."""
        unknown = MEMORY_METRICS if self.timed else TIMING_METRICS | MEMORY_METRICS
        budgets = [b for b in self.budgets if b.metric not in unknown]
        return self._evaluate(budgets, name)

    def _evaluate(self, budgets: list[Budget], name: str) -> list[BudgetResult]:
        policy = self.policy
        return evaluate(
            budgets, self.entries[name].metrics, self.estimates.get(name, {}),
            policy.waivers, policy.name, self.today,
        )  # fmt: skip

    def _outcome_so_far(self, candidate: Candidate) -> str:
        """What the search learns from a judged candidate: passed, accuracy, rejected,
        failed or skipped. ``accuracy`` means it missed accuracy budgets and nothing else."""
        if candidate.skipped:
            return "skipped"
        if candidate.failed:
            return "failed"
        missed = [
            r for r in self._evaluate_without_memory(candidate.name)
            if r.budget.level == "error" and r.decision == FAIL and r.waiver is None
        ]  # fmt: skip
        if not missed:
            return "passed"
        if all(r.budget.metric not in MEASURED_METRICS for r in missed):
            return "accuracy"
        return "rejected"

    def _fallback(self, search: Search, trial: Trial, candidate: Candidate) -> None:
        """Queue the candidate again with the nodes that lost the most accuracy left in float."""
        name, quantize = candidate.name, trial.recipe.quantize
        if not self.policy.search.fallback or quantize is None or candidate.path is None:
            return
        quantizer = self.host.records["quantizer"].get(quantize["plugin"])
        speedup = self.estimates.get(name, {}).get("speedup")
        refused = search.why_no_fallback(trial, quantizer, speedup)
        if refused is not None:
            search.log.append(refused)
            return
        self.say(f"ranking the nodes of {name} by the error they add")
        rewritten = candidate.path.parent / "rewritten.onnx"
        reference = rewritten if trial.recipe.rewrite and rewritten.is_file() else self.model.path
        try:
            ranking = rank_sources(
                reference, candidate.path, self.calibration.feeds, self.work / "sensitivity" / name
            )
        except Exception as exc:
            search.log.append(
                f"{name}: no accuracy fallback: ranking its nodes failed: {first_line(exc)}"
            )
            return
        self.entries[name].sensitivity = [source.describe() for source in ranking[:10]]
        child = fallback_trial(
            trial,
            [(source.nodes, source.added) for source in ranking],
            speedup.point if speedup is not None else trial.expected_speedup or 1.0,
        )
        if child is None:
            search.log.append(
                f"{name}: no accuracy fallback: nothing it still quantises adds measurable error"
            )
            return
        refused = search.add_fallback(child)
        if refused:
            search.log.append(f"{name}: no accuracy fallback: {refused}")
            return
        search.log.append(f"{child.reason}; retrying as {child.name}")

    def _default_accuracy_budget(self) -> None:
        budget, warning = default_accuracy_budget(
            self.budgets, self.validators, self.entries[ORIGINAL].metrics, self.setup.task,
            self.judged,
        )  # fmt: skip
        if budget is not None:
            self.budgets.append(budget)
        if warning is not None:
            self.report.warnings.append(warning)

    def _prepare_data(self) -> None:
        policy, model = self.policy, self.model
        judged = judged_outputs(policy, model)
        self.judged = judged[0]
        self.validation = validation_feeds(policy, model)
        self.labels: Any = None  # read for the task, once the task is known
        self.calibration = calibration_feeds(policy, model)
        self.synthetic = self.validation.source == "synthetic"
        if self.synthetic:
            self.report.warnings.append(
                f"no data.validation: validated on {len(self.validation.feeds)} synthetic samples; "
                "accuracy metrics show agreement on random inputs only"
            )
        self.task = None
        self.setup = ValidationSetup(
            "tensor", {}, judged, self.validation.feeds, None, self.synthetic
        )
        self.validators = active_validators(policy, self.host, "tensor")
        self.budgets: list[Budget] = list(policy.budgets)
        self.batch = policy.measure.batch or _leading_batch(model)
        self.estimator = Estimator(self.batch, policy.usd_per_hour, policy.measure)

    def _resolve_task(self) -> None:
        """What the outputs mean, and what the candidates are then judged by."""
        resolved = resolve_task(self.policy, self.host, self.model, self.setup, self.reference)
        choice = self.task = resolved.choice
        self.setup, self.validators, self.labels = (
            resolved.setup,
            resolved.validators,
            resolved.labels,
        )
        self.report.validation = describe_validation(self.setup, self.validators, choice.describe())
        self.report.warnings.extend(choice.notes)
        how = "declared" if choice.declared else f"inferred from {choice.source}"
        self.say(f"judging by task {choice.task} ({how})")

    def _outputs(self, session: Any) -> list[Sample]:
        """A session's outputs on the validation feeds: one stream for task stream."""
        if self.task is not None and self.task.task == "stream":
            return run_stream(session, self.validation.feeds, self.task.options["state"])
        return run_all(session, self.validation.feeds)

    def _judge(self, candidate: Candidate) -> CandidateEntry:
        """Validate and time one candidate; a failure is recorded on it, never raised."""
        entry = CandidateEntry(
            name=candidate.name, recipe=candidate.recipe, session=candidate.session,
            notes=candidate.notes,
        )  # fmt: skip
        if not candidate.failed:
            assert candidate.path is not None
            size = model_size_bytes(candidate.path)
            entry.artifact = {"sha256": file_sha256(candidate.path), "size_bytes": size}
            entry.metrics["size_mb"] = size / 1e6
            session = self.original_session
            if candidate.name != ORIGINAL:
                try:
                    session = make_session(candidate.path, candidate.session, self.target)
                except Exception as exc:
                    candidate.fail("load", f"ONNX Runtime cannot load it: {first_line(exc)}")
            if not candidate.failed:
                self._validate(candidate, session, entry)
            if not candidate.failed and candidate.name != ORIGINAL and self.timed:
                self._time(candidate, session, entry)
        entry.stage, entry.error = candidate.stage, candidate.error
        return entry

    def _validate(self, candidate: Candidate, session: Any, entry: CandidateEntry) -> None:
        metrics, details = judge_accuracy(
            candidate, lambda: self._outputs(session), self.reference, self.validators,
            self.setup, self.policy,
        )  # fmt: skip
        entry.metrics.update(metrics)
        if details:
            entry.validation = details

    def _time(self, candidate: Candidate, session: Any, entry: CandidateEntry) -> None:
        try:
            timing = time_pair(
                self.original_session, session, self.validation.feeds[0], self.policy.measure,
                self.estimator.stopping_rule(self.budgets, self.policy.min_gain),
            )  # fmt: skip
        except Exception as exc:
            candidate.fail("measure", f"{type(exc).__name__}: {first_line(exc)}")
            return
        self.timings[candidate.name] = timing
        estimates = self.estimator(
            timing.candidate_ms, (timing.original_turns, timing.candidate_turns)
        )
        self._record_timing(entry, estimates)
        entry.timing = timing.describe()

    def _record_timing(self, entry: CandidateEntry, estimates: dict[str, Estimate]) -> None:
        self.estimates[entry.name] = estimates
        for name, estimate in estimates.items():
            entry.metrics[name] = estimate.point
            entry.intervals[name] = [estimate.low, estimate.high]

    def _save_timing_input(self) -> None:
        """The one input every timing block used, beside the report: ``compare`` times a
        later run's chosen model against this run's on it, and anyone can rerun the timing."""
        path = self.output_dir / TIMING_INPUT
        temp = temp_beside(path, suffix=".tmp.npz")  # np.savez adds .npz to any other name
        try:
            save_feeds([self.validation.feeds[0]], temp)
            temp.replace(path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self.report.measurement["input_file"] = TIMING_INPUT

    def _measure_original(self) -> None:
        """Time the original in a block of its own, against a second session of itself.

        Pooling its runs from every candidate's block would give it more samples
        (a narrower interval) the more candidates a policy lists; its own A/A
        block puts it on the same footing as each candidate, with the same
        stopping rule for its own timing budgets.
        """
        original = self.entries[ORIGINAL]
        is_decided = self.estimator.stopping_rule(
            self.budgets, self.policy.min_gain, original_only=True
        )
        try:
            twin = make_session(self.model.path, original.session, self.target)
            timing = time_pair(
                self.original_session, twin, self.validation.feeds[0], self.policy.measure,
                is_decided,
            )  # fmt: skip
        except onnxruntime_errors() as exc:  # ORT's own failure on a real model: say where
            raise ModelError(
                f"the original model {self.policy.model_path.name} could not be timed: "
                f"{type(exc).__name__}: {first_line(exc)}"
            ) from exc
        del twin
        self.timings[ORIGINAL] = timing
        self._record_timing(original, self.estimator(timing.original_ms, None))
        original.timing = {
            **timing.describe(),
            "note": "the original against a second session of itself",
        }

    def _measure_memory(self, candidates: list[Candidate]) -> None:
        feed = self.validation.feeds[0]
        target = {
            "provider": self.target.provider,
            "options": self.target.provider_options,
            "threads": self.target.threads,
            "fallback": self.target.fallback,
        }
        for candidate in candidates:
            if candidate.failed or candidate.path is None:
                continue
            if candidate.name != ORIGINAL and self._outcome_so_far(candidate) != "passed":
                continue  # out already: a fresh process per model costs a second or more
            self.say(f"measuring memory of {candidate.name}")
            try:
                figures = measure_memory(candidate.path, candidate.session, target, feed)
            except Exception as exc:
                self.entries[candidate.name].notes.append(f"memory not measured: {first_line(exc)}")
                continue
            method = figures.pop("memory_method", "ru_maxrss")
            self.entries[candidate.name].metrics.update(figures)
            self.report.measurement["memory_method"] = method

    def _require_budget_metrics(self) -> None:
        output = next(spec for spec in self.model.outputs if spec.name == self.judged)
        require_budget_metrics(self.policy, self.entries[ORIGINAL].metrics, output)

    def _keep(self, candidates: list[Candidate]) -> None:
        kept = self.output_dir / "candidates"
        shutil.rmtree(kept, ignore_errors=True)
        kept.mkdir()
        for item in candidates:
            entry = self.entries[item.name]
            if item.path is not None and item.name != ORIGINAL and entry.artifact:
                copy_model(item.path, kept / f"{item.name}.onnx")
                entry.artifact["path"] = f"candidates/{item.name}.onnx"

    def _decide(self, candidates: list[Candidate]) -> None:
        """Choose, explain, and write the chosen model beside the report."""
        report = self.report
        decision = decide_run(
            self.policy, candidates, self.entries,
            lambda name: self._evaluate(self.budgets, name),
            {name: e["speedup"] for name, e in self.estimates.items() if "speedup" in e},
            self.synthetic, self.today,
        )  # fmt: skip
        report.update(**decision.report)
        report.warnings.extend(decision.warnings)
        chosen = decision.chosen
        if chosen is None:
            return
        entry = self.entries[chosen]
        entry.chosen = True
        winner = next(c for c in candidates if c.name == chosen)
        assert winner.path is not None
        try:
            report.output_model = _save_model(winner.path, self.output_dir / MODEL_FILE)
        except OSError as exc:  # a full disk: the verdict stands for nothing without the model
            report.chosen, entry.chosen = None, False
            report.decision = (
                f"cannot write the chosen model ({chosen}) into {self.output_dir}: "
                f"{exc.strerror or exc}"
            )
            raise GateError(report.decision) from None
        report.output_model["session"] = winner.session
        report.warnings.extend(decision.chosen_warnings)
        report.update(verdict="pass", exit_code=int(ExitCode.PASS), message=f"chosen: {chosen}")


def _leading_batch(model: LoadedModel) -> int:
    """Samples per inference when the policy does not say: the size the policy gives a
    symbolic leading dimension. One taken from the data is not counted: a time-first
    input [T, 1, F] would multiply throughput by T (set measure.batch to say)."""
    first = model.inputs[0]
    chosen = (first.shape_from or "").startswith("inputs.")
    if chosen and first.dims and not isinstance(first.dims[0], int) and first.shape:
        return max(int(first.shape[0]), 1)
    return 1


def _save_model(source: Path, destination: Path) -> dict[str, Any]:
    copy_model(source, destination)
    return {
        "path": destination.name,
        "sha256": file_sha256(destination),
        "size_bytes": model_size_bytes(destination),
    }
