"""The README's promises: two Quick start commands, CI runs the test one, the validator example works."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from conftest import FAST_MEASURE, candidate, load_report, save_graph
from onnx import TensorProto, helper, numpy_helper
from plugin_kit import use_plugin_modules

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "Quick start has a bash code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "onnx-gate demo" in commands[0] and commands[0].startswith("pip install .")
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in [line.strip() for line in ci]


def test_readme_validator_example_runs(tmp_path, gate_cli, monkeypatch):
    code = re.search(r"<!-- validator-example -->\n```python\n(.*?)```", README, re.S).group(1)
    (tmp_path / "pooled_cosine.py").write_text(code)
    use_plugin_modules(monkeypatch, tmp_path, "pooled_cosine")

    # A tiny "encoder": token states [1, 8, 16] -> hidden states [1, 8, 16].
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["hidden"])],
        "encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, 8, 16])],
        [weight],
    )
    save_graph(tmp_path / "encoder.onnx", graph)
    import yaml

    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "model": {"path": "encoder.onnx"},
                "measure": FAST_MEASURE,
                "candidates": [{"name": "int8", "quantize": {"plugin": "dynamic"}}],
                "budgets": [{"metric": "pooled_cosine", "min": 0.9}],
            }
        )
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 0, result.stdout
    int8 = candidate(load_report(out), "int8")
    assert 0.9 < int8["metrics"]["pooled_cosine"] < 1.0
    assert int8["budgets"][0]["metric"] == "pooled_cosine" and int8["budgets"][0]["passed"]
