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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gate.errors import (
    GateError,
    InterruptedAfterReport,
    ModelError,
    PolicyError,
    UsageError,
    first_line,
)
from gate.exitcodes import ExitCode
from gate.files import REPORT_MAX_BYTES, read_json, temp_beside
from gate.host.manager import Host, call_plugin, get_host
from gate.policy.guards import cwd_relative
from gate.policy.loading import Policy, load_policy
from gate.policy.settings import RunOptions, RunSettings
from gate.progress import Progress
from gate.records import Sample
from gate.report.document import (
    MODEL_FILE,
    REPORT_FILE,
    environment,
    new_report,
    signals_held,
    write_report_json,
)
from gate.report.model import CandidateEntry, ModelReport, SuiteReport, mark_partial
from gate.report.watchdog import watched
from gate.run.candidates import ORIGINAL, Candidate, original_candidate
from gate.run.check import active_validators, check_policy
from gate.run.data import calibration_feeds, validation_feeds
from gate.run.decide import (
    Final,
    TieBreak,
    decide_run,
    default_accuracy_budget,
    require_budget_metrics,
    run_final,
)
from gate.run.describe import describe_model, describe_run
from gate.run.isolation import probe_isolated, probe_limits, save_feeds
from gate.run.judging import framework_agreement, judged_outputs, resolve_task
from gate.run.load import (
    LoadedModel,
    cannot_run_message,
    copy_model,
    file_sha256,
    load_model,
    model_size_bytes,
    quantised_operators,
    with_returned_shapes,
)
from gate.run.measure import Estimator
from gate.run.runtime import make_session, run_all
from gate.run.scoring import Judge, Scoreboard
from gate.run.target import choose_target
from gate.run.testbed import fingerprint, memory_limit_bytes
from gate.run.trials import SearchLoop
from gate.run.validate import ValidationSetup, describe_validation
from gate.stats import Estimate

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
    with watched(report, output_dir):  # a native hang still leaves this report
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
        # Ctrl-C or the CLI's SIGTERM handler: report what is known.
        except KeyboardInterrupt as exc:
            interrupted = exc
            mark_partial(report, "interrupted before the run finished; this report is partial")
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
                report.update(
                    verdict="error", exit_code=int(ExitCode.RUNTIME_ERROR), message=message
                )
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

    ``execute`` is the whole of it: ``prepare`` (1. load: the target, the model, its
    data), ``judge_original`` (the reference every candidate is held to), the
    ``SearchLoop`` (2. candidates, each 3. validated and 4. timed by the ``Judge``
    before the next is chosen) and ``finish`` (the original's own timing, memory, then
    5. decide and 6. the chosen model). Each step is a function or a small class in
    this package; this class hands each the values it needs and puts what it returns
    into ``report``, which always says how far the run got. ``StagedRun``
    (gate.ci.stages) runs the same steps split where artifacts move between CI jobs.
    """

    def __init__(
        self, settings: RunSettings, host: Host, work: Path, report: ModelReport, say: Progress
    ) -> None:
        self.settings, self.policy = settings, settings.policy
        self.host, self.work, self.report, self.say = host, work, report, say
        self.output_dir = settings.options.output_dir
        self.scores = Scoreboard(settings.policy)

    def execute(self) -> None:
        """load -> candidates -> validate -> measure -> decide -> report."""
        self.prepare()
        original = self.judge_original()
        self.finish([original, *self.search()])

    def prepare(self) -> None:
        """Target, model and data: everything before any candidate exists."""
        import onnxruntime

        # Quantisers and optimisers open their own sessions; keep ORT's log lines out of CI logs.
        onnxruntime.set_default_logger_severity(4)
        policy, report = self.policy, self.report
        chosen = choose_target(policy, self.host)
        report.warnings.extend(chosen.warnings)
        report.target, report.testbed = chosen.described, fingerprint(chosen.described)
        self.target = chosen.target
        self.say(f"loading {policy.model_path.name}")
        self.model = model = load_model(policy, self.host, self.work / "export")
        report.model = describe_model(policy, model)
        report.warnings.extend(model.warnings)
        for note in model.notes:
            self.say(note)
        judged = judged_outputs(policy, model)
        self.judged = judged[0]
        self.validation = validation_feeds(policy, model)
        self.calibration = calibration_feeds(policy, model)
        self.synthetic = self.validation.source == "synthetic"
        if self.synthetic:
            report.warnings.append(
                f"no data.validation: validated on {len(self.validation.feeds)} synthetic samples; "
                "accuracy metrics show agreement on random inputs only"
            )
        self.setup = ValidationSetup(
            "tensor", {}, judged, self.validation.feeds, None, self.synthetic
        )
        self.validators = active_validators(policy, self.host, "tensor")
        self.scores.budgets = list(policy.budgets)
        self.batch = policy.measure.batch or _leading_batch(model)
        self.estimator = Estimator(self.batch, policy.usd_per_hour, policy.measure)
        report.update(
            **describe_run(
                policy, self.validation, self.calibration, self.setup, self.validators, self.batch
            )
        )

    def judge_original(self) -> Candidate:
        """Open, validate and check the original: a broken reference or a budget it cannot
        produce is known before minutes go into building and timing candidates."""
        policy, model, report = self.policy, self.model, self.report
        original = original_candidate(model, policy)
        self._probe_original(original)  # whatever build.isolate says: no plugin runs there
        try:
            session = make_session(model.path, original.session, self.target)
            reference = run_all(session, self.validation.feeds)
        except Exception as exc:
            raise ModelError(cannot_run_message(model.path, first_line(exc))) from exc
        model.outputs, mismatched = with_returned_shapes(model.outputs, reference[0])
        report.model["outputs"] = [spec.describe() for spec in model.outputs]
        report.warnings.extend(mismatched)
        resolved = resolve_task(policy, self.host, model, self.setup, reference)
        choice = resolved.choice
        self.setup, self.validators = resolved.setup, resolved.validators
        report.validation = describe_validation(self.setup, self.validators, choice.describe())
        report.warnings.extend(choice.notes)
        how = "declared" if choice.declared else f"inferred from {choice.source}"
        self.say(f"judging by task {choice.task} ({how})")
        self._framework_reference(reference)
        self.judge = Judge(
            policy, self.target, self.validation.feeds, session, reference, self.setup,
            self.validators, choice, self.estimator, self.scores,
        )  # fmt: skip
        self._time_framework()
        if choice.task == "stream":
            try:
                self.judge.reference = self.judge.outputs(session)
            except Exception as exc:
                raise ModelError(
                    cannot_run_message(model.path, f"as a stream: {first_line(exc)}")
                ) from exc
        entry = self.judge.judge(original)
        entry.search = {"origin": "original"}
        report.candidates = [entry]
        if original.failed:  # without a judged reference nothing can be decided
            raise GateError(f"the original model failed to {original.stage}: {original.error}")
        output = next(spec for spec in model.outputs if spec.name == self.judged)
        require_budget_metrics(policy, entry.metrics, output)
        self.default_accuracy_budget()
        return original

    def search(self) -> list[Candidate]:
        """Build and judge candidates one at a time, most promising first, within search.*."""
        return SearchLoop(
            self.policy, self.host, self.model, self.target, self.calibration, self.judge,
            self.work, self.report, self.say,
        ).run()  # fmt: skip

    def finish(self, candidates: list[Candidate]) -> None:
        """Time the original against itself, measure memory, keep, decide."""
        entries = self.scores.entries
        self.report.candidates = [entries[c.name] for c in candidates]
        self.report.measurement["input_file"] = save_timing_input(
            self.validation.feeds[0], self.output_dir
        )
        self.judge.time_original(self.model.path, entries[ORIGINAL].session)
        if self.policy.measure.memory:
            method = self.judge.measure_memory(candidates, self.say)
            if method is not None:
                self.report.measurement["memory_method"] = method
        if self.settings.options.keep_candidates:
            keep_candidates(candidates, entries, self.output_dir)
        self.choose(candidates)

    def choose(self, candidates: list[Candidate]) -> None:
        """Choose, explain, and write the chosen model beside the report."""
        report, scores = self.report, self.scores
        decision = decide_run(
            self.policy, candidates, scores.entries, scores.evaluate, scores.speedups(),
            self.synthetic, scores.today, self._final(candidates),
        )  # fmt: skip
        report.update(**decision.report)
        report.warnings.extend(decision.warnings)
        chosen = decision.chosen
        if chosen is None:
            return
        entry = scores.entries[chosen]
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

    def _final(self, candidates: list[Candidate]) -> Callable[[str, list[str]], Final | None]:
        """The head-to-head final, timed by the Judge: decide_run says who takes part."""
        by_name = {c.name: c for c in candidates}

        def time_against(holder: str, challenger: str) -> tuple[Estimate | None, str]:
            self.say(f"final: timing {challenger} against {holder}")
            try:
                return self.judge.head_to_head(by_name[holder], by_name[challenger]), ""
            except Exception as exc:
                return None, f"{type(exc).__name__}: {first_line(exc)}"

        def final(leader: str, contenders: list[str]) -> Final | None:
            ties = tie_break(self.scores, [leader, *contenders], by_name)
            return run_final(leader, contenders, time_against, ties)

        return final

    def default_accuracy_budget(self) -> None:
        """The floor a policy without an accuracy budget is held to, once the original's
        own metrics are known."""
        budget, warning = default_accuracy_budget(
            self.scores.budgets, self.validators, self.scores.entries[ORIGINAL].metrics,
            self.setup.task, self.judged,
        )  # fmt: skip
        if budget is not None:
            self.scores.budgets.append(budget)
        if warning is not None:
            self.report.warnings.append(warning)

    def _framework_reference(self, reference: list[Sample]) -> None:
        """When the gate exported the model, hold the export itself to the framework model."""
        exporter = self.host.records["exporter"].get(self.model.exporter)
        if exporter is None or exporter.reference is None:
            return
        described, warnings = framework_agreement(
            self.policy, self.host, exporter, self.setup, reference
        )
        self.report.export = described
        self.report.warnings.extend(warnings)

    def _time_framework(self) -> None:
        """When the gate exported the model: the framework model against the exported original,
        same input, same threads, in a paired block (``runtime_speedup``, the first lever).
        A staged run's measure stage times the build stage's export, without its framework."""
        exporter = self.host.records["exporter"].get(self.model.exporter)
        if exporter is None or exporter.timer is None or not self.scores.timed:
            if self.settings.options.stage is not None:
                require_runtime_budgets(self.policy, "a staged run (--stage) does not measure it")
            return
        self.say(f"timing the {exporter.name} model against ONNX Runtime")
        described = time_framework(
            exporter, self.policy, self.validation.feeds[0], self.target.threads, self.judge
        )
        self.report.export = {**(self.report.export or {}), "runtime": described}
        if "error" in described:  # a budget on it is then "not measured", like any metric
            self.report.warnings.append(
                f"the {exporter.name} model could not be timed: {described['error']}"
            )
        else:
            self.scores.runtime = Estimate(**described.pop("estimate"))

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


def time_framework(
    exporter: Any, policy: Policy, feed: Sample, threads: int, judge: Judge
) -> dict[str, Any]:
    """report.json's ``export.runtime``: the framework model timed against the original."""
    run: Any = None
    try:
        run = call_plugin(
            exporter, "load the framework model for timing", exporter.timer,
            policy.model_path, policy.exporter_options, feed, threads,
        )  # fmt: skip
        run()  # a failure here is the framework's, not a timing's
        estimate, timing = judge.time_framework(run)
    except GateError as exc:
        return {"error": exc.message}
    except Exception as exc:  # the framework raised while running: say so, time nothing
        return {"error": f"{type(exc).__name__}: {first_line(exc)}"}
    finally:
        close = getattr(run, "close", None)
        if callable(close):  # thread settings go back to what they were
            with contextlib.suppress(Exception):
                close()
    framework_threads = getattr(run, "threads", threads)
    return {
        "framework": exporter.name,
        "runtime_speedup": estimate.point,
        "interval": [estimate.low, estimate.high],
        "confidence": estimate.confidence,
        "framework_p50_ms": float(np.median(timing.original_ms)),
        "onnxruntime_p50_ms": float(np.median(timing.candidate_ms)),
        "rounds": timing.rounds,
        "stopped_by": timing.stopped_by,
        "threads": framework_threads or "framework default",
        "onnxruntime_threads": threads or "onnxruntime default",
        "estimate": estimate.to_json(),
    }


