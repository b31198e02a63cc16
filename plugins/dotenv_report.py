"""gate.env: the verdict as KEY=value lines for later CI jobs (GitLab's
``artifacts:reports:dotenv``; ``cat gate.env >> "$GITHUB_ENV"`` on GitHub)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate import Reporter, hookimpl

FILE = "gate.env"


def _value(value: Any) -> str:
    # dotenv values are single-line; GitLab keeps quotes literally, so none are added.
    return re.sub(r"[\r\n]+", " ", "" if value is None else str(value))


def render(report: Mapping[str, Any], output_dir: Path) -> str:
    model = report.get("output_model") or {}
    counts = report.get("counts") or {}
    values = {
        "ONNX_GATE_VERDICT": report.get("verdict"),
        "ONNX_GATE_EXIT_CODE": report.get("exit_code"),
        "ONNX_GATE_CHOSEN": report.get("chosen"),
        "ONNX_GATE_MODEL": output_dir / model["path"] if model.get("path") else "",
        "ONNX_GATE_REPORT": output_dir / "report.json",
        "ONNX_GATE_BUDGETS_FAILED": counts.get("fail", 0),
        "ONNX_GATE_BUDGETS_WAIVED": counts.get("waived", 0),
    }
    return "".join(f"{key}={_value(value)}\n" for key, value in values.items())


@hookimpl
def onnx_gate_reporters() -> list[Reporter]:
    return [Reporter.file("dotenv", FILE, render, "verdict and paths as KEY=value for later jobs")]
