"""report.sarif: budgets that did not pass as SARIF 2.1.0 results on the policy lines
that set them (GitHub code scanning, IDE viewers). Waived ones are suppressed results."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate import Reporter, __version__, hookimpl

FILE = "report.sarif"
SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def sarif(report: Mapping[str, Any]) -> dict[str, Any]:
    from gate_plugins.codequality_report import fingerprint

    policy = str(report.get("policy") or "policy")
    rules: dict[str, dict[str, Any]] = {}
    results = []
    for row in report.get("budgets") or []:
        if row["status"] == "pass" or row["level"] == "off":
            continue
        rule = f"budget/{row['metric']}"
        rules.setdefault(
            rule,
            {
                "id": rule,
                "name": row["metric"].replace(".", "_"),
                "shortDescription": {"text": f"budget on {row['metric']}"},
            },
        )
        result: dict[str, Any] = {
            "ruleId": rule,
            "level": "error" if row.get("blocking", row["level"] == "error") else "warning",
            "message": {"text": f"{row['model']}: {row['message']} ({row['status']})"},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": policy},
                        "region": {"startLine": row.get("line") or 1},
                    }
                }
            ],
            "partialFingerprints": {
                "onnxGateBudget/v1": fingerprint(
                    row["model"], row["id"], row["metric"], row["op"], row["threshold"]
                )
            },
            "properties": {
                "model": row["model"],
                "candidate": row.get("candidate"),
                "actual": row.get("actual"),
                "threshold": row["threshold"],
                "status": row["status"],
            },
        }
        waiver = row.get("waiver")
        if row["status"] == "waived" and waiver:
            result["suppressions"] = [
                {
                    "kind": "external",
                    "status": "accepted",
                    "justification": f"{waiver.get('reason')} (owner {waiver.get('owner')}, "
                    f"until {waiver.get('expires')})",
                }
            ]
        results.append(result)
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "onnx-gate",
                        "version": __version__,
                        "informationUri": "https://github.com/onnx-gate/onnx-gate",
                        "rules": list(rules.values()),
                    }
                },
                "results": results,
                "invocations": [
                    {
                        "executionSuccessful": report.get("verdict") != "error",
                        "exitCode": report.get("exit_code"),
                        "toolExecutionNotifications": [
                            {"level": "error", "message": {"text": error}}
                            for error in report.get("errors") or []
                        ],
                    }
                ],
            }
        ],
    }


def render(report: Mapping[str, Any], output_dir: Path) -> str:
    return json.dumps(sarif(report), indent=2) + "\n"


@hookimpl
def onnx_gate_reporters() -> list[Reporter]:
    return [Reporter.file("sarif", FILE, render, "budgets missed, as SARIF 2.1.0 results")]
