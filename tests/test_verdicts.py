"""Verdicts on a noisy machine: intervals, inconclusive, memory, testbed, A/A noise, interruption."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import candidate, load_report
from test_run import assert_valid_report

from gate.run.testbed import differences

# An identical copy of the original (same file, same session options): its true speedup is 1.0.
SAME = {"name": "same", "graph": {"level": "all"}}
# 12 rounds -> 6 ABBA ratios: too few for any 99.9% bound on their median, so the
# interval is open and no threshold can be decided: inconclusive, every time.
UNDECIDABLE = {
    "warmup_runs": 2,
    "min_runs": 12,
    "max_runs": 12,
    "max_seconds": 30,
    "confidence": 0.999,
    "memory": False,
}


def test_a_budget_the_interval_cannot_decide_is_inconclusive_exit_4(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(
        {
            "candidates": [SAME],
            "budgets": [{"metric": "speedup", "min": 1.0001}],
            "measure": UNDECIDABLE,
        }
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    report = load_report(out)
    assert_valid_report(report)
    same = candidate(report, "same")
    assert result.exit_code == 4
    assert report["verdict"] == "inconclusive" and report["chosen"] is None
    assert candidate(report, "original")["status"] == "rejected"  # 1.0 < 1.0001, exactly
    budget = next(b for b in same["budgets"] if b["metric"] == "speedup")
    assert (
        budget["decision"] == "inconclusive"
        and budget["interval"][0] == 0.0
        and budget["interval"][1] is None  # infinite: JSON has no infinity
    )
    assert same["reasons"][0].endswith("- inconclusive")
    assert "verdict: INCONCLUSIVE (exit 4)" in result.stdout


def test_inconclusive_can_be_mapped_to_warn_or_fail(classifier, gate_cli, tmp_path):
    for mapping, exit_code in (("warn", 0), ("fail", 1)):
        policy = classifier.write_policy(
            {
                "candidates": [SAME],
                "budgets": [{"metric": "speedup", "min": 1.0001}],
                "measure": {**UNDECIDABLE, "on_inconclusive": mapping},
            }
        )
        out = tmp_path / mapping
        result = gate_cli("run", policy, "-o", out, "-q")
        report = load_report(out)
        assert candidate(report, "same")["budgets"][0]["decision"] == "inconclusive"
        assert result.exit_code == exit_code, mapping
        if mapping == "warn":
            assert report["chosen"] == "same"
            assert any("measure.on_inconclusive: warn" in w for w in report["warnings"])
            # CI sees what the gate decided: a warning, not a failed test or an error.
            row = next(r for r in report["budgets"] if r["metric"] == "speedup")
            assert (row["status"], row["blocking"]) == ("inconclusive", False)
            assert report["counts"]["warn"] == 1 and report["counts"]["fail"] == 0
            assert "<failure" not in (out / "junit.xml").read_text()
            sarif = json.loads((out / "report.sarif").read_text())
            assert [r["level"] for r in sarif["runs"][0]["results"]] == ["warning"]
        else:
            # nothing chosen: the row is the original's, 1.0 < 1.0001
            row = next(r for r in report["budgets"] if r["metric"] == "speedup")
            assert row["blocking"] and report["counts"]["fail"] == 1
            assert "<failure" in (out / "junit.xml").read_text()


def test_a_clear_slowdown_is_decided_early_and_reported_with_its_interval(
    classifier, gate_cli, tmp_path
):
    slower = {"name": "slower", "graph": {"level": "disabled"}}
    policy = classifier.write_policy(
        {
            "candidates": [slower],
            "budgets": [
                {"metric": "speedup", "min": 0.1},
                {"metric": "latency_ms.p50", "max": 1000},
            ],
            # A large min_gain makes "is it enough faster?" easy to answer too.
            "selection": {"min_gain": 2.0},
            "measure": {
                "warmup_runs": 5,
                "min_runs": 100,
                "max_runs": 10**7,
                "max_seconds": 20,
                "min_seconds": 0.2,
                "memory": False,
            },
        }
    )
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    report = load_report(out)
    item = candidate(report, "slower")
    # Every question is far from its threshold: the block stops long before the 20 s cap.
    assert item["timing"]["stopped_by"] == "decided"
    assert 0.2 <= item["timing"]["seconds"] < 10
    low, high = item["intervals"]["speedup"]
    assert low <= item["metrics"]["speedup"] <= high
    timing = [r for r in item["budgets"] if r["metric"] in ("speedup", "latency_ms.p50")]
    assert len(timing) == 2
    for result in timing:
        assert result["decision"] == "pass" and result["interval"] is not None
    measurement = report["measurement"]
    assert measurement["confidence"] == 0.95 and measurement["timer_overhead_ns"] > 0


def test_session_noise_widens_every_timing_interval(classifier, gate_cli, tmp_path):
    intervals = {}
    for noise in (0.0, 0.1):
        policy = classifier.write_policy(
            {
                "candidates": [SAME],
                "measure": {
                    **UNDECIDABLE,
                    "min_runs": 200,
                    "max_runs": 200,
                    "confidence": 0.95,
                    "session_noise": noise,
                },
            },
            name=f"noise{noise}.yaml",
        )
        out = tmp_path / f"out{noise}"
        assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
        item = candidate(load_report(out), "same")
        intervals[noise] = (item["metrics"]["speedup"], *item["intervals"]["speedup"])
    point, low, high = intervals[0.1]
    assert low <= point * 0.9 + 1e-9 and high >= point * 1.1 - 1e-9
    bare_point, bare_low, bare_high = intervals[0.0]
    assert (bare_high - bare_low) / bare_point < (high - low) / point


def test_memory_is_measured_per_model_in_a_child_process(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(
        {
            "candidates": [{"name": "int8", "quantize": {"plugin": "dynamic"}}],
            "budgets": [
                {"metric": "peak_memory_mb", "max": 4000},
                {"metric": "model_memory_mb", "max": 0.001, "level": "warn"},
            ],
            "measure": {
                "warmup_runs": 2,
                "min_runs": 5,
                "max_runs": 40,
                "max_seconds": 0.05,
                "memory": True,
            },
        }
    )
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    report = load_report(out)
    assert_valid_report(report)
    for name in ("original", "int8"):
        metrics = candidate(report, name)["metrics"]
        assert 20 < metrics["peak_memory_mb"] < 4000  # a real process: Python, numpy, onnxruntime
        assert 0 <= metrics["model_memory_mb"] < metrics["peak_memory_mb"]
    assert any("model_memory_mb" in w for w in report["warnings"])


def test_memory_budget_needs_memory_measurement(classifier, gate_cli):
    policy = classifier.write_policy(
        {"budgets": [{"metric": "peak_memory_mb", "max": 100}]}
    )  # FAST_MEASURE has memory off
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert "'peak_memory_mb' needs measure.memory: true in the policy" in result.stderr


def test_aggregation_is_for_timing_metrics_only(classifier, gate_cli):
    policy = classifier.write_policy(
        {"budgets": [{"metric": "size_mb", "max": 100, "aggregation": "pessimistic"}]}
    )
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert "budgets[0].aggregation: applies to timing metrics only" in result.stderr


def test_report_carries_the_testbed(classifier, gate_cli, tmp_path):
    out = tmp_path / "out"
    assert (
        gate_cli("run", classifier.write_policy({"candidates": [SAME]}), "-o", out, "-q").exit_code
        == 0
    )
    report = load_report(out)
    testbed = report["testbed"]
    assert testbed["physical_cores"] >= 1 and testbed["memory_mb"] > 0
    assert testbed["onnxruntime"] and testbed["provider"] == "CPUExecutionProvider"
    assert isinstance(testbed["cpu"]["flags"], list) and testbed["cpu"]["model"]
    # Threads default to the physical cores, and the report says so.
    assert report["target"]["intra_op_threads"] == testbed["physical_cores"]
    assert report["target"]["threads_source"] == "physical cores"
    assert report["target"]["allow_spinning"] is False
    other = json.loads(json.dumps(testbed))
    assert differences(testbed, other) == []
    other["cpu"]["flags"] = [f for f in other["cpu"]["flags"] if f != "avx2"] + ["neon"]
    other["onnxruntime"] = "0.0.1"
    found = differences(testbed, other)
    assert any(line.startswith("cpu.flags:") for line in found)
    assert any(line.startswith("onnxruntime:") for line in found)


def test_noise_command_reports_the_spread_of_an_a_a_pair(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy({})
    out = tmp_path / "noise"
    result = gate_cli("noise", policy, "--seconds", "0.5", "-o", out)
    assert result.exit_code == 0, result.stderr
    noise = json.loads((out / "noise.json").read_text())
    speedup = noise["aa_speedup"]
    assert speedup["low"] <= speedup["point"] <= speedup["high"]
    assert 0.7 < speedup["point"] < 1.3  # an identical model
    assert noise["rounds"] >= 10 and noise["cv_paired_ratio"] >= 0
    assert "speedup min" in noise["advice"]
    assert "A/A speedup" in result.stdout


def test_sigterm_mid_run_writes_a_partial_report(classifier, tmp_path):
    policy = classifier.write_policy(
        {
            "candidates": [SAME],
            # No decision check before a million rounds: the block runs until the signal.
            "measure": {
                "warmup_runs": 1,
                "min_runs": 10**6,
                "max_runs": 10**9,
                "max_seconds": 60,
                "memory": False,
            },
        }
    )
    out = tmp_path / "out"
    script = shutil.which("onnx-gate", path=os.path.dirname(sys.executable))
    process = subprocess.Popen(
        [script, "run", str(policy), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    stderr_lines = []
    while time.time() < deadline:  # wait until timing has started
        line = process.stderr.readline()
        stderr_lines.append(line)
        if "validating and measuring same" in line:
            break
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 3
    assert "Traceback" not in stderr + stdout
    report = load_report(out)
    assert report["partial"] is True and report["verdict"] == "error" and report["exit_code"] == 3
    assert report["model"] is not None  # what was known before the signal is kept
    assert not list(out.glob(".report.json.*"))  # no half-written temp files


def test_compare_warns_when_testbeds_differ(classifier, gate_cli, tmp_path):
    out = tmp_path / "base"
    assert (
        gate_cli("run", classifier.write_policy({"candidates": [SAME]}), "-o", out, "-q").exit_code
        == 0
    )
    base = out / "report.json"
    same = gate_cli("compare", base, base, "--json", "--no-side-by-side")
    assert same.exit_code == 0
    assert json.loads(same.stdout)["warnings"] == []
    head_report = json.loads(base.read_text())
    head_report["testbed"]["cpu"]["model"] = "Another CPU"
    head_report["testbed"]["physical_cores"] = 64
    head = tmp_path / "head.json"
    head.write_text(json.dumps(head_report))
    result = gate_cli("compare", base, head)
    assert result.exit_code == 0
    assert "warning: testbeds differ, so timings are not comparable: cpu.model:" in result.stderr
    assert "physical_cores:" in result.stderr
    assert "speedup" in result.stdout
    assert gate_cli("compare", base, tmp_path / "missing.json").exit_code == 2


def test_compare_refuses_something_that_is_not_a_report(tmp_path, gate_cli):
    bogus = tmp_path / "bogus.json"
    bogus.write_text(json.dumps({"report_version": 1, "candidates": [1]}))
    result = gate_cli("compare", bogus, bogus)
    assert result.exit_code == 2
    assert "does not match the report schema" in result.stderr or "bogus.json:" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_report_has_a_testbed_even_when_the_policy_is_bad(tmp_path, gate_cli):
    (tmp_path / "p.yaml").write_text("version: 1\nmodel: {path: missing.onnx}\n")
    out = tmp_path / "out"
    assert gate_cli("run", tmp_path / "p.yaml", "-o", out, "-q").exit_code == 2
    assert load_report(out)["testbed"]["python"]


def test_one_models_memory_never_leaks_into_the_next_figure(tmp_path):
    import numpy as np
    import onnx

    from gate.demo.build import mlp_model
    from gate.run.memory import measure_memory

    rng = np.random.default_rng(0)
    big, small = tmp_path / "big.onnx", tmp_path / "small.onnx"
    onnx.save_model(
        mlp_model(
            [
                (rng.normal(size=(64, 3000)), np.zeros(3000)),
                (rng.normal(size=(3000, 3000)), np.zeros(3000)),
            ]
        ),
        str(big),
    )
    onnx.save_model(mlp_model([(rng.normal(size=(64, 8)), np.zeros(8))]), str(small))
    target = {"provider": "CPUExecutionProvider", "options": {}, "threads": 1}
    feed = {"x": np.ones((1, 64), np.float32)}
    first = measure_memory(big, {}, target, feed)
    second = measure_memory(small, {}, target, feed)
    assert first["model_memory_mb"] > 30  # 36 MB of weights, held by the session
    # A fresh process: the small figure is a session's own overhead (~10 MB), nothing of the big one.
    assert second["model_memory_mb"] < first["model_memory_mb"] - 25
    assert second["peak_memory_mb"] < first["peak_memory_mb"] - 25


def test_progress_is_plain_lines_in_ci_and_live_on_a_terminal(classifier, tmp_path):
    import pty

    policy = classifier.write_policy({"candidates": [SAME]})
    script = shutil.which("onnx-gate", path=os.path.dirname(sys.executable))
    plain = subprocess.run(
        [script, "run", str(policy), "-o", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert plain.returncode == 0
    lines = [line for line in plain.stderr.splitlines() if line.startswith("[")]
    assert any(line.endswith("validating and measuring same") for line in lines)
    assert any("] measured same: " in line and "best so far: " in line for line in lines)
    assert "\x1b[" not in plain.stderr  # no escape codes or spinners in a CI log

    main, secondary = pty.openpty()
    process = subprocess.Popen(
        [script, "run", str(policy), "-o", str(tmp_path / "b")],
        stdout=subprocess.DEVNULL,
        stderr=secondary,
        stdin=subprocess.DEVNULL,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=60) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in screen  # a live, redrawn status line
    assert "same: " in screen and "best so far" in screen
