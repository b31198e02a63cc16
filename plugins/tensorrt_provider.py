"""NVIDIA TensorRT through onnxruntime-gpu (built with TensorRT)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gate import ExecutionProvider, hookimpl
from gate.providers import ort_provider, renamed

OPTIONS = {
    "device_id": {"type": "integer", "minimum": 0},
    "fp16": {"type": "boolean", "description": "Let TensorRT build fp16 kernels."},
    "int8": {"type": "boolean", "description": "Let TensorRT build int8 kernels."},
    "workspace_mb": {"type": "integer", "minimum": 1},
    "engine_cache_dir": {
        "type": "string",
        "minLength": 1,
        "description": "Cache built engines here: the first run builds them, later runs load.",
    },
}
NAMES = {
    "fp16": "trt_fp16_enable",
    "int8": "trt_int8_enable",
}


def tensorrt_options(options: Mapping[str, Any]) -> dict[str, Any]:
    mapped = renamed(options, NAMES)
    if "workspace_mb" in mapped:
        mapped["trt_max_workspace_size"] = mapped.pop("workspace_mb") * 1024 * 1024
    if "engine_cache_dir" in mapped:
        mapped["trt_engine_cache_enable"] = True
        mapped["trt_engine_cache_path"] = mapped.pop("engine_cache_dir")
    return mapped


@hookimpl
def onnx_gate_execution_providers() -> list[ExecutionProvider]:
    return [
        ort_provider(
            "tensorrt", "TensorrtExecutionProvider", "onnxruntime-gpu", OPTIONS, tensorrt_options,
            "NVIDIA GPUs through TensorRT engines",
            "pip install onnxruntime-gpu (instead of onnxruntime), with TensorRT installed",
        )
    ]  # fmt: skip
