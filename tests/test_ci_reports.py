"""The files CI systems read: junit.xml, codequality.json, metrics.txt, report.sarif and
gate.env, each checked against its format and against what the run decided; waivers."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_report

DYNAMIC = {"name": "dyn", "quantize": {"plugin": "dynamic"}}
BUDGETS = [
    {"metric": "top1_agreement", "min": 0.9},
    {"metric": "size_mb", "max": 0.0001},  # nothing is that small: fails
    {"metric": "latency_ms.p50", "max": 0.000001, "level": "warn"},  # a warn-level miss
]


def _line_of(policy: Path, text: str) -> int:
    return next(n for n, line in enumerate(policy.read_text().splitlines(), 1) if text in line)


def _run(case, gate_cli, tmp_path, body, name="out"):
    policy = case.write_policy(body)
    out = tmp_path / name
    result = gate_cli("run", policy, "-o", out, "-q")
    return policy, out, result


def test_a_failed_budget_is_a_junit_failure_on_its_policy_line(classifier, gate_cli, tmp_path):
    from junitparser import Failure, JUnitXml

    policy, out, result = _run(
        classifier, gate_cli, tmp_path, {"candidates": [DYNAMIC], "budgets": BUDGETS}
    )
    assert result.exit_code == 1
    report = load_report(out)
    assert set(report["files"]) >= {
        "report.json", "junit.xml", "metrics.txt", "codequality.json", "report.sarif", "gate.env",
    }  # fmt: skip
    xml = JUnitXml.fromfile(str(out / "junit.xml"))
    suites = list(xml)
    assert [suite.name for suite in suites] == ["onnx-gate.model"]
    cases = {case.name: case for case in suites[0]}
    assert set(cases) == {
        "top1_agreement >= 0.9 (budgets[0])",
        "size_mb <= 0.0001 (budgets[1])",
        "latency_ms.p50 <= 1e-06 (budgets[2])",
    }
    failed = cases["size_mb <= 0.0001 (budgets[1])"]
    assert [type(r) for r in failed.result] == [Failure]
    size = next(c for c in report["candidates"] if c["name"] == "original")["metrics"]["size_mb"]
    assert failed.result[0].message == f"size_mb expected <= 0.0001, found {size:.6g}"
    assert "expected: size_mb <= 0.0001" in failed.result[0].text
    assert failed._elem.get("file") == str(report["policy"])
    assert int(failed._elem.get("line")) == _line_of(policy, "metric: size_mb")
    assert cases["top1_agreement >= 0.9 (budgets[0])"].is_passed
    warned = cases["latency_ms.p50 <= 1e-06 (budgets[2])"]
    assert warned.is_passed and warned.system_out.startswith("warning: latency_ms.p50 expected")
    assert (xml.tests, xml.failures, xml.errors) == (3, 1, 0)
    row = next(row for row in report["budgets"] if row["metric"] == "size_mb")
    assert row["status"] == "fail" and row["candidate"] == "original"
    assert row["line"] == _line_of(policy, "metric: size_mb")
    assert report["counts"] == {
        "budgets": 3, "pass": 1, "fail": 1, "waived": 0, "inconclusive": 0, "warn": 1,
    }  # fmt: skip


def test_codequality_issues_have_stable_fingerprints_and_policy_locations(
    classifier, gate_cli, tmp_path
):
    body = {"candidates": [DYNAMIC], "budgets": BUDGETS}
    policy, first, _ = _run(classifier, gate_cli, tmp_path, body, "first")
    _, second, _ = _run(classifier, gate_cli, tmp_path, body, "second")
    issues = json.loads((first / "codequality.json").read_text())
    again = json.loads((second / "codequality.json").read_text())
    assert isinstance(issues, list) and len(issues) == 2  # the error and the warn-level miss
    for issue in issues:
        assert set(issue) >= {"description", "check_name", "fingerprint", "severity", "location"}
        assert issue["severity"] in {"info", "minor", "major", "critical", "blocker"}
        assert issue["location"]["path"] == load_report(first)["policy"]
        assert isinstance(issue["location"]["lines"]["begin"], int)
    by_check = {issue["check_name"]: issue for issue in issues}
    assert by_check["onnx-gate/size_mb"]["severity"] == "major"
    assert by_check["onnx-gate/latency_ms.p50"]["severity"] == "minor"
    assert by_check["onnx-gate/size_mb"]["location"]["lines"]["begin"] == _line_of(
        policy, "metric: size_mb"
    )
    # The measured latency differs between runs; the fingerprints must not.
    assert sorted(i["fingerprint"] for i in issues) == sorted(i["fingerprint"] for i in again)


def test_metrics_txt_is_openmetrics_with_the_chosen_models_numbers(classifier, gate_cli, tmp_path):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    _, out, result = _run(
        classifier, gate_cli, tmp_path, {"candidates": [DYNAMIC], "budgets": BUDGETS[:1]}
    )
    assert result.exit_code == 0
    report = load_report(out)
    text = (out / "metrics.txt").read_text()
    assert text.rstrip().endswith("# EOF")
    samples = {
        sample.name: sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    chosen = next(c for c in report["candidates"] if c["chosen"])
    speedup = samples["onnx_gate_speedup"]
    assert speedup.labels == {"model": "model", "candidate": chosen["name"]}
    assert speedup.value == chosen["metrics"]["speedup"]
    assert samples["onnx_gate_passed"].value == 1
    assert samples["onnx_gate_exit_code"].value == 0
    assert samples["onnx_gate_size_mb"].value == chosen["metrics"]["size_mb"]


def test_sarif_and_dotenv(classifier, gate_cli, tmp_path):
    policy, out, _ = _run(
        classifier, gate_cli, tmp_path, {"candidates": [DYNAMIC], "budgets": BUDGETS}
    )
    sarif = json.loads((out / "report.sarif").read_text())
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    assert run["tool"]["driver"]["name"] == "onnx-gate"
    levels = {r["ruleId"]: r["level"] for r in run["results"]}
    assert levels == {"budget/size_mb": "error", "budget/latency_ms.p50": "warning"}
    region = run["results"][0]["locations"][0]["physicalLocation"]["region"]
    assert region["startLine"] in {_line_of(policy, "size_mb"), _line_of(policy, "latency_ms")}
    env = dict(line.split("=", 1) for line in (out / "gate.env").read_text().splitlines() if line)
    assert env["ONNX_GATE_VERDICT"] == "fail" and env["ONNX_GATE_EXIT_CODE"] == "1"
    assert env["ONNX_GATE_BUDGETS_FAILED"] == "1" and env["ONNX_GATE_MODEL"] == ""


def test_an_error_run_is_a_junit_error_and_a_critical_issue(tmp_path, gate_cli):
    from junitparser import Error, JUnitXml

    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nmodel: {path: missing.onnx}\n")
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 2
    case = next(iter(next(iter(JUnitXml.fromfile(str(out / "junit.xml"))))))
    assert case.name == "gate run" and isinstance(case.result[0], Error)
    assert "missing.onnx" in case.result[0].message
    issues = json.loads((out / "codequality.json").read_text())
    assert [i["severity"] for i in issues] == ["critical"]


def test_an_active_waiver_passes_the_build_but_is_listed_and_counted(
    classifier, gate_cli, tmp_path
):
    from junitparser import JUnitXml, Skipped

    waiver = {"budget": "size_mb", "reason": "ISSUE-7: pruning lands next sprint",
              "owner": "ml-platform", "expires": "2999-12-31"}  # fmt: skip
    policy, out, result = _run(
        classifier, gate_cli, tmp_path,
        {"candidates": [DYNAMIC], "budgets": BUDGETS[:2], "waivers": [waiver]},
    )  # fmt: skip
    assert result.exit_code == 0
    report = load_report(out)
    assert report["verdict"] == "pass"
    row = next(row for row in report["budgets"] if row["metric"] == "size_mb")
    assert row["status"] == "waived" and row["waiver"]["owner"] == "ml-platform"
    assert report["counts"]["waived"] == 1 and report["counts"]["fail"] == 0
    [listed] = report["waivers"]
    assert listed["status"] == "applied" and listed["line"] == _line_of(policy, "budget: size_mb")
    assert any("ml-platform" in w and "2999-12-31" in w for w in report["warnings"])
    chosen = next(c for c in report["candidates"] if c["chosen"])
    assert next(b for b in chosen["budgets"] if b["metric"] == "size_mb")["waived"] is True
    cases = {c.name: c for c in next(iter(JUnitXml.fromfile(str(out / "junit.xml"))))}
    skipped = cases["size_mb <= 0.0001 (budgets[1])"].result[0]
    assert isinstance(skipped, Skipped) and "ISSUE-7" in skipped.message
    issues = json.loads((out / "codequality.json").read_text())
    assert [i["severity"] for i in issues] == ["info"]


def test_an_expired_waiver_fails_again_and_says_so(classifier, gate_cli, tmp_path):
    waiver = {"budget": "budgets[1]", "reason": "temporary", "owner": "someone",
              "expires": "2020-01-31"}  # fmt: skip
    _, out, result = _run(
        classifier, gate_cli, tmp_path,
        {"candidates": [DYNAMIC], "budgets": BUDGETS[:2], "waivers": [waiver]},
    )  # fmt: skip
    assert result.exit_code == 1
    report = load_report(out)
    assert report["waivers"][0]["status"] == "expired"
    assert any("expired on 2020-01-31" in w and "enforced again" in w for w in report["warnings"])
    assert "expired on 2020-01-31" in result.stdout


def test_waiver_mistakes_are_policy_errors_with_their_line(classifier, gate_cli):
    waiver = {"budget": "size_mb", "reason": "why not", "owner": "me", "expires": "2026-02-30"}
    bad_date = classifier.write_policy({"waivers": [waiver]})
    result = gate_cli("check", bad_date)
    assert result.exit_code == 2
    assert "policy.yaml:" in result.stderr and "waivers[0].expires" in result.stderr
    no_owner = classifier.write_policy(
        {"waivers": [{"budget": "size_mb", "reason": "why not", "expires": "2030-01-01"}]}
    )
    result = gate_cli("check", no_owner)
    assert result.exit_code == 2 and "'owner' is a required property" in result.stderr


def test_a_waiver_applies_through_its_expiry_day_and_must_match_a_budget(
    classifier, gate_cli, tmp_path
):
    from datetime import datetime, timezone

    today = datetime.now(timezone.utc).date().isoformat()
    waiver = {"budget": "size_mb", "reason": "until tonight", "owner": "me", "expires": today}
    _, out, result = _run(
        classifier, gate_cli, tmp_path,
        {"candidates": [DYNAMIC], "budgets": BUDGETS[:2], "waivers": [waiver]},
    )  # fmt: skip
    assert result.exit_code == 0  # the expiry day is the last day it applies
    assert load_report(out)["waivers"][0]["status"] == "applied"
    typo = classifier.write_policy(
        {"budgets": BUDGETS[:2], "waivers": [{**waiver, "budget": "size_mbb"}]}
    )
    result = gate_cli("check", typo)
    assert result.exit_code == 2
    assert "waivers[0].budget: 'size_mbb' matches no budget" in result.stderr
    beyond = classifier.write_policy(
        {"budgets": BUDGETS[:2], "waivers": [{**waiver, "budget": "budgets[7]"}]}
    )
    assert "'budgets[7]' matches no budget" in gate_cli("check", beyond).stderr
