"""NVIDIA CUDA through onnxruntime-gpu."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gate import ExecutionProvider, hookimpl
from gate.providers import ort_provider, renamed

OPTIONS = {
    "device_id": {"type": "integer", "minimum": 0},
    "gpu_mem_limit_mb": {"type": "integer", "minimum": 1, "description": "Arena cap, MB."},
    "arena_extend_strategy": {"enum": ["kNextPowerOfTwo", "kSameAsRequested"]},
    "cudnn_conv_algo_search": {"enum": ["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]},
    "do_copy_in_default_stream": {"type": "boolean"},
}


def cuda_options(options: Mapping[str, Any]) -> dict[str, Any]:
    mapped = renamed(options, {})
    if "gpu_mem_limit_mb" in mapped:
        mapped["gpu_mem_limit"] = mapped.pop("gpu_mem_limit_mb") * 1024 * 1024
    return mapped


@hookimpl
def onnx_gate_execution_providers() -> list[ExecutionProvider]:
    return [
        ort_provider(
            "cuda", "CUDAExecutionProvider", "onnxruntime-gpu", OPTIONS, cuda_options,
            "NVIDIA GPUs through CUDA and cuDNN",
            "pip install onnxruntime-gpu (instead of onnxruntime), with a matching CUDA and cuDNN",
        )
    ]  # fmt: skip
