"""DirectX 12 GPUs on Windows through onnxruntime-directml."""

from __future__ import annotations

from gate import ExecutionProvider, hookimpl
from gate.providers import ort_provider, renamed

OPTIONS = {
    "device_id": {"type": "integer", "minimum": 0},
    "performance_preference": {"enum": ["default", "high_performance", "minimum_power"]},
}


@hookimpl
def onnx_gate_execution_providers() -> list[ExecutionProvider]:
    return [
        ort_provider(
            "directml", "DmlExecutionProvider", "onnxruntime-directml", OPTIONS,
            lambda options: renamed(options, {}), "any DirectX 12 GPU on Windows",
            "pip install onnxruntime-directml (instead of onnxruntime), on Windows",
        )
    ]  # fmt: skip
