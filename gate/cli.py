"""The command line: the only place that prints or exits."""

from __future__ import annotations

import json
import signal
from importlib.resources import as_file, files
from pathlib import Path

import click

from gate.errors import GateError, InterruptedAfterReport, UsageError, bounded
from gate.exitcodes import ExitCode
from gate.identity import __version__
from gate.progress import progress
from gate.report import watchdog

EXIT_CODES_HELP = "Exit codes: " + ", ".join(f"{int(code)} {code.description}" for code in ExitCode)

output_dir_option = click.option(
    "--output-dir",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("gate-report"),
    show_default=True,
    help="Where report.json, summary.md and the chosen model.onnx are written.",
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
trust_model_option = click.option(
    "--trust-model",
    is_flag=True,
    help="Let exporters load model files by running code stored in them (pickle, joblib, a "
    ".py factory, a .pt2, Keras), as model.trusted: true does (init writes it so). Only for "
    "files you made.",
)
allow_path_option = click.option(
    "--allow-path",
    "allowed_paths",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="ONNX_GATE_ALLOW_PATHS",
    help="A folder outside the repository the policy's files may come from (repeatable; "
    "ONNX_GATE_ALLOW_PATHS holds several, separated by ':'). By default a policy may only "
    "name files in its repository, or in its own folder outside one.",
)


def _fail(error: GateError) -> None:
    for line in error.lines():
        click.echo(bounded(f"error: {line}"), err=True)
    raise SystemExit(int(error.exit_code))


@click.group(epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="onnx-gate")
def cli() -> None:
    """A deployment gate for ONNX models: build optimised candidates, validate them
    against the original, measure them on the target, and fail the build when a
    budget is exceeded."""


def _run_and_exit(
    policy: Path,
    output_dir: Path,
    quiet: bool,
    keep_candidates: bool = False,
    shard: tuple[int, int] | None = None,
    stage: str | None = None,
    source: Path | None = None,
    trust_model: bool = False,
    allowed_paths: tuple[Path, ...] = (),
) -> None:
    from gate.ci.suite import run_gate
    from gate.report.document import render_console

    with progress(quiet) as say:
        result = run_gate(
            policy, output_dir, progress=say, keep_candidates=keep_candidates, shard=shard,
            stage=stage, source=source, trust_model=trust_model, allowed_paths=allowed_paths,
        )  # fmt: skip
    click.echo(render_console(result.report))
    written = result.output_dir / "report.json"
    if not quiet and written.is_file():
        click.echo(f"report: {written}", err=True)
    raise SystemExit(int(result.exit_code))


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("policy", type=click.Path(path_type=Path))  # a folder is reported in report.json
@output_dir_option
@quiet_option
@click.option(
    "--keep-candidates", is_flag=True, help="Also save every candidate as candidates/NAME.onnx."
)
@click.option(
    "--shard",
    metavar="K/N",
    help="Gate only shard K of N of the policy's models (every Nth, from the Kth), "
    "for a CI matrix; combine the shards with `onnx-gate merge`.",
)
@click.option(
    "--stage",
    type=click.Choice(["build", "measure", "decide"]),
    help="Run one stage, as its own CI job: build (search, build, validate), measure "
    "(validate and time on this runner, then decide; needs --from), decide (again, from "
    "measurements and the current budgets; needs --from).",
)
@click.option(
    "--from",
    "source",
    type=click.Path(file_okay=False, path_type=Path),
    help="The previous stage's output folder.",
)
@trust_model_option
@allow_path_option
def run(
    policy: Path,
    output_dir: Path,
    quiet: bool,
    keep_candidates: bool,
    shard: str | None,
    stage: str | None,
    source: Path | None,
    trust_model: bool,
    allowed_paths: tuple[Path, ...],
) -> None:
    """Run the gate for POLICY (JSON or YAML) and write the reports.

    A policy naming several models (`models:`) gates each into OUTPUT_DIR/models/NAME/
    and writes one verdict over all of them on top. POLICY may instead be a model file
    (model.onnx, or one an exporter reads): it is gated with the defaults `onnx-gate init`
    writes, and that policy is left in OUTPUT_DIR/policy.yaml to edit."""
    from gate.ci.suite import parse_shard

    try:
        policy, allowed_paths = _policy_for(policy, output_dir, trust_model, allowed_paths)
        share = parse_shard(shard) if shard is not None else None
        if (source is not None) != (stage in ("measure", "decide")):
            raise UsageError(
                f"--stage {stage} needs --from: the previous stage's output folder"
                if stage in ("measure", "decide")
                else "--from goes with --stage measure or --stage decide"
            )
    except GateError as error:
        from gate.run.pipeline import report_usage_error

        report_usage_error(policy, output_dir, error)  # every run leaves its report.json
        _fail(error)
    _run_and_exit(
        policy, output_dir, quiet, keep_candidates, share, stage, source, trust_model,
        allowed_paths,
    )  # fmt: skip


def _policy_for(
    named: Path, output_dir: Path, trust_model: bool, allowed_paths: tuple[Path, ...]
) -> tuple[Path, tuple[Path, ...]]:
    """`run MODEL` without a policy: the default policy, written where the user finds it;
    the model's folder is allowed, since the person running the gate named it."""
    from gate.ci.starter import default_policy, is_model_file

    if not is_model_file(named):
        return named, allowed_paths
    policy = default_policy(named, output_dir, trust_model)
    click.echo(
        f"no policy given: gating {named} with the defaults `onnx-gate init` writes, saved as "
        f"{policy}; `onnx-gate init {named} -o policy.yaml` measures the model and writes a "
        "policy with budgets to edit and pass to `onnx-gate run`",
        err=True,
    )
    return policy, (*allowed_paths, named.resolve().parent)


def _example_inputs(values: tuple[str, ...]) -> dict[str, dict[str, object]] | None:
    """`--example-input NAME=1x3x224x224[:dtype]` as the torch exporter's example_inputs."""
    if not values:
        return None
    parsed: dict[str, dict[str, object]] = {}
    for value in values:
        name, _, spec = value.partition("=")
        shape_text, _, dtype = spec.partition(":")
        try:
            shape = [int(dim) for dim in shape_text.lower().split("x")]
        except ValueError:
            shape = []
        if not name or not shape or min(shape) < 1:
            raise UsageError(
                f"--example-input {value}: expected NAME=DIMxDIM[:dtype], e.g. x=1x3x224x224"
            )
        parsed[name] = {"shape": shape, **({"dtype": dtype} if dtype else {})}
    return parsed


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("policy.yaml"),
    show_default=True,
    help="Where the policy is written.",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="A folder holding calibration.npz, validation.npz and labels.npy (any of them).",
)
@click.option(
    "--usd-per-hour",
    type=click.FloatRange(min=0, min_open=True),
    help="The serving instance's price: a cost budget in USD per million inferences.",
)
@click.option(
    "--example-input",
    "example_inputs",
    multiple=True,
    metavar="NAME=SHAPE[:DTYPE]",
    help="For a PyTorch .py factory: an input to trace with, e.g. x=1x3x224x224 (repeatable).",
)
@trust_model_option
@click.option("--force", is_flag=True, help="Replace an existing policy file.")
@quiet_option
@allow_path_option
def init(
    model: Path,
    output: Path,
    data_dir: Path | None,
    usd_per_hour: float | None,
    example_inputs: tuple[str, ...],
    trust_model: bool,
    force: bool,
    quiet: bool,
    allowed_paths: tuple[Path, ...],
) -> None:
    """Measure MODEL once and write a commented policy for it: its shapes, its data files,
    the task it was judged by, and latency, memory and cost budgets drawn from what was
    measured here, for you to tighten. The policy passes `onnx-gate check` and runs."""
    from gate.ci.starter import Start, init_policy, measured_lines

    try:
        start = Start(model, data_dir, usd_per_hour, trust_model, _example_inputs(example_inputs))
        with progress(quiet) as say:
            written = init_policy(
                start, output, force=force, allowed_paths=allowed_paths, progress=say
            )
    except GateError as error:
        _fail(error)
    for line in measured_lines(written.report):
        click.echo(line)
    click.echo(f"written: {written.path} (next: onnx-gate run {written.path})")


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument(
    "directories", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path)
)
@output_dir_option
def merge(directories: tuple[Path, ...], output_dir: Path) -> None:
    """Combine the output folders of several runs (the shards of a CI matrix) into one
    verdict and one set of report files; exits as `run` would have over all models."""
    from gate.ci.suite import merge_outputs
    from gate.report.document import render_console

    try:
        suite, code = merge_outputs(list(directories), output_dir)
    except GateError as error:
        _fail(error)
    except OSError as error:
        _fail(UsageError(f"cannot merge into {output_dir}: {error.strerror or error}"))
    click.echo(render_console(suite))
    raise SystemExit(int(code))


