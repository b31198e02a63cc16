"""Exporters: a scikit-learn pipeline saved with joblib is exported with skl2onnx and gated
end to end - but only from a source the policy trusts, since loading it runs code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_report

pytest.importorskip("skl2onnx")


@pytest.fixture
def sklearn_pipeline(tmp_path: Path) -> Path:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 8)).astype(np.float32)
    labels = (features[:, 0] + features[:, 1] > 0).astype(np.int64)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(features, labels)
    joblib.dump(pipeline, tmp_path / "pipeline.joblib")
    np.savez(tmp_path / "validation.npz", input=features[:64])
    np.save(tmp_path / "labels.npy", labels[:64])
    return tmp_path / "pipeline.joblib"


def _policy(folder: Path, **model: object) -> Path:
    import json

    path = folder / "policy.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "model": {"path": "pipeline.joblib", **model},
                "inputs": {"input": {"shape": [1, 8]}},
                "data": {"validation": "validation.npz", "labels": "labels.npy"},
                "validation": {"output": "probabilities"},
                "candidates": [{"name": "basic", "graph": {"level": "basic"}}],
                "budgets": [{"metric": "accuracy_drop", "max": 0.0}],
                "measure": {"max_seconds": 1, "min_runs": 40, "max_runs": 40, "memory": False},
            }
        )
    )
    return path


def test_a_pickled_model_is_refused_unless_the_policy_trusts_it(
    sklearn_pipeline, gate_cli, tmp_path
):
    out = tmp_path / "refused"
    result = gate_cli("run", _policy(sklearn_pipeline.parent), "-o", out, "-q")
    assert result.exit_code == 2
    [error] = load_report(out)["errors"]
    assert "model.path: loading pipeline.joblib with the 'sklearn' exporter runs code" in error
    assert "set model.trusted: true" in error
    assert "Traceback" not in result.stdout + result.stderr


def test_a_trusted_sklearn_pipeline_is_exported_and_gated(sklearn_pipeline, gate_cli, tmp_path):
    out = tmp_path / "out"
    result = gate_cli("run", _policy(sklearn_pipeline.parent, trusted=True), "-o", out, "-q")
    assert result.exit_code == 0, result.stdout
    report = load_report(out)
    assert report["model"]["exporter"] == "sklearn"
    assert [o["name"] for o in report["model"]["outputs"]] == ["label", "probabilities"]
    original = next(c for c in report["candidates"] if c["name"] == "original")
    assert original["metrics"]["accuracy"] > 0.9  # the exported model classifies as trained
    assert (out / "model.onnx").is_file()
    # The framework model is the reference of the export, reported apart from the candidates.
    export = report["export"]
    assert export["exporter"] == "sklearn" and export["output"] == "probabilities"
    assert export["framework_vs_onnx"]["top1_agreement"] == 1.0
    assert export["framework_vs_onnx"]["cosine_similarity"] > 0.9999
    assert export["framework_vs_onnx"]["accuracy_drop"] == 0.0
    assert (
        "Exported with `sklearn`; the export against the framework model"
        in (out / "summary.md").read_text()
    )
