"""Dynamic int8 quantisation (onnxruntime.quantization.quantize_dynamic)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate_plugins._quantization import (
    COMMON_OPTIONS,
    QUANT_TYPES,
    already_quantized,
    extra_options,
    is_arm,
    prepare,
)

from gate import BuildContext, Proposal, Quantizer, SearchContext, hookimpl

# Weights dynamic quantisation turns into int8 compute (embedding lookups are not compute).
MATMUL_LIKE = ("MatMul", "Gemm", "Attention", "LSTM", "GRU")


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
        extra_options=extra_options(options),
    )


def _propose(context: SearchContext) -> list[Proposal]:
    """Where dynamic int8 pays off: MatMul-heavy models (transformers, RNNs, MLPs).

    On Conv-heavy models ConvInteger is usually slower than float on CPUs
    (0.25-0.8x measured), so those variants come last.
    """
    declined = already_quantized(context, "dynamic")
    if declined:
        return declined
    if not context.on_cpu:
        return [
            Proposal(
                "dynamic", {}, 0.0,
                f"dynamic int8 kernels exist on the CPU provider only; on {context.provider} "
                "the quantised operators would fall back to the CPU",
                declined=True,
            )
        ]  # fmt: skip
    matmul = context.share(*MATMUL_LIKE)
    conv = context.share("Conv", "ConvTranspose")
    if matmul <= 0 and conv <= 0:
        return [
            Proposal(
                "dynamic", {}, 0.0, "no MatMul, Gemm, Conv or recurrent weights to quantise",
                declined=True,
            )
        ]  # fmt: skip
    if matmul >= conv:
        if context.vnni or is_arm(context):
            fast, fast_why = (
                {"weight_type": "int8"},
                "MatMul-heavy and the CPU has int8 dot-product instructions: int8 weights use its fastest kernels",
            )
            other = {"weight_type": "uint8"}
            other_name, fast_name = "dynamic-u8", "dynamic-s8"
        else:
            fast, fast_why = (
                {"weight_type": "uint8"},
                "MatMul-heavy on a CPU without VNNI: uint8 weights avoid the saturation of u8 x s8 "
                "products (ONNX Runtime's advice for AVX2)",
            )
            other = {"weight_type": "int8", "reduce_range": True}
            other_name, fast_name = "dynamic-s8-rr", "dynamic-u8"
        expected = 1.5 if context.vnni else 1.2
        return [
            Proposal(fast_name, fast, expected, fast_why, 0.3, "dynamic"),
            Proposal(
                f"{fast_name}-pc",
                {**fast, "per_channel": True},
                expected * 0.95,
                "per-channel weight scales: the same kernels with less accuracy lost",
                0.2,
                "dynamic",
            ),
            Proposal(
                other_name, other, expected * 0.8, "the other weight type, for comparison", 0.3,
                "dynamic",
            ),
        ]  # fmt: skip
    proposals = []
    if matmul >= 0.05:
        proposals.append(
            Proposal(
                "dynamic-u8-matmul",
                {"weight_type": "uint8", "op_types_to_quantize": ["MatMul", "Gemm"]},
                1.05,
                "Conv-heavy model: quantise only its MatMul/Gemm weights, since int8 Conv "
                "(ConvInteger) is usually slower than float on CPUs",
                0.2,
                "dynamic",
            )
        )
    proposals += [
        Proposal(
            "dynamic-u8",
            {"weight_type": "uint8"},
            0.7,
            "Conv-heavy model: dynamic int8 Conv is usually slower than float on CPUs; "
            "cheap to confirm",
            0.3,
            "dynamic",
        ),
        Proposal(
            "dynamic-s8",
            {"weight_type": "int8"},
            0.4,
            "int8 weights on a Conv-heavy model: the slowest dynamic variant measured on CPUs",
            0.3,
            "dynamic",
        ),
    ]
    return proposals


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
            propose=_propose,
        )
    ]
