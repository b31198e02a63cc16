"""The first ten minutes: ``onnx-gate init MODEL`` and ``onnx-gate run MODEL`` without a policy.

``init`` is the "measure first, set targets before deploying" step: it gates the original
alone (no candidates: loaded, validated, timed against a second session of itself, its
memory measured), then writes a commented policy whose budgets are drawn from what it
measured, for the user to tighten. The written policy is checked before ``init`` returns.
``run MODEL`` without a policy writes the same policy without the measured budgets into
the output folder and gates with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gate.errors import GateError, UsageError
from gate.exitcodes import ExitCode
from gate.files import not_regular, write_atomic
from gate.host.manager import Host, get_host
from gate.policy.loading import load_policies
from gate.policy.settings import RunOptions
from gate.policy.writing import Line, PolicyText, format_number, round_up
from gate.progress import Progress
from gate.run.candidates import Candidate
from gate.run.check import check_policy
from gate.run.judging import TENSOR_INSTEAD
from gate.run.pipeline import GateRun, run_model

POLICY_SUFFIXES = (".yaml", ".yml", ".json")
DATA_FILES = {
    "calibration": ("calibration.npz", "for static quantisation: representative inputs"),
    "validation": ("validation.npz", "what candidates are judged on"),
    "labels": ("labels.npy", "the validation samples' ground truth: accuracy against it"),
}
LATENCY_HEADROOM = 1.5
"""A shared CI runner is slower and noisier than a quiet one: budgets start this far above
what ``init`` measured, for the user to tighten to the service's own target."""
MEMORY_HEADROOM = 1.25
SPEEDUP_WANTED = 1.1


class BaselineRun(GateRun):
    """The original alone: loaded, validated, timed and measured, and no candidate built."""

    def search(self) -> list[Candidate]:
        return []


@dataclass(frozen=True)
class Start:
    """What ``init`` needs to know beyond the model file."""

    model: Path
    data_dir: Path | None = None
    usd_per_hour: float | None = None
    trusted: bool = False
    example_inputs: Mapping[str, Mapping[str, Any]] | None = None
    task: str | None = None
    """A task written instead of the inferred one, and why (the baseline chose it)."""
    task_why: str = ""


@dataclass
class Written:
    path: Path
    report: dict[str, Any]
    """The baseline run's report.json (empty when nothing was measured)."""


def is_model_file(path: Path, host: Host | None = None) -> bool:
    """Whether ``onnx-gate run PATH`` names a model rather than a policy."""
    suffix = path.suffix.lower()
    if suffix in POLICY_SUFFIXES or path.is_dir():
        return False
    host = host or get_host()
    return any(suffix in exporter.suffixes for exporter in host.records["exporter"].values())


def _relative(path: Path, folder: Path) -> str:
    # abspath, not resolve: a link (git-annex, a shared models folder) stays the user's name.
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(folder))).as_posix()


def _data_files(start: Start) -> dict[str, Path]:
    if start.data_dir is None:
        return {}
    if not start.data_dir.is_dir():
        raise UsageError(f"--data {start.data_dir}: not a folder")
    found = {key: start.data_dir / name for key, (name, _) in DATA_FILES.items()}
    present = {key: path for key, path in found.items() if path.is_file()}
    if not present:
        names = ", ".join(name for name, _ in DATA_FILES.values())
        raise UsageError(f"--data {start.data_dir}: holds none of {names}")
    return present


DEFAULTS_HEADER = "the defaults `onnx-gate init` writes."


def _header(start: Start, measured: bool) -> list[str]:
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    lines = [
        f"onnx-gate policy for {start.model.name}, written by `onnx-gate init` on {today}.",
        "Reference: the README's Policy reference; schema: schemas/policy.schema.json.",
    ]
    if not measured:
        lines[0] = f"onnx-gate policy for {start.model.name}: {DEFAULTS_HEADER}"
        lines.append(
            "No budgets were measured: `onnx-gate init MODEL -o policy.yaml` times the "
            "original and writes budgets drawn from it."
        )
    return lines


