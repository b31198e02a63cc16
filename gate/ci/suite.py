"""Many models, many runners: a suite report over several models, shards of a
policy's models for a CI matrix, and merging the shards' outputs into one verdict.

The CI system's matrix is the distributed engine: each job runs
``onnx-gate run POLICY --shard K/N`` and a last job runs ``onnx-gate merge``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gate.ci.stages import StagedRun
from gate.errors import GateError, UsageError, listed
from gate.exitcodes import ExitCode
from gate.files import copy_folder, within
from gate.host.manager import Host, get_host
from gate.policy.guards import cwd_relative
from gate.policy.loading import Policy, load_policies, policy_digest
from gate.policy.settings import DEFAULT_OUTPUT_DIR, RunOptions
from gate.progress import Progress
from gate.report.document import REPORT_FILE, SUITE, environment
from gate.report.model import SuiteReport
from gate.report.watchdog import watched
from gate.run.pipeline import (
    GateResult,
    GateRun,
    remove_previous_output,
    report_usage_error,
    run_model,
    write_reports,
)
from gate.run.testbed import fingerprint

MODELS_DIR = "models"


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/3"`` -> (2, 3); shards count from 1."""
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        raise UsageError(f"--shard takes K/N, e.g. 2/3 (got '{text}')") from None
    if not 1 <= shard[0] <= shard[1]:
        raise UsageError(f"--shard {text}: K must be between 1 and N")
    return shard


