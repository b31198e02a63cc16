"""Dynamic int8 quantisation (onnxruntime.quantization.quantize_dynamic)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate_plugins._quantization import COMMON_OPTIONS, QUANT_TYPES, prepare

from gate import BuildContext, Quantizer, hookimpl


def _quantize(
    source: Path, destination: Path, options: Mapping[str, Any], context: BuildContext
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = prepare(source, options, context)
    quantize_dynamic(
        str(source),
        str(destination),
        weight_type=getattr(QuantType, QUANT_TYPES[options.get("weight_type", "int8")]),
        per_channel=options.get("per_channel", False),
        reduce_range=options.get("reduce_range", False),
        op_types_to_quantize=options.get("op_types_to_quantize"),
        nodes_to_exclude=options.get("nodes_to_exclude"),
        extra_options=dict(options.get("extra_options", {})),
    )


@hookimpl
def onnx_gate_quantizers() -> list[Quantizer]:
    return [
        Quantizer(
            name="dynamic",
            quantize=_quantize,
            description="dynamic int8: weights quantised offline, activations at run time",
            options_schema={
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "weight_type": {"enum": list(QUANT_TYPES), "default": "int8"},
                    **COMMON_OPTIONS,
                },
            },
        )
    ]
