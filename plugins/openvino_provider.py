"""Intel CPUs, GPUs and NPUs through onnxruntime-openvino."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gate import ExecutionProvider, hookimpl
from gate.providers import ort_provider, renamed

OPTIONS = {
    "device_type": {
        "type": "string",
        "pattern": "^(CPU|GPU(\\.[0-9]+)?|NPU|(AUTO|HETERO|MULTI):.+)$",
        "description": "CPU, GPU, GPU.1, NPU, or AUTO:GPU,CPU and the like.",
    },
    "precision": {"enum": ["FP32", "FP16", "ACCURACY"]},
    "num_of_threads": {"type": "integer", "minimum": 1},
    "cache_dir": {"type": "string", "minLength": 1},
}


def openvino_options(options: Mapping[str, Any]) -> dict[str, Any]:
    # ONNX Runtime's OpenVINO options are strings.
    return {key: str(value) for key, value in renamed(options, {}).items()}


@hookimpl
def onnx_gate_execution_providers() -> list[ExecutionProvider]:
    return [
        ort_provider(
            "openvino", "OpenVINOExecutionProvider", "onnxruntime-openvino", OPTIONS,
            openvino_options, "Intel CPUs, integrated and discrete GPUs, NPUs",
            "pip install onnxruntime-openvino (instead of onnxruntime)",
        )
    ]  # fmt: skip
