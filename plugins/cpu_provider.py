"""ONNX Runtime's CPU execution provider, in every onnxruntime package."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gate import ExecutionProvider, hookimpl


def _available() -> bool:
    import onnxruntime

    return "CPUExecutionProvider" in onnxruntime.get_available_providers()


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    # The CPU provider's only option, arena use, is passed through as a string like ORT expects.
    return {key: str(value) for key, value in options.items()}


@hookimpl
def onnx_gate_execution_providers() -> list[ExecutionProvider]:
    return [
        ExecutionProvider(
            name="cpu",
            ort_name="CPUExecutionProvider",
            package="onnxruntime",
            is_available=_available,
            provider_options=_options,
            description="ONNX Runtime's default CPU provider",
        )
    ]