@cli.command(epilog=EXIT_CODES_HELP)
@output_dir_option
@quiet_option
def demo(output_dir: Path, quiet: bool) -> None:
    """Run the gate on the tiny classifier bundled with onnx-gate."""
    with as_file(files("gate.demo").joinpath("policy.yaml")) as policy:
        click.echo(f"demo policy: {policy}", err=True)
        _run_and_exit(policy, output_dir, quiet)


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("policy", type=click.Path(dir_okay=False, path_type=Path))
@allow_path_option
def check(policy: Path, allowed_paths: tuple[Path, ...]) -> None:
    """Validate POLICY against the schema and the installed plugins; run nothing."""
    from gate.host.manager import get_host
    from gate.policy.loading import load_policies
    from gate.run.check import check_policy

    try:
        loaded = load_policies(policy, allowed_paths)
        host = get_host()
        errors: list[GateError] = []
        for each in loaded:  # every model's problems at once, each line once
            try:
                check_policy(each, host)
            except GateError as error:
                errors.append(error)
        if errors:
            problems = list(dict.fromkeys(line for error in errors for line in error.lines()))
            worst = max(errors, key=lambda error: int(error.exit_code))
            raise type(worst)(f"{policy}: {len(problems)} problem(s)", problems)
    except GateError as error:
        _fail(error)
    first = loaded[0]
    recipes = "candidates: auto" if first.recipes is None else f"{len(first.recipes)} candidate(s)"
    models = f"{len(loaded)} models, " if first.in_suite else ""
    click.echo(f"{policy}: OK ({models}{recipes}, {len(first.budgets)} budget(s))")


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("policy", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Total timing time.",
)
@click.option(
    "--sessions",
    type=click.IntRange(min=1, max=100),
    default=5,
    show_default=True,
    help="Fresh session pairs to spread it over.",
)
@output_dir_option
@allow_path_option
def noise(
    policy: Path, seconds: float, sessions: int, output_dir: Path, allowed_paths: tuple[Path, ...]
) -> None:
    """Time POLICY's model against itself (A/A) and report this machine's timing noise."""
    from gate.ci.noise import measure_noise, write_noise

    try:
        result = measure_noise(policy, seconds, sessions, allowed_paths)
        output_dir.mkdir(parents=True, exist_ok=True)
        written = write_noise(result, output_dir)
    except GateError as error:
        _fail(error)
    except OSError as error:
        _fail(UsageError(f"cannot write into {output_dir}: {error.strerror or error}"))
    speedup = result["aa_speedup"]
    low, high = result["paired_ratio_p5_p95"]
    click.echo(
        f"A/A: {result['rounds']} rounds over {result['session_pairs']} session pairs in "
        f"{result['seconds']} s, median latency {result['latency_ms_p50']:.3f} ms\n"
        f"pooled A/A speedup {speedup['point']:.3f}x, {speedup['confidence']:.0%} interval "
        f"{speedup['low']:.3f}-{speedup['high']:.3f}; per session pair "
        + ", ".join(f"{p:.3f}" for p in result["aa_speedup_per_session_pair"])
        + f"\npaired (ABBA) ratios p5-p95 {low:.3f}-{high:.3f}; CV of latency "
        f"{result['cv_latency']:.1%}, of paired ratios {result['cv_paired_ratio']:.1%}\n"
        f"{result['advice']}"
    )
    click.echo(f"written: {written}", err=True)


