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

from gate import BuildContext, GraphOptimizer, copy_model, hookimpl

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
        )
    ]
