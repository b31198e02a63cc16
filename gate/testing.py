"""An opt-in pytest plugin for onnx-gate plugin authors (``pip install onnx-gate[testing]``).

In your plugin's tests::

    # conftest.py
    pytest_plugins = ["gate.testing"]

    # test_contract.py
    from gate.testing import QuantizerContract

    class TestMyQuantizer(QuantizerContract):
        quantizer = "my-quantizer"      # the name your plugin registers
        options = {}                    # options a recipe would give it

Every test of the contract runs real onnxruntime on small models built here: the
quantiser is found through its entry point, its options schema is a valid JSON schema,
it writes a model that ONNX Runtime loads and runs with the same outputs, it declines
(``SkipCandidate``) or copes with an already-quantised model, its proposals are valid,
and the gate itself builds, validates, times and reports it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest


def mlp(
    path: Path, features: int = 64, hidden: int = 128, classes: int = 10, seed: int = 0
) -> Path:
    """A small float MLP classifier (MatMul, Add, Relu), saved as ONNX."""
    import onnx

    from gate.demo.build import mlp_model

    rng = np.random.default_rng(seed)
    layers = [
        (
            rng.normal(scale=1 / np.sqrt(features), size=(features, hidden)),
            rng.normal(size=hidden) * 0.1,
        ),
        (rng.normal(scale=1 / np.sqrt(hidden), size=(hidden, classes)), np.zeros(classes)),
    ]
    onnx.save_model(mlp_model(layers), str(path))
    return path


@pytest.fixture
def onnx_gate_model(tmp_path: Path) -> Path:
    """A small float MLP (input ``x`` of shape [batch, 64]) with calibration.npz and
    validation.npz beside it."""
    path = mlp(tmp_path / "model.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calibration.npz", x=rng.normal(size=(16, 64)).astype(np.float32))
    np.savez(tmp_path / "validation.npz", x=rng.normal(size=(16, 64)).astype(np.float32))
    return path


@pytest.fixture
def onnx_gate_run(tmp_path: Path) -> Callable[..., tuple[int, dict[str, Any]]]:
    """Run the gate like a user: ``onnx_gate_run(policy_dict) -> (exit_code, report)``.
    Relative paths in the policy resolve against ``tmp_path``."""
    from gate.ci.suite import run_gate

    def run(policy: dict[str, Any], name: str = "policy.json") -> tuple[int, dict[str, Any]]:
        path = tmp_path / name
        path.write_text(json.dumps({"version": 1, **policy}))
        result = run_gate(path, tmp_path / f"{path.stem}-report")
        return int(result.exit_code), result.report

    return run


FAST_MEASURE = {"warmup_runs": 2, "min_runs": 40, "max_runs": 40, "max_seconds": 1, "memory": False}


class QuantizerContract:
    """What every quantiser plugin owes the gate. Subclass as ``TestSomething`` and set
    ``quantizer`` (and ``options`` if it needs any)."""

    quantizer: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}

    def record(self) -> Any:
        from gate.host.manager import get_host

        assert self.quantizer, "set `quantizer` to the name your plugin registers"
        return get_host().get("quantizer", self.quantizer)

    def test_it_is_registered_through_an_entry_point(self) -> None:
        from gate.host.manager import get_host

        host = get_host()
        record = self.record()
        info = next(info for info in host.infos if info.name == record.plugin)
        assert info.source == "entry point", f"{self.quantizer} comes from {info.source}"
        assert info.distribution, "the plugin's package has no distribution metadata"

    def test_its_options_schema_is_a_json_schema_that_accepts_its_options(self) -> None:
        from jsonschema import Draft202012Validator

        schema = self.record().options_schema
        Draft202012Validator.check_schema(schema)
        errors = [e.message for e in Draft202012Validator(schema).iter_errors(self.options)]
        assert not errors, errors

    def test_it_writes_a_model_onnxruntime_runs_with_the_same_outputs(
        self, onnx_gate_model: Path, tmp_path: Path
    ) -> None:
        import onnx
        import onnxruntime as ort

        from gate.errors import SkipCandidate
        from gate.records import BuildContext

        rng = np.random.default_rng(2)
        samples = [{"x": rng.normal(size=(1, 64)).astype(np.float32)} for _ in range(8)]
        context = BuildContext(
            tmp_path / "work", {"x": [1, 64]}, lambda: iter(samples), "file",
            "CPUExecutionProvider",
        )  # fmt: skip
        context.work_dir.mkdir()
        destination = tmp_path / "quantised.onnx"
        try:
            self.record().quantize(onnx_gate_model, destination, self.options, context)
        except SkipCandidate as skip:
            pytest.fail(f"{self.quantizer} declined a plain float MLP: {skip}")
        onnx.checker.check_model(str(destination))
        original = ort.InferenceSession(str(onnx_gate_model), providers=["CPUExecutionProvider"])
        quantised = ort.InferenceSession(str(destination), providers=["CPUExecutionProvider"])
        assert [o.name for o in quantised.get_outputs()] == [o.name for o in original.get_outputs()]
        (expected,) = original.run(None, samples[0])
        (actual,) = quantised.run(None, samples[0])
        assert actual.shape == expected.shape and np.all(np.isfinite(actual))

    def test_it_is_built_validated_timed_and_reported_by_the_gate(
        self, onnx_gate_model: Path, onnx_gate_run: Callable[..., tuple[int, dict[str, Any]]]
    ) -> None:
        recipe = {"name": "contract", "quantize": {"plugin": self.quantizer, **self.options}}
        code, report = onnx_gate_run(
            {
                "model": {"path": onnx_gate_model.name},
                "inputs": {"x": {"shape": [1, 64]}},
                "data": {"calibration": "calibration.npz", "validation": "validation.npz"},
                "candidates": [recipe],
                "search": {"fallback": False},
                "measure": FAST_MEASURE,
            }
        )
        assert code in (0, 1), report["errors"]
        entry = next(c for c in report["candidates"] if c["name"] == "contract")
        assert entry["status"] != "failed", f"failed to {entry['stage']}: {entry['error']}"
        if entry["status"] != "skipped":
            assert entry["metrics"]["speedup"] > 0 and entry["metrics"]["size_mb"] > 0

    def test_its_proposals_are_valid(self, onnx_gate_model: Path) -> None:
        from gate.run.search import search_context
        from gate.run.testbed import fingerprint

        record = self.record()
        if record.propose is None:
            pytest.skip(f"{self.quantizer} proposes nothing for candidates: auto")
        context = search_context(
            onnx_gate_model, fingerprint(), "CPUExecutionProvider", True, "all"
        )
        from jsonschema import Draft202012Validator

        for proposal in record.propose(context):
            assert proposal.name and proposal.reason, proposal
            if not proposal.declined:
                errors = list(
                    Draft202012Validator(record.options_schema).iter_errors(dict(proposal.options))
                )
                assert not errors, (proposal.name, [e.message for e in errors])
                assert proposal.expected_speedup > 0 and 0 <= proposal.accuracy_risk <= 1