def policy_text(
    start: Start, folder: Path, report: Mapping[str, Any] | None, measured: bool | None = None
) -> str:
    """The commented policy for ``start.model``, its paths relative to ``folder`` (where
    it is written). ``report`` is the baseline run's report: its shapes, task and figures.
    ``measured`` picks the header (by default: whether there is a report)."""
    text = PolicyText(_header(start, report is not None if measured is None else measured))
    text.add(0, "version", 1)
    text.add(0, "model", None)
    text.add(1, "path", _relative(start.model, folder))
    if start.trusted:
        text.add(1, "trusted", True, "the exporter runs code from this file: only your own files")
    if start.example_inputs:
        text.add(1, "options", None)
        text.add(2, "example_inputs", dict(start.example_inputs))
    inputs = [  # a scalar input (a sample rate, say) has no shape to fix
        spec
        for spec in ((report or {}).get("model") or {}).get("inputs") or []
        if spec.get("shape")
    ]
    if inputs:
        text.add(0, "inputs", None)
        for spec in inputs:
            declared = [
                dim if isinstance(dim, int) else str(dim or "?")
                for dim in spec.get("declared_shape") or []
            ]
            dynamic = [dim for dim in declared if isinstance(dim, str)]
            named = [dim for dim in dynamic if dim != "?"]
            what = ", ".join(named) if len(named) == len(dynamic) else f"{len(dynamic)} dims"
            shown = "[" + ", ".join(str(dim) for dim in declared) + "]"
            why = (
                f"declared {shown}: dynamic {what} fixed for timing"
                if dynamic
                else f"{spec.get('dtype')}, as declared"
            )
            text.add(1, spec["name"], {"shape": spec["shape"]}, why)
    files = _data_files(start)
    text.add(0, "data", None)
    text.note(1, ".npz keyed by input name, first axis = samples; without validation data the")
    text.note(1, "gate judges on synthetic inputs, which only shows agreement on random data;")
    text.note(1, "`onnx-gate init MODEL --data DIR` finds these files in DIR")
    for key, (name, why) in DATA_FILES.items():
        if key in files:
            text.add(1, key, _relative(files[key], folder), why)
        else:
            text.hint(1, key, name, f"provide: {why}")
    if "validation" not in files:
        text.add(1, "samples", 16, "synthetic samples until data.validation exists")
    text.add(0, "target", None)
    text.add(1, "provider", "cpu", "an execution-provider plugin: onnx-gate plugins")
    if start.usd_per_hour is not None:
        text.add(1, "usd_per_hour", float(start.usd_per_hour), "the serving instance's price")
    else:
        text.hint(1, "usd_per_hour", 0.1, "the serving instance's price: enables usd_per_million")
    task = ((report or {}).get("validation") or {}).get("task") or {}
    if start.task is not None:
        text.add(0, "validation", None)
        text.note(1, start.task_why)
        text.add(1, "task", start.task)
    elif task.get("task"):
        text.add(0, "validation", None)
        text.add(1, "task", task["task"], f"inferred from {task.get('source', 'the model')}")
    text.add(0, "candidates", "auto", "the gate proposes recipes for this model and CPU")
    text.add(0, "search", {"max_trials": 24, "max_seconds": 900})
    _budgets(text, report)
    return text.render()


