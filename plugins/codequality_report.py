"""codequality.json: each budget that did not pass as a Code Climate issue on the policy
line that sets it (GitLab's ``artifacts:reports:codequality``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate import Reporter, bounded, hookimpl

FILE = "codequality.json"
SEVERITY = {
    ("error", "fail"): "major",
    ("error", "not_measured"): "major",
    ("error", "inconclusive"): "minor",
    ("warn", "fail"): "minor",
    ("warn", "not_measured"): "minor",
    ("warn", "inconclusive"): "info",
}


def fingerprint(*parts: Any) -> str:
    """Stable across runs: what the issue is about, never the measured value."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def issues(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    policy = str(report.get("policy") or "policy")
    found = []
    for row in report.get("budgets") or []:
        if row["status"] == "waived":
            severity = "info"
            waiver = row.get("waiver") or {}
            text = (
                f"{row['message']} (waived until {waiver.get('expires')} by "
                f"{waiver.get('owner')}: {waiver.get('reason')})"
            )
        else:
            # A row that does not hold the build back is reported as a warn-level one.
            blocking = row.get("blocking", row["level"] == "error")
            severity = SEVERITY.get(("error" if blocking else "warn", row["status"]), "")
            text = row["message"]
        if not severity:
            continue
        found.append(
            {
                "type": "issue",
                "description": f"onnx-gate {row['model']}: {text}",
                "check_name": f"onnx-gate/{row['metric']}",
                "categories": ["Performance"],
                "fingerprint": fingerprint(
                    row["model"], row["id"], row["metric"], row["op"], row["threshold"]
                ),
                "severity": severity,
                "location": {"path": policy, "lines": {"begin": row.get("line") or 1}},
            }
        )
    for error in report.get("errors") or []:
        found.append(
            {
                "type": "issue",
                "description": bounded(f"onnx-gate: {error}"),
                "check_name": "onnx-gate/error",
                "categories": ["Bug Risk"],
                "fingerprint": fingerprint("error", error),
                "severity": "critical",
                "location": {"path": policy, "lines": {"begin": 1}},
            }
        )
    return found


def render(report: Mapping[str, Any], output_dir: Path) -> str:
    return json.dumps(issues(report), indent=2) + "\n"


@hookimpl
def onnx_gate_reporters() -> list[Reporter]:
    return [Reporter.file("codequality", FILE, render, "budgets missed, as code-quality issues")]
