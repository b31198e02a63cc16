"""Bad policies: exit 2, one line per problem naming where it is, no traceback, a report."""

from __future__ import annotations

import json

import pytest
from conftest import load_report


def test_schema_problems_are_one_line_each_with_location(classifier, gate_cli, tmp_path):
    policy = classifier.folder / "bad.yaml"
    policy.write_text(
        "version: 1\n"
        "model:\n"
        "  path: model.onnx\n"
        "budgets:\n"
        "  - {metric: speedup, min: 1.1}\n"
        "  - {metric: latency_ms.p95, max: fast}\n"
        "  - {metric: size_mb}\n"
        "target:\n"
        "  threads: -1\n"
        "candidates:\n"
        "  - {name: a, graph: {level: turbo}}\n"
        "colour: blue\n"
    )
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert "error: bad.yaml:6: budgets[1].max: 'fast' is not of type 'number'" in lines
    assert "error: bad.yaml:7: budgets[2]: give exactly one of 'max' or 'min'" in lines
    assert "error: bad.yaml:9: target.threads: -1 is less than the minimum of 0" in lines
    assert any(
        line.startswith("error: bad.yaml:11: candidates[0].graph.level: 'turbo' is not one of")
        for line in lines
    )
    assert any(
        "Additional properties are not allowed ('colour' was unexpected)" in line for line in lines
    )
    assert len(lines) == 5
    assert "Traceback" not in result.stderr


def test_run_with_invalid_policy_writes_an_error_report(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy({"budgets": [{"metric": "latency_ms.p95", "max": "fast"}]})
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out)
    assert result.exit_code == 2
    report = load_report(out)
    assert report["verdict"] == "error" and report["exit_code"] == 2
    assert any("budgets[0].max: 'fast' is not of type 'number'" in e for e in report["errors"])
    assert "verdict: ERROR (exit 2)" in result.stdout


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"budgets": [{"metric": "latncy_ms.p95", "max": 1}]},
            "budgets[0].metric: unknown metric 'latncy_ms.p95' (known: ",
        ),
        (
            {"budgets": [{"metric": "accuracy_drop", "max": 0.01}]},
            "budgets[0].metric: 'accuracy_drop' needs data.labels in the policy",
        ),
        (
            {"budgets": [{"metric": "usd_per_million", "max": 1}]},
            "budgets[0].metric: 'usd_per_million' needs target.usd_per_hour in the policy",
        ),
        (
            {"candidates": [{"name": "q", "quantize": {"plugin": "magic"}}]},
            "candidates[0].quantize.plugin: unknown quantizer 'magic' (valid: dynamic, fp16, static)",
        ),
        (
            {"candidates": [{"name": "q", "quantize": {"plugin": "static", "per_chanel": True}}]},
            "candidates[0].quantize: Additional properties are not allowed ('per_chanel' was unexpected)",
        ),
        (
            {
                "candidates": [
                    {"name": "q", "quantize": {"plugin": "static", "calibration_method": "kl"}}
                ]
            },
            "candidates[0].quantize.calibration_method: 'kl' is not one of ['minmax', 'entropy', 'percentile']",
        ),
        (
            {"candidates": [{"name": "a"}, {"name": "a"}]},
            "candidates[1].name: duplicate candidate name 'a' (first at candidates[0])",
        ),
        ({"candidates": [{"name": "original"}]}, "candidates[0].name: 'original' is reserved"),
        (
            {"target": {"provider": "tpu"}},
            "target.provider: unknown execution provider 'tpu' (valid: coreml, cpu, cuda, directml, openvino, tensorrt)",
        ),
        (
            {"validation": {"validators": ["nope"]}},
            "validation.validators[0]: unknown validator 'nope' (valid: agreement, classification, ctc, ctc-labelled, detection, detection-labelled, embedding, labelled-accuracy, stream)",
        ),
        ({"data": {"validation": "missing.npz"}}, "data.validation: file not found: "),
        ({"data": {"labels": "labels.npy"}}, "data.labels: labels need data.validation"),
        (
            {"measure": {"min_runs": 50, "max_runs": 10}},
            "measure.min_runs: must not exceed measure.max_runs",
        ),
        (
            {"inputs": {"x": {"range": [5, 1]}}},
            "inputs.x.range: needs finite [low, high) with low < high; got [5, 1]",
        ),
    ],
)
def test_semantic_problems_name_their_location(classifier, gate_cli, body, message):
    policy = classifier.write_policy(body)
    result = gate_cli("check", policy)
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_file_is_a_policy_error(tmp_path, gate_cli):
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"version": 1, "model": {"path": "models/absent.onnx"}}))
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert "p.json:1: model.path: file not found: " in result.stderr
    assert str(tmp_path / "models" / "absent.onnx") in result.stderr


