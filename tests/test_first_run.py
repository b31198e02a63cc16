"""The first ten minutes: `onnx-gate init MODEL` writes a policy that checks and runs, and
`onnx-gate run MODEL.onnx` gates a bare model with the same defaults."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import save_graph


@pytest.fixture
def bare_model(tmp_path):
    """A small classifier with a dynamic batch, as a user would bring it: no policy, no data."""
    rng = np.random.default_rng(3)
    weights = numpy_helper.from_array(rng.normal(size=(32, 6)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["logits"])],
        "bare",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 6])],
        [weights],
    )
    return save_graph(tmp_path / "bare.onnx", graph)


@pytest.fixture
def in_folder(tmp_path):
    """Run from the model's folder, as a user at a shell would (not a git repository)."""
    before = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(before)


def test_init_measures_the_model_and_writes_a_policy_that_checks_and_runs(
    bare_model, in_folder, gate_cli
):
    result = gate_cli("init", "bare.onnx", "--usd-per-hour", "0.2", "-q")
    assert result.exit_code == 0, result.stderr
    assert "written: policy.yaml" in result.stdout
    assert "original: p50" in result.stdout and "task: classification" in result.stdout
    text = (in_folder / "policy.yaml").read_text()
    policy = yaml.safe_load(text)
    # Shapes fixed, the task written down, data files left as hints to provide.
    assert policy["inputs"] == {"features": {"shape": [1, 32]}}
    assert "dynamic batch fixed for timing" in text
    assert policy["validation"] == {"task": "classification"}
    assert "# validation: validation.npz" in text and "calibration" not in policy["data"]
    assert policy["target"]["usd_per_hour"] == 0.2
    budgets = {b["metric"]: b for b in policy["budgets"]}
    assert budgets["top1_agreement"]["min"] == 0.99  # the task's default floor
    assert budgets["speedup"] == {"metric": "speedup", "min": 1.1, "level": "warn"}
    # Drawn from the baseline init measured, with headroom; the comment says the figure.
    latency_line = next(line for line in text.splitlines() if "latency_ms.p95" in line)
    assert "measured" in latency_line and "ms here" in latency_line
    # Warnings until the user sets the service's own target: a CI runner is not this machine.
    assert budgets["latency_ms.p95"]["max"] > 0 and budgets["latency_ms.p95"]["level"] == "warn"
    assert budgets["usd_per_million"]["max"] > 0
    assert gate_cli("check", "policy.yaml").exit_code == 0
    run = gate_cli("run", "policy.yaml", "-o", "out", "-q")
    assert run.exit_code == 0, run.stdout + run.stderr
    report = json.loads((in_folder / "out" / "report.json").read_text())
    assert report["verdict"] == "pass" and (in_folder / "out" / "model.onnx").is_file()
    assert not list(in_folder.glob(".onnx-gate-init-*")), "the draft policy is left behind"


def test_init_with_a_data_folder_points_the_policy_at_its_files(bare_model, in_folder, gate_cli):
    data = in_folder / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    features = rng.normal(size=(24, 1, 32)).astype(np.float32)
    np.savez(data / "validation.npz", features=features)
    np.savez(data / "calibration.npz", features=features[:8])
    result = gate_cli("init", "bare.onnx", "--data", "data", "-o", "gate.yaml", "-q")
    assert result.exit_code == 0, result.stderr
    policy = yaml.safe_load((in_folder / "gate.yaml").read_text())
    assert policy["data"] == {
        "calibration": "data/calibration.npz",
        "validation": "data/validation.npz",
    }
    assert gate_cli("check", "gate.yaml").exit_code == 0


