"""metrics.txt: the chosen model's numbers in the OpenMetrics text format (GitLab's
``artifacts:reports:metrics``, Prometheus' textfile collector)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate import Reporter, hookimpl, model_reports

FILE = "metrics.txt"
PREFIX = "onnx_gate_"


def _metric_name(metric: str) -> str:
    return PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", metric)


def render(report: Mapping[str, Any], output_dir: Path) -> str:
    from prometheus_client import CollectorRegistry, Gauge
    from prometheus_client.openmetrics.exposition import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    gauges: dict[str, Gauge] = {}

    def gauge(name: str, documentation: str, labels: tuple[str, ...]) -> Gauge:
        if name not in gauges:
            gauges[name] = Gauge(name, documentation, labels, registry=registry)
        return gauges[name]

    for model in model_reports(dict(report), output_dir):
        name = str(model.get("name") or "model")
        gauge(f"{PREFIX}exit_code", "onnx-gate's exit code for the model", ("model",)).labels(
            name
        ).set(int(model.get("exit_code", 3)))
        gauge(f"{PREFIX}passed", "1 when the model passed the gate", ("model",)).labels(name).set(
            1 if model.get("verdict") == "pass" else 0
        )
        for key, value in (model.get("counts") or {}).items():
            gauge(
                f"{PREFIX}budgets_{key}" if key != "budgets" else f"{PREFIX}budgets",
                f"budget rows: {key}",
                ("model",),
            ).labels(name).set(value)
        chosen = model.get("chosen") or "original"
        entry = next((c for c in model.get("candidates") or [] if c.get("name") == chosen), None)
        for metric, value in sorted(((entry or {}).get("metrics") or {}).items()):
            if isinstance(value, int | float):
                gauge(
                    _metric_name(metric), f"{metric} of the chosen model", ("model", "candidate")
                ).labels(name, chosen).set(value)
    return generate_latest(registry).decode("utf-8")


@hookimpl
def onnx_gate_reporters() -> list[Reporter]:
    return [Reporter.file("openmetrics", FILE, render, "the chosen model's metrics (OpenMetrics)")]
