"""ONNX Runtime graph optimisation levels as candidates.

The measured candidate is the model run with the recipe's session level, which
is how it must be deployed. With ``save_optimized`` the optimised graph is also
written, but never beyond ``extended``: ORT's layout-level graphs are tied to
the machine that wrote them, and the deploy target may differ from CI.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate import BuildContext, GraphOptimizer, Proposal, SearchContext, copy_model, hookimpl

LEVELS = ["disabled", "basic", "extended", "layout", "all"]
PORTABLE = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
}


def _optimize(
    source: Path, destination: Path, options: Mapping[str, Any], context: BuildContext
) -> dict[str, Any]:
    level = options.get("level", "all")
    if options.get("save_optimized", False):
        import onnxruntime as ort

        offline = level if level in PORTABLE else "extended"
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, PORTABLE[offline]
        )
        session_options.optimized_model_filepath = str(destination)
        ort.InferenceSession(str(source), session_options, providers=[context.provider])
        if offline != level:
            context.note(
                f"saved the graph optimised at '{offline}'; '{level}' is applied when the session loads"
            )
    else:
        copy_model(source, destination)
    return {"graph_optimization_level": level}


# Rough priors against ORT's default ('all'): lower levels were 0.57-1.0x on every real model
# measured; above the baseline they may help.
EXPECTED = {"disabled": 0.75, "basic": 0.85, "extended": 0.92, "layout": 0.97, "all": 1.0}


def _propose(context: SearchContext) -> list[Proposal]:
    """Every session level but the baseline's: cheap to measure, and the original's best
    graph-optimised form when no quantised candidate earns its place."""
    baseline = EXPECTED.get(context.baseline_level, 1.0)
    return [
        Proposal(
            f"graph-{level}",
            {"level": level},
            min(expected / baseline, 1.1),
            f"session graph optimisation level '{level}' (the original runs at "
            f"'{context.baseline_level}')",
            0.0,
            "ort-level",
        )
        for level, expected in EXPECTED.items()
        if level != context.baseline_level
    ]


@hookimpl
def onnx_gate_graph_optimizers() -> list[GraphOptimizer]:
    return [
        GraphOptimizer(
            name="ort",
            optimize=_optimize,
            description="ONNX Runtime session graph optimisation level",
            options_schema={
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "level": {"enum": LEVELS, "default": "all"},
                    "save_optimized": {"type": "boolean", "default": False},
                },
            },
            propose=_propose,
        )
    ]