def test_init_refuses_what_it_cannot_do_in_one_line_and_keeps_an_existing_policy(
    bare_model, in_folder, gate_cli
):
    (in_folder / "policy.yaml").write_text("version: 1  # mine\n")
    exists = gate_cli("init", "bare.onnx")
    assert exists.exit_code == 2
    assert exists.stderr.strip() == (
        "error: policy.yaml exists: choose another -o, or --force to replace it"
    )
    assert (in_folder / "policy.yaml").read_text() == "version: 1  # mine\n"
    missing = gate_cli("init", "nothing.onnx", "-o", "other.yaml")
    assert missing.exit_code == 2 and "nothing.onnx: no such model file" in missing.stderr
    (in_folder / "model.joblib").write_bytes(b"not really")
    untrusted = gate_cli("init", "model.joblib", "-o", "other.yaml")
    assert untrusted.exit_code == 2 and "--trust-model" in untrusted.stderr
    empty = in_folder / "empty"
    empty.mkdir()
    no_data = gate_cli("init", "bare.onnx", "--data", "empty", "-o", "other.yaml")
    assert no_data.exit_code == 2 and "holds none of calibration.npz" in no_data.stderr
    bad = gate_cli("init", "bare.onnx", "--example-input", "x=axb", "-o", "other.yaml")
    assert bad.exit_code == 2 and "expected NAME=DIMxDIM" in bad.stderr
    assert not (in_folder / "other.yaml").exists()
    # A model the gate cannot run: init exits as the run would, and writes nothing.
    (in_folder / "broken.onnx").write_bytes(b"\x08\x07garbage")
    broken = gate_cli("init", "broken.onnx", "-o", "other.yaml", "-q")
    assert broken.exit_code == 3, broken.stderr
    assert broken.stderr.startswith("error: ") and "Traceback" not in broken.stderr
    assert not (in_folder / "other.yaml").exists()


