"""Apple's Core ML (CPU, GPU, Neural Engine) through the macOS onnxruntime wheel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gate import ExecutionProvider, hookimpl
from gate.providers import ort_provider, renamed

OPTIONS = {
    "compute_units": {"enum": ["ALL", "CPUOnly", "CPUAndGPU", "CPUAndNeuralEngine"]},
    "model_format": {"enum": ["MLProgram", "NeuralNetwork"]},
    "require_static_shapes": {"type": "boolean"},
}
NAMES = {
    "compute_units": "MLComputeUnits",
    "model_format": "ModelFormat",
    "require_static_shapes": "RequireStaticInputShapes",
}


def coreml_options(options: Mapping[str, Any]) -> dict[str, Any]:
    # Core ML's options are strings; its flags are "0" or "1".
    return {
        key: ("1" if value else "0") if isinstance(value, bool) else str(value)
        for key, value in renamed(options, NAMES).items()
    }


@hookimpl
def onnx_gate_execution_providers() -> list[ExecutionProvider]:
    return [
        ort_provider(
            "coreml", "CoreMLExecutionProvider", "onnxruntime", OPTIONS, coreml_options,
            "Apple silicon and Intel Macs through Core ML",
            "pip install onnxruntime on macOS (its wheels include Core ML)",
        )
    ]  # fmt: skip
