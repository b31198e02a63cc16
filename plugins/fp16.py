"""Half-precision weights and compute (onnxruntime.transformers.float16)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate_plugins._quantization import refuse_quantized

from gate import BuildContext, Quantizer, hookimpl


def _quantize(
    source: Path, destination: Path, options: Mapping[str, Any], context: BuildContext
) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    refuse_quantized(source)  # converting int8 graphs to fp16 yields graphs ORT rejects
    model = onnx.load(str(source))
    converted = convert_float_to_float16(
        model,
        keep_io_types=options.get("keep_io_types", True),
        op_block_list=options.get("op_block_list"),
    )
    onnx.save_model(converted, str(destination))


@hookimpl
def onnx_gate_quantizers() -> list[Quantizer]:
    return [
        Quantizer(
            name="fp16",
            quantize=_quantize,
            description="float16 conversion; pays off on GPUs, rarely on CPUs",
            options_schema={
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "keep_io_types": {"type": "boolean", "default": True},
                    "op_block_list": {
                        "type": "array",
                        "items": {"type": "string"},
                        "uniqueItems": True,
                    },
                },
            },
        )
    ]
