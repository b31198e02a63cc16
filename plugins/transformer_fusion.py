"""Transformer fusion (onnxruntime.transformers.optimizer): attention, LayerNorm and GELU
subgraphs become single kernels. A recipe's ``rewrite`` step, before any quantiser, so
dynamic quantisation can then use the fused attention's int8 kernel."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate_plugins._quantization import has_sympy

from gate import BuildContext, GraphOptimizer, Proposal, SearchContext, SkipCandidate, hookimpl

MODEL_TYPES = ["bert", "bart", "gpt2", "t5", "vit", "clip", "conformer", "unet"]
ALREADY_FUSED = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
)
NEEDS = "transformer fusion needs sympy: pip install 'onnx-gate[transformers]'"


def _fuse(
    source: Path, destination: Path, options: Mapping[str, Any], context: BuildContext
) -> dict[str, Any]:
    if not has_sympy():
        raise SkipCandidate(NEEDS)
    from onnxruntime.transformers.optimizer import optimize_model

    # opt_level 0: the fusions only; ONNX Runtime's own levels are applied when the session loads.
    optimized = optimize_model(
        str(source),
        model_type=options.get("model_type", "bert"),
        num_heads=options.get("num_heads", 0),
        hidden_size=options.get("hidden_size", 0),
        opt_level=0,
    )
    fused = {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}
    if not fused:
        raise SkipCandidate(
            "transformer fusion recognised no attention, LayerNorm or GELU pattern in this graph"
        )
    optimized.save_model_to_file(str(destination))
    context.note("fused " + ", ".join(f"{count} {op}" for op, count in sorted(fused.items())))
    return {"graph_optimization_level": options.get("level", "all")}


def _propose(context: SearchContext) -> list[Proposal]:
    if context.kind != "transformer":
        return []
    if any(context.op_counts.get(op) for op in ALREADY_FUSED):
        return []
    if not has_sympy():
        return [Proposal("transformer-fused", {}, 0.0, NEEDS, declined=True)]
    return [
        Proposal(
            "transformer-fused",
            {"model_type": "bert"},
            1.1,
            "the graph looks like a transformer encoder: fused attention and LayerNorm kernels, "
            "and a graph dynamic quantisation can turn into int8 attention",
            0.02,
            "transformer",
        )
    ]


@hookimpl
def onnx_gate_graph_optimizers() -> list[GraphOptimizer]:
    return [
        GraphOptimizer(
            name="transformer",
            optimize=_fuse,
            description="onnxruntime.transformers fusion of attention, LayerNorm and GELU",
            options_schema={
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "model_type": {"enum": MODEL_TYPES, "default": "bert"},
                    "num_heads": {"type": "integer", "minimum": 0, "default": 0},
                    "hidden_size": {"type": "integer", "minimum": 0, "default": 0},
                    "level": {
                        "enum": ["disabled", "basic", "extended", "layout", "all"],
                        "default": "all",
                        "description": "session level when used as a recipe's graph step",
                    },
                },
            },
            propose=_propose,
            rewrites=True,
        )
    ]