def require_runtime_budgets(policy: Policy, why: str) -> None:
    """A runtime_speedup budget this run cannot measure: a policy error naming each."""
    problems = [
        policy.problem(("budgets", index, "metric"), f"runtime_speedup: {why}")
        for index, budget in enumerate(policy.budgets)
        if budget.metric == "runtime_speedup" and budget.level != "off"
    ]
    if problems:
        raise PolicyError(problems[0], problems)


def tie_break(scores: Scoreboard, names: list[str], candidates: dict[str, Candidate]) -> TieBreak:
    """The tie order's figures for ``names``: the first error-level accuracy budget's metric,
    the quantised operators in each graph, and each file's size."""
    accuracy = scores.accuracy_budget()
    metric = accuracy.metric if accuracy is not None else None
    return TieBreak(
        metric,
        accuracy is None or accuracy.op == ">=",
        {name: scores.entries[name].metrics.get(metric or "") for name in names},
        {name: quantised_operators(candidates[name].path) for name in names},
        {name: scores.entries[name].metrics.get("size_mb") for name in names},
    )


def save_timing_input(feed: Sample, output_dir: Path) -> str:
    """The one input every timing block used, beside the report: ``compare`` times a
    later run's chosen model against this run's on it, and anyone can rerun the timing."""
    path = output_dir / TIMING_INPUT
    temp = temp_beside(path, suffix=".tmp.npz")  # np.savez adds .npz to any other name
    try:
        save_feeds([feed], temp)
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return TIMING_INPUT


def keep_candidates(
    candidates: list[Candidate], entries: dict[str, CandidateEntry], output_dir: Path
) -> None:
    """--keep-candidates: every built candidate's model under candidates/, named in its entry."""
    kept = output_dir / "candidates"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir()
    for item in candidates:
        entry = entries[item.name]
        if item.path is not None and item.name != ORIGINAL and entry.artifact:
            copy_model(item.path, kept / f"{item.name}.onnx")
            entry.artifact["path"] = f"candidates/{item.name}.onnx"


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
