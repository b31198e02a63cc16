"""Half-precision weights and compute (onnxruntime.transformers.float16)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate_plugins._quantization import already_quantized, refuse_quantized

from gate import BuildContext, Proposal, Quantizer, SearchContext, hookimpl

# CPU features with native float16 arithmetic that ONNX Runtime's CPU kernels can use.
FP16_CPU_FLAGS = {"avx512_fp16", "asimdhp", "fphp"}


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


def _propose(context: SearchContext) -> list[Proposal]:
    """fp16 only where the provider benefits: GPUs and NPUs, or a CPU with float16 arithmetic."""
    declined = already_quantized(context, "fp16")
    if declined:
        return declined
    if not context.on_cpu:
        return [
            Proposal(
                "fp16", {}, 1.8,
                f"{context.provider} runs float16 at twice the float32 rate or more",
                0.1, "fp16",
            )
        ]  # fmt: skip
    native = sorted(FP16_CPU_FLAGS & context.cpu_flags)
    if native:
        return [
            Proposal(
                "fp16", {}, 1.1,
                f"the CPU has float16 arithmetic ({', '.join(native)})", 0.1, "fp16",
            )
        ]  # fmt: skip
    return [
        Proposal(
            "fp16", {}, 0.0,
            "ONNX Runtime's CPU provider has few float16 kernels and this CPU has no float16 "
            "arithmetic (no avx512_fp16): fp16 would add casts and run slower",
            declined=True,
        )
    ]  # fmt: skip


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
            propose=_propose,
        )
    ]