@cli.command(
    epilog="Exit codes: 0 no regression, 1 a regression budget failed, 2 usage error, "
    "4 nothing could be compared (a side chose no model, or no model is in both)."
)
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("head", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write compare.json and compare.md (Markdown) here.",
)
@click.option(
    "--side-by-side/--no-side-by-side",
    default=True,
    show_default=True,
    help="When both folders hold their chosen model.onnx, time the two against each other "
    "here in one paired block and judge timing regressions on that ratio.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Timing time per model for --side-by-side.",
)
def compare(
    base: Path,
    head: Path,
    as_json: bool,
    output_dir: Path | None,
    side_by_side: bool,
    seconds: float,
) -> None:
    """Compare two reports (BASE, e.g. main's, and HEAD; report.json files or output
    folders) and check the regression budgets (the policy's `regressions`, else: speedup
    may fall at most 5%, labelled accuracy may not fall). Two runs on a shared machine differ
    by more than either run's noise, so when both folders hold their chosen model.onnx the two
    models are timed side by side here and timing regressions are judged on that ratio;
    otherwise on both reports' intervals, and only as warnings when the testbeds differ."""
    from gate.ci.compare import compare_reports, read_report, write_comparison

    try:
        result = compare_reports(
            read_report(base), read_report(head), seconds if side_by_side else None
        )
        if output_dir is not None:
            write_comparison(result, output_dir)
    except GateError as error:
        _fail(error)
    except OSError as error:
        _fail(UsageError(f"cannot write into {output_dir}: {error.strerror or error}"))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        raise SystemExit(result["exit_code"])
    for warning in result["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    for model in result["models"]:
        click.echo(
            f"{model['name']}: base {model['base']['verdict']} ({model['base']['chosen']}), "
            f"head {model['head']['verdict']} ({model['head']['chosen']})"
        )
        paired = model.get("side_by_side") or {}
        if "speedup" in paired:
            low, high = paired["interval"]
            click.echo(
                f"  side by side: the head's model runs at {paired['speedup']:.3f}x the base's "
                f"speed (95% interval {low:.3f}-{high:.3f}, {paired['rounds']} rounds)"
            )
        for row in model["metrics"]:
            change = "" if row["change"] is None else f" ({row['change']:+.1%})"
            click.echo(f"  {row['metric']:<18} {row['base']!s:>24} -> {row['head']!s:<24}{change}")
    for line in result["failed"]:
        click.echo(f"regression: {line}")
    click.echo(f"compare: {result['verdict'].upper()} (exit {result['exit_code']})")
    raise SystemExit(result["exit_code"])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List the loaded plugins, what they register and the hooks they implement."""
    from gate.host.manager import KINDS, get_host

    try:
        host = get_host()
        records = host.records
    except GateError as error:
        _fail(error)
    listing = []
    for info in host.infos:
        registered = {
            kind: sorted(
                name for name, record in records[kind].items() if record.plugin == info.name
            )
            for kind in KINDS
        }
        listing.append(
            {
                "name": info.name,
                "module": info.module,
                "distribution": info.distribution,
                "version": info.version,
                "source": info.source,
                "kinds": [kind for kind, names in registered.items() if names],
                "registers": {kind: names for kind, names in registered.items() if names},
                "hooks": host.hooks_of(info.name),
            }
        )
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for item in listing:
        origin = (
            f"{item['distribution']} {item['version']}" if item["distribution"] else item["source"]
        )
        names = "; ".join(
            f"{kind}: {', '.join(names)}" for kind, names in item["registers"].items()
        )
        click.echo(f"{item['name']:<18} {origin:<22} {names}")


def _terminate(signum: int, frame: object) -> None:
    """The job's timeout sends SIGTERM, a user Ctrl-C: unwind once, so the run writes a
    partial report. Later signals (CI runners send several) are ignored: a second
    KeyboardInterrupt would cut that report short, or kill the process outside 0-4."""
    watchdog.signal_taken()  # the main thread is alive and writes the report itself
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    watchdog.start()  # a hang in native code never lets _terminate run
    try:
        code = cli.main(prog_name="onnx-gate", standalone_mode=False)
    except GateError as error:  # safety net: expected failures never show a traceback
        _fail(error)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = int(ExitCode.USAGE_ERROR)
    except (KeyboardInterrupt, click.Abort) as exc:
        finished = exc.__cause__ if isinstance(exc, click.Abort) else exc  # click wraps it
        if isinstance(finished, InterruptedAfterReport):  # the run had finished: it stands
            click.echo("onnx-gate: interrupted after report.json was complete", err=True)
            code = finished.exit_code
        else:
            click.echo("onnx-gate: interrupted; report.json (if any) is marked partial", err=True)
            code = int(ExitCode.RUNTIME_ERROR)
    except Exception as exc:  # a bug in the gate: exit 3 (never 1, a failed budget), one line
        import os
        import traceback

        if os.environ.get("ONNX_GATE_DEBUG"):
            traceback.print_exc()
        where = traceback.extract_tb(exc.__traceback__)[-1]
        text = str(exc).splitlines()[0][:300] if str(exc).strip() else ""
        click.echo(
            f"error: internal error: {type(exc).__name__}: {text} (at "
            f"{Path(where.filename).name}:{where.lineno}); ONNX_GATE_DEBUG=1 shows the traceback",
            err=True,
        )
        code = int(ExitCode.RUNTIME_ERROR)
    raise SystemExit(code or 0)