def _budgets(text: PolicyText, report: Mapping[str, Any] | None) -> None:
    if report is None:
        text.note(0, "budgets: none yet, so the gate holds every candidate to the task's default")
        text.note(0, "accuracy floor against the original; `onnx-gate init` measures the model")
        text.note(0, "and writes latency, memory and cost budgets drawn from it, e.g.")
        text.hint(0, "budgets", None)
        text.lines.append(
            Line(1, None, {"metric": "latency_ms.p95", "max": 10}, commented=True, item=True)
        )
        return
    text.add(0, "budgets", None)
    rows = report.get("budgets") or []
    floor = next((row for row in rows if row.get("line") is None), None)
    if floor is not None:
        op = "min" if floor["op"] == ">=" else "max"
        text.note(1, "the task's default accuracy floor, agreement with the original; with")
        text.note(1, "data.labels a budget on accuracy against the truth can replace it")
        text.item(1, {"metric": floor["metric"], op: floor["threshold"]})
    else:
        text.item(1, {"metric": "cosine_similarity", "min": 0.99}, "agreement with the original")
    original = next(
        (c for c in report.get("candidates") or [] if c.get("name") == "original"), None
    )
    metrics = (original or {}).get("metrics") or {}
    if "accuracy_drop" in metrics:
        text.item(
            1, {"metric": "accuracy_drop", "max": 0.01}, "lose at most one point on the labels"
        )
    text.item(
        1,
        {"metric": "speedup", "min": SPEEDUP_WANTED, "level": "warn"},
        "warn when nothing is 10% faster; level: error to require it",
    )
    measured = (
        ("latency_ms.p95", LATENCY_HEADROOM, "ms here; set your target, then level: error"),
        ("usd_per_million", LATENCY_HEADROOM, "USD per million inferences"),
        ("peak_memory_mb", MEMORY_HEADROOM, "MB peak"),
    )
    for metric, headroom, unit in measured:
        if metric in metrics:
            value = metrics[metric]
            text.item(
                1,
                {"metric": metric, "max": round_up(value * headroom), "level": "warn"},
                f"measured {format_number(value)} {unit}",
            )


def measured_lines(report: Mapping[str, Any]) -> list[str]:
    """What the baseline measured, for the console."""
    original = next(c for c in report.get("candidates") or [] if c.get("name") == "original")
    metrics = original.get("metrics") or {}
    parts = [
        f"{label} {format_number(metrics[key])}{unit}"
        for key, label, unit in (
            ("latency_ms.p50", "p50", " ms"),
            ("latency_ms.p95", "p95", " ms"),
            ("throughput_per_s", "throughput", "/s"),
            ("peak_memory_mb", "peak memory", " MB"),
            ("usd_per_million", "cost", " USD per million"),
        )
        if key in metrics
    ]
    lines = [f"original: {', '.join(parts)}"]
    runtime = (report.get("export") or {}).get("runtime") or {}
    if "runtime_speedup" in runtime:
        low, high = (
            format_number(b) if isinstance(b, int | float) else "?"
            for b in (runtime.get("interval") or [None, None])
        )
        lines.append(
            f"runtime: ONNX Runtime runs it {runtime['runtime_speedup']:.2f}x as fast as "
            f"{runtime['framework']} (95% interval {low}-{high})"
        )
    task = ((report.get("validation") or {}).get("task") or {}).get("task")
    return [*lines, f"task: {task}"] if task else lines


def _refuse_untrusted(start: Start, host: Host) -> None:
    suffix = start.model.suffix.lower()
    exporter = next((e for e in host.records["exporter"].values() if suffix in e.suffixes), None)
    if exporter is not None and exporter.runs_code and not start.trusted:
        raise UsageError(
            f"{start.model}: loading it with the '{exporter.name}' exporter runs code stored in "
            "the file; pass --trust-model only for a file you or your own pipeline made"
        )


def _check(path: Path, allowed_paths: Sequence[Path], host: Host) -> None:
    for policy in load_policies(path, allowed_paths):
        check_policy(policy, host)


