"""A bench-only graph optimiser that makes a model truly slower by a chosen amount of work.

It adds a side branch fed by the first input (so nothing can be constant-folded):
``extra`` MatMuls of a [1, size] row by [size, size] weights, whose sum is
multiplied by zero and added to the first output. Outputs are unchanged; the
time is real. Loaded with ``ONNX_GATE_PLUGINS=slowdown_plugin`` and
``PYTHONPATH=bench``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gate import BuildContext, GraphOptimizer, hookimpl


def _optimize(
    source: Path, destination: Path, options: Mapping[str, Any], context: BuildContext
) -> dict[str, Any]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    size, extra = int(options.get("size", 256)), int(options.get("extra", 1))
    rng = np.random.default_rng(0)
    first_input = next(
        i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}
    )
    output = graph.output[0]
    elem_type = output.type.tensor_type.elem_type
    nodes = [
        helper.make_node("Cast", [first_input], ["slow_cast"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["slow_cast"], ["slow_mean"], keepdims=0),
        helper.make_node("Reshape", ["slow_mean", "slow_one_one"], ["slow_scalar"]),
        helper.make_node("Expand", ["slow_scalar", "slow_row_shape"], ["slow_row0"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([1, 1], np.int64), "slow_one_one"),
        numpy_helper.from_array(np.array([1, size], np.int64), "slow_row_shape"),
        numpy_helper.from_array(np.zeros((1,), np.float32), "slow_zero"),
    ]
    current = "slow_row0"
    for index in range(extra):
        weight = f"slow_w{index}"
        initializers.append(
            numpy_helper.from_array(
                (rng.normal(size=(size, size)) / np.sqrt(size)).astype(np.float32), weight
            )
        )
        nodes.append(helper.make_node("MatMul", [current, weight], [f"slow_mm{index}"]))
        nodes.append(helper.make_node("Tanh", [f"slow_mm{index}"], [f"slow_act{index}"]))
        current = f"slow_act{index}"
    renamed = output.name + "_before_slowdown"
    for node in graph.node:
        node.output[:] = [renamed if name == output.name else name for name in node.output]
    nodes += [
        helper.make_node("ReduceSum", [current], ["slow_sum"], keepdims=0),
        helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Cast", ["slow_nothing"], ["slow_nothing_cast"], to=elem_type),
        helper.make_node("Add", [renamed, "slow_nothing_cast"], [output.name]),
    ]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    onnx.save_model(model, str(destination))
    context.note(f"added {extra} MatMul(s) of {size}x{size} of side work")
    return {"graph_optimization_level": "all"}


@hookimpl
def onnx_gate_graph_optimizers() -> list[GraphOptimizer]:
    return [
        GraphOptimizer(
            name="slowdown",
            optimize=_optimize,
            description="bench only: adds real work that does not change the outputs",
            options_schema={
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "size": {"type": "integer", "minimum": 1},
                    "extra": {"type": "integer", "minimum": 1},
                },
            },
        )
    ]
