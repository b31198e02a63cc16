"""Step 6: the report - report.json (the contract with CI), the console summary,
and the chosen model. Reporter plugins add more files."""

from __future__ import annotations

import contextlib
import json
import math
import platform
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gate.errors import bounded, listed
from gate.files import REPORT_MAX_BYTES, read_json, write_atomic
from gate.report import watchdog
from gate.report.model import ModelReport

REPORT_FILE = "report.json"
SUITE = "suite"
"""``kind`` of a report over several models (see gate.ci.suite)."""
MODEL_FILE = "model.onnx"
KEY_METRICS = (
    "latency_ms.p50",
    "latency_ms.p95",
    "speedup",
    "size_mb",
    "top1_agreement",
    "accuracy_drop",
)


def environment() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for module in ("onnxruntime", "onnx", "numpy"):
        imported = sys.modules.get(module)
        versions[module] = (
            getattr(imported, "__version__", "not loaded") if imported else "not loaded"
        )
    return versions


def new_report(policy_path: Path, name: str | None = None) -> ModelReport:
    """The report of a run that has not started: an error until a step says otherwise."""
    return ModelReport(policy=str(policy_path), name=name)


def model_reports(report: dict[str, Any], output_dir: Path) -> list[dict[str, Any]]:
    """The per-model reports behind a report: itself, or a suite's models (read from disk,
    each with ``_folder``, where it was read from)."""
    if report.get("kind") != SUITE:
        return [report]
    loaded = []
    for model in report.get("models") or []:
        try:
            folder = output_dir / model["dir"]
            loaded.append(
                {
                    **read_json(folder / REPORT_FILE, REPORT_MAX_BYTES, OSError),
                    "_folder": str(folder),
                }
            )
        except (OSError, ValueError):
            loaded.append({**model, "name": model["name"], "budgets": [], "candidates": []})
    return loaded


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while the report files are written, then act on them: a
    signal (CI runners send several) would otherwise stop the writing halfway. Only the
    main thread can change handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(number: int, frame: object) -> None:
        watchdog.signal_taken()  # the main thread has it: the watchdog must not write too
        received.append(number)

    previous = {number: signal.signal(number, hold) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        with watchdog.writing():
            yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received:  # the files are whole (or failed): the signal does what it would have done
            signal.raise_signal(received[0])


def json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null (the metric could not be measured)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def write_report_json(report: Mapping[str, Any], output_dir: Path) -> Path:
    path = output_dir / REPORT_FILE
    text = json.dumps(json_safe(report), indent=2, allow_nan=False, default=str)
    write_atomic(path, text + "\n")
    return path


def _bound(value: float | None) -> str:
    return "inf" if value is None else f"{value:.4g}"


def explain_budget(result: Mapping[str, Any]) -> str:
    """One budget result from report.json as a line: ``metric expected <= X, found Y ...``."""
    found = "not measured" if result.get("actual") is None else f"{result['actual']:.6g}"
    interval = result.get("interval")
    if interval and interval[0] != interval[1]:
        found += f" (interval {_bound(interval[0])} to {_bound(interval[1])})"
    if result.get("decision") == "inconclusive":
        found += " - inconclusive"
    return f"{result['metric']} expected {result['op']} {result['threshold']:g}, found {found}"


def _format(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "speedup":
        return f"{value:.2f}x"
    if metric.startswith("latency_ms"):
        return f"{value:.3f}"
    return f"{value:.4g}"


CONSOLE_BUDGETS = 10
"""Missed budgets the console lists per candidate; report.json and summary.md have all."""


def render_console(report: Mapping[str, Any]) -> str:
    """One screen: a line per candidate with key metrics, then each failing budget."""
    if report.get("kind") == SUITE:
        return _render_suite(report)
    lines = []
    candidates = report.get("candidates") or []
    if candidates:
        header = f"{'candidate':<18} {'status':<9} " + " ".join(f"{m:>15}" for m in KEY_METRICS)
        lines.append(header)
        for item in candidates:
            marker = "*" if item.get("chosen") else " "
            metrics = item.get("metrics") or {}
            row = f"{marker}{item['name']:<17} {item['status']:<9} " + " ".join(
                f"{_format(m, metrics.get(m)):>15}" for m in KEY_METRICS
            )
            lines.append(row)
        lines.append("")
        for item in candidates:
            if item.get("status") == "skipped":
                lines.append(f"  {item['name']}: skipped: {item['error']}")
            elif item.get("error"):
                lines.append(f"  {item['name']}: failed to {item.get('stage')}: {item['error']}")
            missed = [
                result
                for result in item.get("budgets") or []
                if not result["passed"] and result["level"] != "off"
            ]
            for result in missed[:CONSOLE_BUDGETS]:
                lines.append(f"  {item['name']}: {result['level']}: {explain_budget(result)}")
            if len(missed) > CONSOLE_BUDGETS:
                lines.append(
                    f"  {item['name']}: and {len(missed) - CONSOLE_BUDGETS:,} more missed "
                    "budgets (report.json lists every one)"
                )
    search = report.get("search") or {}
    if search:
        fallbacks = (
            f" ({search['fallbacks']} accuracy fallbacks)" if search.get("fallbacks") else ""
        )
        untried = [item["name"] for item in search["not_tried"]]
        lines.append(
            f"search ({search['mode']}): {search['tried']} candidate(s) tried{fallbacks} in "
            f"{search.get('seconds', 0):.1f} s, stopped: {search['stopped_by']}"
            + (f"; not tried: {listed(untried)}" if untried else "")
        )
    final = report.get("final") or {}
    for bout in final.get("bouts") or []:
        lines.append(
            f"final: {bout['challenger']} against {bout['holder']}: {bout['winner']}, {bout['why']}"
        )
    if report.get("recommendation"):
        lines.append(f"recommendation: {report['recommendation']}")
    for warning in report.get("warnings") or []:
        lines.append(f"warning: {warning}")
    for error in report.get("errors") or []:
        lines.append(f"error: {error}")
    verdict = str(report.get("verdict", "error")).upper()
    chosen = report.get("chosen")
    tail = f"chosen: {chosen}" if chosen else "nothing chosen"
    lines.append(
        f"verdict: {verdict} (exit {report.get('exit_code')}) - {tail}. {report.get('decision') or report.get('message') or ''}".rstrip()
    )
    return "\n".join(bounded(line) for line in lines)


def _render_suite(report: Mapping[str, Any]) -> str:
    """A line per model, each budget that did not pass, then the one verdict."""
    lines = [f"{'model':<24} {'verdict':<13} chosen"]
    for model in report.get("models") or []:
        lines.append(f"{model['name']:<24} {model['verdict']:<13} {model.get('chosen') or '-'}")
    shard = report.get("shard")
    if shard:
        lines.append(f"shard {shard['index']}/{shard['count']}")
    for row in report.get("budgets") or []:
        if row["status"] != "pass" and row["level"] != "off":
            lines.append(f"  {row['model']}: {row['status']} ({row['level']}): {row['message']}")
    lines += [f"warning: {warning}" for warning in report.get("warnings") or []]
    lines += [f"error: {error}" for error in report.get("errors") or []]
    lines.append(
        f"verdict: {str(report.get('verdict', 'error')).upper()} (exit {report.get('exit_code')}) "
        f"- {report.get('message', '')}".rstrip()
    )
    return "\n".join(bounded(line) for line in lines)
