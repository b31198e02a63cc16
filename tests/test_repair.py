"""Accuracy repair: bias correction folds the per-channel mean shift that static int8 adds
to a layer's output back into its bias, on the calibration data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from conftest import candidate, load_report

from gate.demo.build import mlp_model


def shifted_mlp(folder: Path) -> Path:
    """A layer whose small weights all round to zero next to one large column.

    With one weight scale for the whole tensor (per-tensor int8), every weight of
    columns 1..15 is under half a step and becomes 0, so on inputs near 1 those
    channels lose their whole mean; the second layer never reads column 0. The loss
    is a shift of the mean, the same on every sample: what bias correction removes.
    """
    rng = np.random.default_rng(3)
    w0 = np.full((64, 16), 0.015) + rng.normal(scale=0.001, size=(64, 16))
    w0[:, 0] = 5.0
    b0 = np.zeros(16)
    w1 = rng.normal(size=(16, 8))
    w1[0, :] = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.onnx"
    onnx.save_model(mlp_model([(w0, b0), (w1, np.zeros(8))]), str(model))
    for name, count in (("calibration", 32), ("validation", 64)):
        x = 1.0 + 0.05 * rng.normal(size=(count, 64))
        np.savez(folder / f"{name}.npz", x=x.astype(np.float32))
    return model


def _policy(folder: Path, candidates: list[dict]) -> Path:
    policy = {
        "version": 1,
        "model": {"path": "model.onnx"},
        "inputs": {"x": {"shape": [1, 64]}},
        "data": {"calibration": "calibration.npz", "validation": "validation.npz"},
        "candidates": candidates,
        "budgets": [{"metric": "cosine_similarity", "min": 0.99}],
        "measure": {"max_seconds": 0.3, "min_runs": 20, "memory": False},
    }
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def test_bias_correction_removes_the_shift_static_int8_adds(tmp_path, gate_cli):
    folder = tmp_path / "m"
    shifted_mlp(folder)
    static = {
        "plugin": "static",
        "format": "qdq",
        "activation_type": "uint8",
        "weight_type": "int8",
    }
    policy = _policy(
        folder,
        [
            {"name": "plain", "quantize": static},
            {"name": "fast", "quantize": {**static, "bias_correction": "fast"}},
            {"name": "full", "quantize": {**static, "bias_correction": "full"}},
        ],
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q", "--keep-candidates")
    report = load_report(out)
    assert result.exit_code in (0, 1), result.stdout
    plain, fast, full = (candidate(report, name) for name in ("plain", "fast", "full"))
    assert plain["metrics"]["cosine_similarity"] < 0.9, plain["metrics"]
    assert plain["status"] == "rejected"
    for repaired in (fast, full):
        assert repaired["metrics"]["cosine_similarity"] >= 0.99, repaired["metrics"]
        assert repaired["status"] in ("passed", "rejected")  # timing aside, accuracy passes
        assert not any(
            b["metric"] == "cosine_similarity" and not b["passed"] for b in repaired["budgets"]
        )
        assert any(
            note.startswith("bias correction (") and "corrected 2 layer(s)" in note
            for note in repaired["notes"]
        ), repaired["notes"]
    # Fed the float input, each layer's own shift is removed; layer by layer, the shift the
    # layers before it leave is removed too.
    assert full["metrics"]["cosine_similarity"] > fast["metrics"]["cosine_similarity"]
    # The repair changes biases only: the int8 weights and the QDQ pattern are the same.
    ops = [
        [node.op_type for node in onnx.load(str(out / "candidates" / f"{name}.onnx")).graph.node]
        for name in ("plain", "fast")
    ]
    assert ops[0] == ops[1]


def test_candidates_auto_proposes_bias_correction_beside_plain_static(tmp_path, gate_cli):
    folder = tmp_path / "m"
    shifted_mlp(folder)
    policy = _policy(folder, "auto")  # type: ignore[arg-type]
    out = tmp_path / "out"
    gate_cli("run", policy, "-o", out, "-q")
    report = load_report(out)
    names = {c["name"]: c for c in report["candidates"]}
    assert {"static-qdq", "static-qdq-bc", "static-qdq-bcf"} <= set(names), sorted(names)
    assert names["static-qdq-bc"]["recipe"]["quantize"]["bias_correction"] == "fast"
    assert names["static-qdq-bcf"]["recipe"]["quantize"]["bias_correction"] == "full"
    # Plain static loses the model; the repaired one keeps it.
    assert names["static-qdq"]["metrics"]["cosine_similarity"] < 0.9
    assert names["static-qdq-bcf"]["metrics"]["cosine_similarity"] >= 0.99


def test_bias_correction_on_a_qoperator_model_fails_that_candidate_with_a_reason(
    tmp_path, gate_cli
):
    folder = tmp_path / "m"
    shifted_mlp(folder)
    recipe = {"plugin": "static", "format": "qoperator", "bias_correction": "fast"}
    out = tmp_path / "out"
    gate_cli("run", _policy(folder, [{"name": "qop-bc", "quantize": recipe}]), "-o", out, "-q")
    failed = candidate(load_report(out), "qop-bc")
    assert failed["status"] == "failed"
    assert "bias_correction needs format: qdq" in failed["error"]