def shard_of(names: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """The deterministic share of shard K of N: every Nth model of the policy's order,
    starting at the Kth, so shards differ in size by at most one model."""
    if shard is None:
        return list(names)
    index, count = shard
    return [name for position, name in enumerate(names) if position % count == index - 1]


def new_suite(policy: str, shard: tuple[int, int] | None, everything: list[str]) -> SuiteReport:
    return SuiteReport(
        policy=policy,
        shard=None
        if shard is None
        else {"index": shard[0], "count": shard[1], "models": shard_of(everything, shard)},
        all_models=everything,
    )


def summarise(suite: SuiteReport, reports: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Fill the suite's verdict, rows and counts from its models' reports."""
    suite.models = [
        {
            "name": name,
            "dir": f"{MODELS_DIR}/{name}",
            "verdict": report.get("verdict", "error"),
            "exit_code": report.get("exit_code", int(ExitCode.RUNTIME_ERROR)),
            "chosen": report.get("chosen"),
            "message": report.get("message", ""),
            "partial": bool(report.get("partial")),
        }
        for name, report in reports
    ]
    suite.budgets = [row for _, report in reports for row in report.get("budgets") or []]
    counts: dict[str, int] = {}
    for _, report in reports:
        for key, value in (report.get("counts") or {}).items():
            counts[key] = counts.get(key, 0) + value
    suite.counts = counts
    suite.waivers = [
        {**waiver, "model": name}
        for name, report in reports
        for waiver in report.get("waivers") or []
    ]
    for name, report in reports:
        suite.warnings.extend(f"{name}: {line}" for line in report.get("warnings") or [])
        suite.errors.extend(f"{name}: {line}" for line in report.get("errors") or [])
    if suite.get("testbed") is None and reports:
        suite.testbed = reports[0][1].get("testbed")
    if any(model["partial"] for model in suite.models):
        suite.partial = True
    code = ExitCode.combined([model["exit_code"] for model in suite.models])
    if suite.errors and not reports:
        code = ExitCode.RUNTIME_ERROR
    by_verdict: dict[str, list[str]] = {}
    for model in suite.models:
        by_verdict.setdefault(model["verdict"], []).append(model["name"])
    tally = ", ".join(f"{len(names)} {verdict}" for verdict, names in sorted(by_verdict.items()))
    failing = [n for v, names in by_verdict.items() if v not in ("pass", "pending") for n in names]
    message = (
        f"{len(reports)} model(s): {tally}" + (f" ({listed(failing)})" if failing else "")
        if reports
        else "no models in this share"
    )
    if suite.get("message"):  # set earlier: missing shards, an unreadable policy
        message = f"{suite.message}; {message}" if reports else suite.message
    suite.update(verdict=code.verdict, exit_code=int(code), message=message)


def run_gate(
    policy_path: str | Path,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    *,
    host: Host | None = None,
    progress: Progress | None = None,
    keep_candidates: bool = False,
    shard: tuple[int, int] | None = None,
    stage: str | None = None,
    source: Path | None = None,
    trust_model: bool = False,
    allowed_paths: Sequence[Path] = (),
) -> GateResult:
    """Run the gate for a policy and write its reports into ``output_dir``.

    The library's entry point, and what ``onnx-gate run`` calls: the keyword arguments
    are the command line's options (see :class:`gate.policy.settings.RunOptions`), and
    they travel on as that one value. A policy naming several models (``models:``), or
    any run given ``shard`` (K, N), gates each model of its share into
    ``output_dir/models/NAME/`` and writes a suite report on top. ``stage`` (build,
    measure or decide) runs one stage, reading the previous one's output folder
    ``source`` (see :mod:`gate.ci.stages`). Never raises for an expected failure: the
    report says what happened.
    """
    options = RunOptions(
        Path(output_dir), keep_candidates, shard, stage, source, trust_model, tuple(allowed_paths)
    )
    try:
        policies: list[Policy] | None = load_policies(policy_path, options.allowed_paths)
    except Exception:
        policies = None  # the run below reads it again and reports the problem in report.json
    except KeyboardInterrupt:  # before anything was written: the report still goes out
        report_usage_error(Path(policy_path), options.output_dir, None)
        raise
    for policy in policies or []:
        policy.trusted = policy.trusted or trust_model  # --trust-model
    if shard is not None or (policies is not None and policies[0].in_suite):
        return run_suite(policy_path, policies, options, host=host, progress=progress)
    return run_model(
        policy_path, options, policy=policies[0] if policies else None,
        host=host, progress=progress, runner=runner_for(options),
    )  # fmt: skip


def runner_for(options: RunOptions) -> type[GateRun]:
    """A whole run, or one stage of it (``--stage``)."""
    return GateRun if options.stage is None else StagedRun


def run_suite(
    policy_path: str | Path,
    policies: list[Policy] | None,
    options: RunOptions,
    *,
    host: Host | None = None,
    progress: Progress | None = None,
) -> GateResult:
    """Gate each model of the share into ``output_dir/models/NAME`` and write the suite."""
    output_dir, shard, stage = options.output_dir, options.shard, options.stage
    started = time.perf_counter()
    say = progress or (lambda message: None)
    everything = [policy.name for policy in policies or []]
    suite = new_suite(cwd_relative(Path(policy_path)), shard, everything)
    suite.policy_sha256 = policy_digest(Path(policy_path))
    suite.testbed = None
    reports: list[tuple[str, dict[str, Any]]] = []
    with watched(suite, output_dir):  # a native hang still leaves this report
        interrupted: BaseException | None = None
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            remove_previous_output(output_dir)  # a single-model run's model.onnx is not this one's
            host = host or get_host()
            if policies is None:  # unreadable policy: load it again for the error to report
                load_policies(policy_path, options.allowed_paths)
                raise GateError(f"cannot read the policy {policy_path}")
            chosen = set(shard_of(everything, shard))
            share = [policy for policy in policies if policy.name in chosen]
            for number, policy in enumerate(share, 1):
                say(f"model {number}/{len(share)}: {policy.name}")
                result = run_model(
                    policy_path, options.for_model(policy.name, MODELS_DIR), policy=policy,
                    host=host, progress=progress, runner=runner_for(options),
                )  # fmt: skip
                reports.append((policy.name, result.report))
            if not share and shard is not None:
                suite.warnings.append(
                    f"shard {shard[0]}/{shard[1]} holds no model: the policy names {len(everything)}"
                )
        except KeyboardInterrupt as exc:
            interrupted = exc
            suite.partial = True
            suite.errors.append("interrupted before every model was gated; this report is partial")
        except GateError as exc:
            suite.errors.extend(exc.lines())
            suite.update(message=exc.message, exit_code=int(exc.exit_code))
        failed_early = int(suite.exit_code) if suite.errors and not reports else None
        summarise(suite, reports)
        if stage is not None:
            suite.stage = stage
            if stage == "build" and suite.exit_code == 0:
                suite.verdict = "pending"
        if suite.get("partial") or failed_early is not None:
            code = ExitCode.combined([suite.exit_code, failed_early or int(ExitCode.RUNTIME_ERROR)])
            suite.update(verdict=code.verdict, exit_code=int(code))
        suite.testbed = suite.testbed or fingerprint()
        suite.environment = environment()
        suite.duration_s = round(time.perf_counter() - started, 3)
        if output_dir.is_dir():
            try:
                write_reports(suite, output_dir, host)
            except OSError as exc:
                suite.errors.append(f"cannot write the report into {output_dir}: {exc}")
                suite.update(verdict="error", exit_code=int(ExitCode.RUNTIME_ERROR))
        if interrupted is not None:  # the suite is partial, whatever one model's report says
            raise KeyboardInterrupt(str(interrupted)) from interrupted
    return GateResult(suite.to_json(), ExitCode(suite.exit_code), output_dir)


def _read(directory: Path) -> dict[str, Any]:
    from gate.ci.compare import read_report

    path = directory / REPORT_FILE
    if not path.is_file():
        raise UsageError(f"{directory} holds no {REPORT_FILE}: is it an onnx-gate output folder?")
    return read_report(path)


def merge_outputs(
    directories: Sequence[Path], output_dir: Path, host: Host | None = None
) -> tuple[dict[str, Any], ExitCode]:
    """Combine the outputs of several runs (shards, or single-model runs) into one suite
    report and one set of report files in ``output_dir``.

    Every model's folder is copied under ``output_dir/models/``. Shards of one policy
    must all be there: a missing shard means models nobody gated, and the merged
    verdict is then an error naming them.
    """
    started = time.perf_counter()
    output = output_dir.resolve()
    sources: list[tuple[str, Path, dict[str, Any]]] = []
    shards: dict[int, dict[str, Any]] = {}
    policies: set[str | None] = set()
    everything: list[str] = []
    input_codes: list[int] = []
    input_errors: list[str] = []
    for directory in directories:
        if directory.resolve() == output:
            raise UsageError(f"--output-dir {output_dir} is also an input: choose another folder")
        report = _read(directory)
        input_codes.append(int(report.get("exit_code", ExitCode.RUNTIME_ERROR)))
        if report.get("kind") == SUITE:
            if not report["models"]:  # a shard that failed before gating anything says why
                input_errors += [f"{directory}: {error}" for error in report.get("errors") or []]
            policies.add(report.get("policy_sha256"))
            shard = report.get("shard")
            if shard:
                if shard["index"] in shards:
                    raise UsageError(
                        f"{directory}: shard {shard['index']}/{shard['count']} is given twice"
                    )
                shards[shard["index"]] = shard
            everything = everything or list(report.get("all_models") or [])
            for model in report["models"]:
                folder = within(directory, model.get("dir"))
                if folder is None or within(Path(), model.get("name")) is None:
                    raise UsageError(
                        f"{directory / REPORT_FILE}: a model's dir or name leads out of the "
                        "folder; refused"
                    )
                sources.append((model["name"], folder, _read(folder)))
        else:
            sources.append((report.get("name") or directory.resolve().name, directory, report))
    names = [name for name, _, _ in sources]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UsageError(f"the same model appears in several inputs: {listed(duplicates)}")
    counts = {shard["count"] for shard in shards.values()}
    if len(counts) > 1:
        raise UsageError(f"the inputs are shards of different splits (N = {sorted(counts)})")

    suite = new_suite(
        str(next(iter(r.get("policy") for _, _, r in sources), "")) if sources else "",
        None,
        everything or names,
    )
    suite.merged_from = [str(directory) for directory in directories]
    suite.policy_sha256 = next(iter(policies)) if len(policies) == 1 else None
    if len(policies) > 1:
        suite.warnings.append(
            "the shards were run with different policy files (their digests differ)"
        )
    missing = [name for name in everything if name not in names]
    if counts:
        count = counts.pop()
        absent = sorted(set(range(1, count + 1)) - set(shards))
        holding = [k for k in absent if set(shard_of(everything, (k, count))) & set(missing)]
        if missing:
            suite.errors.append(
                f"shard(s) {listed(holding, '-')} missing: model(s) "
                f"{listed(missing)} were not gated"
            )
            suite.message = "incomplete: not every shard's output was given"
        if set(absent) - set(holding):
            empty = ", ".join(str(k) for k in absent if k not in holding)
            suite.warnings.append(f"shard(s) {empty} not given; they held no model")
    suite.errors += input_errors
    if not sources and not input_errors:
        suite.errors.append("no input holds a gated model: nothing was merged")
    suite.testbed = None
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, folder, _ in sources:
        target = output_dir / MODELS_DIR / name
        if target.exists():
            shutil.rmtree(target)
        try:
            copy_folder(folder, target, skip={MODELS_DIR})
        except OSError as exc:
            raise UsageError(f"cannot merge {folder}: {exc.strerror or exc}") from None
    summarise(suite, [(name, report) for name, _, report in sources])
    # Never better than any input: a shard that failed to load its policy fails the merge.
    codes = [suite.exit_code, *input_codes]
    if missing or not sources:
        codes.append(int(ExitCode.RUNTIME_ERROR))
    code = ExitCode.combined(codes)
    suite.update(verdict=code.verdict, exit_code=int(code))
    if not sources and input_errors:
        suite.message = f"no model was gated: {input_errors[0]}"
    suite.environment = environment()
    suite.duration_s = round(time.perf_counter() - started, 3)
    write_reports(suite, output_dir, host or get_host())
    return suite.to_json(), ExitCode(suite.exit_code)
