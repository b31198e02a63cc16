"""Stages as CI jobs: build on one runner, measure on the target, decide anywhere."""

from __future__ import annotations

from conftest import candidate, load_report

RECIPES = [
    {"name": "basic", "graph": {"level": "basic"}},
    {"name": "dyn", "quantize": {"plugin": "dynamic"}},
]


def test_build_then_measure_then_decide(fragile_classifier, gate_cli, tmp_path):
    case = fragile_classifier  # int8 destroys it: rejected in the build stage
    policy = case.write_policy(
        {
            "candidates": RECIPES,
            "data": {"validation": "validation.npz", "calibration": "calibration.npz"},
            "budgets": [{"metric": "top1_agreement", "min": 0.9}],
            "search": {"fallback": False},
        }
    )
    built, measured, decided = tmp_path / "built", tmp_path / "measured", tmp_path / "decided"

    result = gate_cli("run", policy, "--stage", "build", "-o", built, "-q")
    assert result.exit_code == 0
    report = load_report(built)
    assert report["stage"] == "build" and report["verdict"] == "pending"
    assert candidate(report, "dyn")["status"] == "rejected"
    assert "speedup" not in candidate(report, "basic")["metrics"]  # nothing timed here
    shipped = sorted(p.name for p in (built / "stage/candidates").iterdir())
    assert shipped == ["basic.onnx"] and (built / "stage/original.onnx").is_file()
    assert not (built / "model.onnx").exists()

    result = gate_cli("run", policy, "--stage", "measure", "--from", built, "-o", measured, "-q")
    assert result.exit_code in (0, 4)
    report = load_report(measured)
    assert report["stage"] == "measure" and report["verdict"] in ("pass", "inconclusive")
    assert candidate(report, "basic")["metrics"]["speedup"] > 0
    dyn = candidate(report, "dyn")
    assert (
        dyn["status"] == "failed" and "rejected in the build stage: top1_agreement" in dyn["error"]
    )
    assert report["build_stage"]["from"] == str(built)
    assert report["model"]["path"].endswith("model.onnx")  # the user's model, not the bundle's

    # Decide again with a budget no candidate meets: no model runs, the verdict changes.
    strict = case.write_policy(
        {
            "candidates": RECIPES,
            "data": {"validation": "validation.npz", "calibration": "calibration.npz"},
            "budgets": [{"metric": "latency_ms.p50", "max": 0.000001}],
            "search": {"fallback": False},
        },
        name="strict.yaml",
    )
    result = gate_cli("run", strict, "--stage", "decide", "--from", measured, "-o", decided, "-q")
    assert result.exit_code == 1
    report = load_report(decided)
    assert report["stage"] == "decide" and report["verdict"] == "fail"
    assert report["measured"]["from"] == str(measured)
    assert (decided / "timing-input.npz").is_file()  # the input the timings were taken on
    assert (
        candidate(report, "basic")["metrics"]
        == candidate(load_report(measured), "basic")["metrics"]
    )

    result = gate_cli("run", policy, "--stage", "decide", "--from", measured, "-o", decided, "-q")
    assert result.exit_code == load_report(measured)["exit_code"]
    assert load_report(decided)["chosen"] == load_report(measured)["chosen"]
    if load_report(decided)["chosen"]:
        assert (decided / "model.onnx").is_file()


def test_stage_mistakes_are_clear_usage_errors(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy({"candidates": RECIPES[:1]})
    result = gate_cli("run", policy, "--stage", "measure", "-o", tmp_path / "m")
    assert result.exit_code == 2 and "--stage measure needs --from" in result.stderr
    result = gate_cli("run", policy, "--from", tmp_path, "-o", tmp_path / "m")
    assert result.exit_code == 2 and "--from goes with --stage measure" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = gate_cli("run", policy, "--stage", "measure", "--from", empty, "-o", tmp_path / "m")
    assert result.exit_code == 2 and "holds no build.json" in result.stdout + result.stderr

    built = tmp_path / "built"
    assert gate_cli("run", policy, "--stage", "build", "-o", built, "-q").exit_code == 0
    other = classifier.write_policy(
        {"candidates": RECIPES[:1], "selection": {"min_gain": 0.5}}, name="other.yaml"
    )
    result = gate_cli("run", other, "--stage", "measure", "--from", built, "-o", tmp_path / "m")
    assert result.exit_code == 2
    assert "is not the policy the build stage" in load_report(tmp_path / "m")["message"]
    result = gate_cli("run", policy, "--stage", "decide", "--from", built, "-o", tmp_path / "d")
    assert (
        result.exit_code == 2 and "holds no measurements" in load_report(tmp_path / "d")["message"]
    )
    assert "Traceback" not in result.stderr


def test_stages_with_relative_folders_as_ci_jobs_pass_them(classifier, gate_cli, monkeypatch):
    """CI jobs name their folders relative to the checkout (`--from gate-build`): the
    measure stage's first run of the bundled original happens in a child process with
    its own working directory, and must still find it."""
    policy = classifier.write_policy({"candidates": RECIPES[:1]})
    monkeypatch.chdir(classifier.folder)
    assert gate_cli("run", policy.name, "--stage", "build", "-o", "gate-build", "-q").exit_code == 0
    result = gate_cli(
        "run", policy.name, "--stage", "measure", "--from", "gate-build", "-o", "gate-measure", "-q"
    )
    assert result.exit_code in (0, 4), result.stdout
    assert load_report(classifier.folder / "gate-measure")["stage"] == "measure"