def init_policy(
    start: Start,
    destination: Path,
    *,
    force: bool = False,
    allowed_paths: Sequence[Path] = (),
    host: Host | None = None,
    progress: Progress | None = None,
) -> Written:
    """Measure ``start.model`` and write its commented policy to ``destination``. Raises
    GateError (the baseline's own error, with its exit code) when the model cannot be gated."""
    if not start.model.is_file() and not start.model.is_dir():
        raise UsageError(f"{start.model}: no such model file")
    if destination.exists() and not force:
        raise UsageError(f"{destination} exists: choose another -o, or --force to replace it")
    folder = destination.parent
    host = host or get_host()
    _refuse_untrusted(start, host)
    folder.mkdir(parents=True, exist_ok=True)
    result = _baseline(start, destination, allowed_paths, host, progress)
    report = result.report
    vacuous = next((e for e in report.get("errors") or [] if TENSOR_INSTEAD in e), None)
    if vacuous is not None and start.task is None:
        # The data gives the inferred task nothing to decide (random audio for a VAD, say):
        # a first policy still has to run, so it judges raw outputs and says how to go back.
        inferred = re.search(r"\(task (\w+);", vacuous)
        name = inferred.group(1) if inferred else "the inferred task"
        why = (
            f"task {name} was inferred, but on this data the original decides nothing; raw "
            f"outputs are judged until data.validation holds inputs it decides on, then "
            f"write task: {name}"
        )
        start = dataclasses.replace(start, task="tensor", task_why=why)
        result = _baseline(start, destination, allowed_paths, host, progress)
        report = result.report
    if result.exit_code not in (ExitCode.PASS, ExitCode.BUDGET_FAILED):
        error = GateError(report.get("message") or "the original could not be measured")
        error.problems = list(report.get("errors") or [])
        error.exit_code = result.exit_code
        raise error
    # Written beside the destination and checked there, then moved: a policy that would not
    # check never replaces anything.
    with _draft(folder) as written:
        write_atomic(written, policy_text(start, folder, report))
        _check(written, allowed_paths, host)
        os.replace(written, destination)
    return Written(destination, report)


@contextlib.contextmanager
def _draft(folder: Path) -> Iterator[Path]:
    """A hidden policy file beside the destination (its paths and their confinement are
    the destination's), removed unless it was moved into place. Messages about it name it
    as the destination, whose lines it shares."""
    handle, name = tempfile.mkstemp(prefix=".onnx-gate-init-", suffix=".yaml", dir=folder)
    os.close(handle)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _baseline(
    start: Start,
    destination: Path,
    allowed_paths: Sequence[Path],
    host: Host,
    progress: Progress | None,
) -> Any:
    """The original gated alone, from a draft of the policy with the final one's header (so
    a problem's line number is the written policy's line, and it is named so)."""
    with (
        _draft(destination.parent) as draft,
        tempfile.TemporaryDirectory(prefix="onnx-gate-init-") as out,
    ):
        write_atomic(draft, policy_text(start, destination.parent, None, measured=True))
        options = RunOptions(
            output_dir=Path(out), trust_model=start.trusted, allowed_paths=tuple(allowed_paths)
        )
        result = run_model(draft, options, host=host, progress=progress, runner=BaselineRun)
    report = result.report
    for key in ("message", "decision"):
        if isinstance(report.get(key), str):
            report[key] = report[key].replace(draft.name, destination.name)
    report["errors"] = [e.replace(draft.name, destination.name) for e in report.get("errors") or []]
    return result


def default_policy(model: Path, output_dir: Path, trusted: bool, host: Host | None = None) -> Path:
    """``onnx-gate run MODEL`` without a policy: the policy ``init`` writes, without measured
    budgets, written into the output folder (where the user finds it) and checked."""
    if not model.is_file():
        raise UsageError(f"{model}: no such model file")
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "policy.yaml"
    if path.exists() and not _written_by_run(path):
        raise UsageError(
            f"{path} exists and is not the default policy `run MODEL` writes: choose another "
            "--output-dir, or pass that policy to `onnx-gate run`"
        )
    write_atomic(path, policy_text(Start(model, trusted=trusted), output_dir, None))
    return path


def _written_by_run(path: Path) -> bool:
    if not_regular(path) or not path.is_file():  # a FIFO must not block the check
        return False
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.readline().rstrip().endswith(DEFAULTS_HEADER)
    except OSError:
        return False
