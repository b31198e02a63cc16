"""scikit-learn estimators and pipelines (joblib or pickle files) to ONNX with skl2onnx
(``pip install onnx-gate[sklearn]``). Loading such a file runs code from it: the gate only
does so for a policy with ``model.trusted: true``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate import Exporter, OptionError, hookimpl

OPTIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "input_name": {"type": "string", "minLength": 1, "default": "input"},
        "features": {
            "type": "integer",
            "minimum": 1,
            "description": "Input width; read from the estimator's n_features_in_ when omitted.",
        },
        "target_opset": {"type": "integer", "minimum": 9},
    },
}


def export(source: Path, out_dir: Path, options: Mapping[str, Any]) -> Path:
    import joblib
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    estimator = joblib.load(source)  # runs code from the file: the host checked model.trusted
    features = options.get("features") or getattr(estimator, "n_features_in_", None)
    if not features:
        raise OptionError(
            f"{source.name}: the estimator does not say how many features it takes; "
            "set model.options.features"
        )
    name = options.get("input_name", "input")
    model = to_onnx(
        estimator,
        initial_types=[(name, FloatTensorType([None, int(features)]))],
        # Probabilities as one tensor, not ZipMap's list of dicts, so they can be validated.
        options={id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else None,
        target_opset=options.get("target_opset"),
    )
    path = out_dir / f"{source.stem}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def reference(
    source: Path, options: Mapping[str, Any], feeds: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The estimator's own outputs, named like skl2onnx names the exported ones."""
    import joblib
    import numpy as np

    estimator = joblib.load(source)
    name = options.get("input_name", "input")
    outputs = []
    for feed in feeds:
        features = np.asarray(feed[name])
        produced = {"label": estimator.predict(features)} if hasattr(estimator, "predict") else {}
        if hasattr(estimator, "predict_proba"):
            produced["probabilities"] = estimator.predict_proba(features)
        elif hasattr(estimator, "predict") and not hasattr(estimator, "classes_"):
            produced = {"variable": estimator.predict(features).reshape(len(features), -1)}
        outputs.append(produced)
    return outputs


def timer(source: Path, options: Mapping[str, Any], feed: Mapping[str, Any], threads: int) -> Any:
    """What a service would call on one feed: predict_proba where it exists, else predict,
    with BLAS/OpenMP pools held to ``threads``."""
    import joblib
    import numpy as np
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(limits=threads) if threads else None
    estimator = joblib.load(source)
    features = np.asarray(feed[options.get("input_name", "input")])
    predict = getattr(estimator, "predict_proba", None) or estimator.predict

    def run() -> Any:
        return predict(features)

    if limits is not None:
        run.close = limits.restore_original_limits  # type: ignore[attr-defined]
    return run


@hookimpl
def onnx_gate_exporters() -> list[Exporter]:
    return [
        Exporter(
            "sklearn",
            (".joblib", ".pkl", ".pickle"),
            export,
            "scikit-learn estimators and pipelines, through skl2onnx",
            OPTIONS_SCHEMA,
            runs_code=True,
            reference=reference,
            timer=timer,
        )
    ]
