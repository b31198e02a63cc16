"""Compare two reports (say main's and a pull request's): what changed, and whether
the comparison is fair at all (same testbed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gate.errors import UsageError
from gate.policy import REPORT_SCHEMA, format_location, load_schema, schema_problems
from gate.testbed import differences

COMPARED_METRICS = (
    "speedup",
    "latency_ms.p50",
    "latency_ms.p95",
    "throughput_per_s",
    "size_mb",
    "peak_memory_mb",
    "top1_agreement",
    "accuracy",
    "cosine_similarity",
)


def read_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"report not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path} as a report.json: {exc}") from None
    if not isinstance(report, dict) or report.get("report_version") != 1:
        raise UsageError(f"{path} is not an onnx-gate report (report_version 1)")
    problems = schema_problems(report, load_schema(REPORT_SCHEMA))
    if problems:
        raise UsageError(
            f"{path} does not match the report schema",
            [
                f"{path.name}: {format_location(where)}: {message}"
                for where, message in problems[:10]
            ],
        )
    return report


def _chosen_metrics(report: dict[str, Any]) -> tuple[str | None, dict[str, float]]:
    chosen = report.get("chosen")
    for item in report.get("candidates") or []:
        if item.get("name") == chosen:
            return chosen, item.get("metrics") or {}
    return chosen, {}


def compare_reports(base: dict[str, Any], head: dict[str, Any]) -> dict[str, Any]:
    """Testbed differences (warnings) and the chosen model's metrics side by side."""
    warnings = [
        f"testbeds differ, so timings are not comparable: {line}"
        for line in differences(base.get("testbed"), head.get("testbed"))
    ]
    base_name, base_metrics = _chosen_metrics(base)
    head_name, head_metrics = _chosen_metrics(head)
    rows = []
    for metric in COMPARED_METRICS:
        if metric in base_metrics or metric in head_metrics:
            before, after = base_metrics.get(metric), head_metrics.get(metric)
            change = (after / before - 1.0) if before and after is not None else None
            rows.append({"metric": metric, "base": before, "head": after, "change": change})
    return {
        "base": {
            "verdict": base.get("verdict"),
            "chosen": base_name,
            "model_sha256": (base.get("model") or {}).get("sha256"),
        },
        "head": {
            "verdict": head.get("verdict"),
            "chosen": head_name,
            "model_sha256": (head.get("model") or {}).get("sha256"),
        },
        "metrics": rows,
        "warnings": warnings,
    }
