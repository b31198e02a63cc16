"""Static quantisation with calibration (onnxruntime.quantization.quantize_static)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate_plugins._quantization import COMMON_OPTIONS, QUANT_TYPES, prepare

from gate import BuildContext, Quantizer, hookimpl

FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}
CALIBRATION = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def _quantize(
    source: Path, destination: Path, options: Mapping[str, Any], context: BuildContext
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = context.calibration_samples()

        def get_next(self) -> dict[str, Any] | None:
            return next(self.samples, None)

    if context.calibration_source == "synthetic":
        context.note(
            "calibrated on synthetic inputs: give data.calibration for a meaningful calibration"
        )
    source = prepare(source, options, context)
    quantize_static(
        str(source),
        str(destination),
        Reader(),
        quant_format=getattr(QuantFormat, FORMATS[options.get("format", "qdq")]),
        activation_type=getattr(QuantType, QUANT_TYPES[options.get("activation_type", "uint8")]),
        weight_type=getattr(QuantType, QUANT_TYPES[options.get("weight_type", "int8")]),
        per_channel=options.get("per_channel", False),
        reduce_range=options.get("reduce_range", False),
        calibrate_method=getattr(
            CalibrationMethod, CALIBRATION[options.get("calibration_method", "minmax")]
        ),
        op_types_to_quantize=options.get("op_types_to_quantize"),
        nodes_to_exclude=options.get("nodes_to_exclude"),
        extra_options=dict(options.get("extra_options", {})),
    )


@hookimpl
def onnx_gate_quantizers() -> list[Quantizer]:
    return [
        Quantizer(
            name="static",
            quantize=_quantize,
            description="static int8 with calibration data (QDQ or QOperator)",
            uses_calibration=True,
            options_schema={
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "format": {"enum": list(FORMATS), "default": "qdq"},
                    "activation_type": {"enum": list(QUANT_TYPES), "default": "uint8"},
                    "weight_type": {"enum": list(QUANT_TYPES), "default": "int8"},
                    "calibration_method": {"enum": list(CALIBRATION), "default": "minmax"},
                    **COMMON_OPTIONS,
                },
            },
        )
    ]