def test_missing_policy_file_and_unparseable_yaml(tmp_path, gate_cli):
    result = gate_cli("check", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "policy file not found" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nmodel: [unclosed\n")
    result = gate_cli("check", broken)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: broken.yaml:")
    assert "invalid YAML" in result.stderr
    not_mapping = tmp_path / "list.json"
    not_mapping.write_text("[1, 2]")
    assert gate_cli("check", not_mapping).exit_code == 2


def test_yaml_tags_that_construct_objects_are_refused(tmp_path, gate_cli):
    policy = tmp_path / "evil.yaml"
    policy.write_text("version: 1\nmodel: !!python/object/apply:os.system ['echo pwned']\n")
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert "invalid YAML" in result.stderr


def test_check_accepts_a_valid_policy_in_json_and_yaml(classifier, gate_cli):
    body = {
        "data": {
            "calibration": "calibration.npz",
            "validation": "validation.npz",
            "labels": "labels.npy",
        },
        "budgets": [
            {"metric": "accuracy_drop", "max": 0.01},
            {"metric": "speedup", "min": 1.0, "level": "warn"},
        ],
    }
    for name in ("policy.yaml", "policy.json"):
        result = gate_cli("check", classifier.write_policy(body, name=name))
        assert result.exit_code == 0, result.stderr
        assert "OK (candidates: auto, 2 budget(s))" in result.stdout


def test_inputs_that_do_not_match_the_model(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(
        {"inputs": {"y": {"shape": [1, 2]}, "x": {"shape": [1, 2, 3]}}}
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 2
    assert "inputs.y: the model has no input 'y' (inputs: x)" in result.stderr + result.stdout
    assert (
        "inputs.x.shape: has 3 dimensions; the model's input has 2" in result.stderr + result.stdout
    )
    assert load_report(out)["exit_code"] == 2


def test_committed_schema_is_what_the_package_loads():
    from pathlib import Path

    from gate.policy.loading import POLICY_SCHEMA, load_schema

    committed = json.loads((Path(__file__).parents[1] / "schemas" / POLICY_SCHEMA).read_text())
    assert load_schema(POLICY_SCHEMA) == committed
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(committed)


def test_yaml_reads_off_as_a_level_and_exponents_as_numbers(classifier, gate_cli):
    policy = classifier.folder / "scalars.yaml"
    policy.write_text(
        "version: 1\nmodel: {path: model.onnx}\n"
        "budgets:\n  - {metric: max_abs_diff, max: 1e-3, level: off}\n  - {metric: speedup, min: 1.5e+0, level: warn}\n"
    )
    result = gate_cli("check", policy)
    assert result.exit_code == 0, result.stderr
    from gate.policy.loading import load_policy

    budgets = load_policy(policy).budgets
    assert budgets[0].threshold == 0.001 and budgets[0].level == "off"
    assert budgets[1].threshold == 1.5


def test_non_finite_thresholds_are_refused(classifier, gate_cli):
    policy = classifier.folder / "nan.yaml"
    policy.write_text(
        "version: 1\nmodel: {path: model.onnx}\nbudgets: [{metric: speedup, min: .nan}]\n"
    )
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert "nan.yaml:3: budgets[0].min: nan is not a number a setting can take" in result.stderr