def test_run_a_bare_model_without_a_policy_uses_the_defaults_and_says_where_to_go(
    bare_model, in_folder, gate_cli
):
    result = gate_cli("run", "bare.onnx", "-o", "out", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "no policy given" in result.stderr and "onnx-gate init bare.onnx" in result.stderr
    written = in_folder / "out" / "policy.yaml"
    policy = yaml.safe_load(written.read_text())
    assert policy["model"]["path"] == "../bare.onnx" and "budgets" not in policy
    report = json.loads((in_folder / "out" / "report.json").read_text())
    assert report["verdict"] == "pass"
    # The gate's own accuracy floor held every candidate, as the policy's comment says.
    assert any("top1_agreement >= 0.99" in warning for warning in report["warnings"])
    assert gate_cli("check", written).exit_code == 0


def test_a_torch_export_program_goes_from_init_to_a_passing_run(in_folder, gate_cli):
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    program = torch.export.export(module.eval(), (torch.randn(1, 12),))
    torch.export.save(program, str(in_folder / "net.pt2"))
    result = gate_cli("init", "net.pt2", "--trust-model", "-o", "net.yaml", "-q")
    assert result.exit_code == 0, result.stderr
    assert "runtime: ONNX Runtime runs it " in result.stdout and "as fast as torch" in result.stdout
    policy = yaml.safe_load((in_folder / "net.yaml").read_text())
    assert policy["model"] == {"path": "net.pt2", "trusted": True}
    (name,) = policy["inputs"]
    assert policy["inputs"][name]["shape"] == [1, 12]  # the program's own example input
    run = gate_cli("run", "net.yaml", "-o", "out", "-q")
    assert run.exit_code == 0, run.stdout + run.stderr
    report = json.loads((in_folder / "out" / "report.json").read_text())
    assert report["model"]["exporter"] == "torch" and report["verdict"] == "pass"


def test_a_runtime_speedup_budget_on_an_onnx_model_is_a_located_policy_error(
    bare_model, in_folder, gate_cli
):
    (in_folder / "p.yaml").write_text(
        "version: 1\nmodel: {path: bare.onnx}\nbudgets:\n  - {metric: runtime_speedup, min: 2}\n"
    )
    result = gate_cli("check", "p.yaml")
    assert result.exit_code == 2
    assert (
        "p.yaml:4: budgets[0].metric: 'runtime_speedup' needs a model the gate exports from a "
        "framework (model.path)" in result.stderr
    )


def test_init_from_another_folder_writes_paths_relative_to_the_policy(
    bare_model, in_folder, gate_cli
):
    result = gate_cli("init", "bare.onnx", "-o", "ci/gate/policy.yaml", "-q")
    assert result.exit_code == 0, result.stderr
    policy = in_folder / "ci" / "gate" / "policy.yaml"
    assert yaml.safe_load(policy.read_text())["model"]["path"] == "../../bare.onnx"
    assert gate_cli("check", policy).exit_code == 0
    assert not list((in_folder / "ci" / "gate").glob(".onnx-gate-init-*"))


def test_run_a_bare_model_never_overwrites_a_policy_of_the_users(bare_model, in_folder, gate_cli):
    out = in_folder / "out"
    out.mkdir()
    (out / "policy.yaml").write_text("version: 1  # mine\n")
    result = gate_cli("run", "bare.onnx", "-o", "out", "-q")
    assert result.exit_code == 2
    assert "out/policy.yaml exists and is not the default policy" in result.stderr
    assert (out / "policy.yaml").read_text() == "version: 1  # mine\n"


def test_the_written_policy_reads_back_whatever_the_model_names_hold():
    """Input names YAML would read as a bool or null, names with line breaks, and scalar
    inputs: what the gate's own loader reads is what the model declares."""
    from pathlib import Path

    from gate.ci.starter import Start, policy_text
    from gate.policy.loading import _yaml_load

    report = {
        "model": {
            "inputs": [
                {"name": "true", "dtype": "float32", "declared_shape": ["n\nfoo: 1", 3],
                 "shape": [1, 3]},
                {"name": "a: b", "dtype": "float32", "declared_shape": [2], "shape": [2]},
                {"name": "sr", "dtype": "int64", "declared_shape": [], "shape": []},
            ]
        },
        "candidates": [{"name": "original", "metrics": {"latency_ms.p95": 0.123456}}],
    }  # fmt: skip
    start = Start(Path("/work/m.onnx"), usd_per_hour=2.448)
    document = _yaml_load("p.yaml", policy_text(start, Path("/work"), report))
    assert document["inputs"] == {"true": {"shape": [1, 3]}, "a: b": {"shape": [2]}}
    assert document["target"]["usd_per_hour"] == 2.448
    assert "foo" not in document
    (budget,) = [b for b in document["budgets"] if b["metric"] == "latency_ms.p95"]
    assert budget["max"] == 0.19  # 1.5x the measured p95, rounded up to two figures


def test_init_falls_back_to_raw_outputs_when_the_data_gives_the_task_nothing_to_decide(
    in_folder, gate_cli
):
    """A voice-activity model on random inputs never says 'speech': judged as a stream it
    could judge nothing, so init writes task tensor and says how to go back."""
    from tests.test_tasks import vad_model

    vad_model(in_folder / "vad.onnx", decay=0.5, silence=-60.0)
    result = gate_cli("init", "vad.onnx", "-q")
    assert result.exit_code == 0, result.stderr
    text = (in_folder / "policy.yaml").read_text()
    assert yaml.safe_load(text)["validation"] == {"task": "tensor"}
    assert "task stream was inferred, but on this data the original decides nothing" in text
    assert gate_cli("run", "policy.yaml", "-o", "out", "-q").exit_code == 0


def test_a_scikit_learn_file_goes_from_init_to_a_passing_run_with_its_runtime_speedup(
    in_folder, gate_cli
):
    pytest.importorskip("sklearn")
    import joblib
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(5)
    features = rng.normal(size=(120, 6)).astype(np.float32)
    classes = (features[:, 0] + features[:, 1] > 0).astype(int)
    joblib.dump(LogisticRegression().fit(features, classes), in_folder / "clf.joblib")
    result = gate_cli("init", "clf.joblib", "--trust-model", "-o", "clf.yaml", "-q")
    assert result.exit_code == 0, result.stderr
    assert "as fast as sklearn" in result.stdout  # the first lever, measured by init
    policy = yaml.safe_load((in_folder / "clf.yaml").read_text())
    assert policy["model"] == {"path": "clf.joblib", "trusted": True}
    assert policy["inputs"] == {"input": {"shape": [1, 6]}}
    run = gate_cli("run", "clf.yaml", "-o", "out", "-q")
    assert run.exit_code == 0, run.stdout + run.stderr
    report = json.loads((in_folder / "out" / "report.json").read_text())
    assert report["export"]["runtime"]["runtime_speedup"] > 0
    summary = (in_folder / "out" / "summary.md").read_text()
    assert "Runtime: ONNX Runtime runs the export" in summary
