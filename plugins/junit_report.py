"""junit.xml: one test case per budget per model, for CI test reports (GitLab's
``artifacts:reports:junit``, GitHub test-report actions, Jenkins)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate import Reporter, hookimpl, model_reports

FILE = "junit.xml"


def _case_type() -> Any:
    from junitparser import Attr, IntAttr, TestCase

    class BudgetCase(TestCase):
        """A test case that points at the policy line setting the budget (GitLab reads @file)."""

        file = Attr()
        line = IntAttr()

    return BudgetCase


def _case(row: Mapping[str, Any], policy: str) -> Any:
    from junitparser import Failure, Skipped

    case = _case_type()(f"{row['metric']} {row['op']} {row['threshold']:g} ({row['id']})")
    case.classname = f"onnx-gate.{row['model']}"
    case.time = 0.0
    case.file = policy
    if row.get("line"):
        case.line = int(row["line"])
    status, level = row["status"], row["level"]
    if status == "waived":
        waiver = row.get("waiver") or {}
        case.result = [
            Skipped(
                f"waived until {waiver.get('expires')} by {waiver.get('owner')}: "
                f"{waiver.get('reason')} ({row['message']})"
            )
        ]
    elif status != "pass" and row.get("blocking", level == "error"):
        failure = Failure(row["message"], status)
        failure.text = (
            f"candidate: {row['candidate']}\nexpected: {row['metric']} {row['op']} "
            f"{row['threshold']:g}\nactual: {row['actual']}\nstatus: {status}"
        )
        case.result = [failure]
    elif status != "pass":  # a warn-level miss passes, with the warning in its output
        case.system_out = f"warning: {row['message']}"
    return case


def render(report: Mapping[str, Any], output_dir: Path) -> str:
    from junitparser import Error, JUnitXml, TestCase, TestSuite

    xml = JUnitXml("onnx-gate")
    policy = str(report.get("policy") or "")
    for model in model_reports(dict(report), output_dir):
        name = str(model.get("name") or "model")
        suite = TestSuite(f"onnx-gate.{name}")
        rows = model.get("budgets") or []
        for row in rows:
            if row["level"] != "off":
                suite.append(_case(row, policy))  # add_testcase recounts: quadratic
        if model.get("verdict") == "error" or not rows:
            case = TestCase("gate run", f"onnx-gate.{name}", 0.0)
            if model.get("verdict") == "error":
                errors = model.get("errors") or [model.get("message") or "error"]
                case.result = [Error(str(errors[0]), "error")]
                case.result[0].text = "\n".join(model.get("errors") or [])
            suite.append(case)
        suite.update_statistics()
        suite.time = float(model.get("duration_s") or 0.0)
        xml.add_testsuite(suite)
    xml.update_statistics()
    from xml.dom import minidom

    return minidom.parseString(xml.tostring()).toprettyxml(indent="  ", encoding="utf-8").decode()


@hookimpl
def onnx_gate_reporters() -> list[Reporter]:
    return [Reporter.file("junit", FILE, render, "one test case per budget per model")]
