"""PyTorch models to ONNX with torch.onnx.export (``pip install onnx-gate[torch]``), by either
path: dynamo (``torch.export``, the default) or TorchScript (``dynamo: false``).

The source is a Python file whose ``factory`` builds the module (``model.path: net.py``,
``model.options.factory: build``), or a program saved with ``torch.export.save``
(``.pt2``). Either way loading it runs code: the gate does so only for a policy with
``model.trusted: true``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gate import Exporter, OptionError, hookimpl

OPTIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "factory": {
            "type": "string",
            "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
            "default": "build",
            "description": "Function in the .py file that returns the torch.nn.Module.",
        },
        "example_inputs": {
            "type": "object",
            "minProperties": 1,
            "description": "Input name -> {shape, dtype}: the inputs the model is traced with "
            "(needed for a .py factory; a .pt2 program's own example inputs by default).",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["shape"],
                "properties": {
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                    "dtype": {"enum": ["float32", "float16", "int64", "int32", "bool"]},
                },
            },
        },
        "output_names": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "dynamo": {
            "type": "boolean",
            "default": True,
            "description": "false: the TorchScript exporter (not for .pt2 programs).",
        },
        "opset": {"type": "integer", "minimum": 13},
    },
}


def _module(source: Path, options: Mapping[str, Any]) -> Any:
    """The torch module in eval mode (runs the file's code: the host checked model.trusted)."""
    import importlib.util

    import torch

    if source.suffix == ".pt2":
        return torch.export.load(str(source)).module()
    spec = importlib.util.spec_from_file_location(f"onnx_gate_model_{source.stem}", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    factory = getattr(module, options.get("factory", "build"), None)
    if factory is None:
        raise OptionError(f"{source.name} defines no function '{options.get('factory', 'build')}'")
    return factory().eval()


def _examples(source: Path, options: Mapping[str, Any]) -> tuple[list[str], tuple[Any, ...]]:
    """Input names and example tensors: the options', else a .pt2 program's own."""
    import torch

    if "example_inputs" not in options:
        if source.suffix != ".pt2":
            raise OptionError(
                f"{source.name}: a .py factory needs model.options.example_inputs "
                "(input name -> {shape, dtype}) to trace the module with"
            )
        program = torch.export.load(str(source))
        args, _ = program.example_inputs
        return list(program.graph_signature.user_inputs)[: len(args)], tuple(args)
    names = list(options["example_inputs"])
    tensors = []
    for name in names:
        spec = options["example_inputs"][name]
        dtype = getattr(torch, spec.get("dtype", "float32"))
        shape = spec["shape"]
        tensors.append(
            torch.randn(*shape).to(dtype)
            if dtype.is_floating_point
            else torch.zeros(*shape, dtype=dtype)
        )
    return names, tuple(tensors)


def _output_names(options: Mapping[str, Any], count: int) -> list[str]:
    return list(options.get("output_names") or [f"output_{index}" for index in range(count)])


def _as_tuple(outputs: Any) -> tuple[Any, ...]:
    return tuple(outputs) if isinstance(outputs, list | tuple) else (outputs,)


def export(source: Path, out_dir: Path, options: Mapping[str, Any]) -> Path:
    import contextlib
    import io

    import torch

    module = _module(source, options)
    names, examples = _examples(source, options)
    with torch.no_grad():
        count = len(_as_tuple(module(*examples)))
    path = out_dir / f"{source.stem}.onnx"
    # A saved program goes to ONNX as it is (its module cannot be put in eval mode), so
    # only through dynamo.
    saved = torch.export.load(str(source)) if source.suffix == ".pt2" else None
    dynamo = saved is not None or bool(options.get("dynamo", True))
    arguments: dict[str, Any] = {
        "input_names": names,
        "output_names": _output_names(options, count),
        "dynamo": dynamo,
    }
    if "opset" in options:
        arguments["opset_version"] = options["opset"]
    # torch.onnx prints its progress on stdout: keep it out of the gate's console output.
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            saved if saved is not None else module,
            examples,
            str(path) if not dynamo else None,
            **arguments,
        )
        if dynamo:  # an ONNXProgram: saved with its weights inside the one file
            program.save(str(path), external_data=False)
    return path


def reference(
    source: Path, options: Mapping[str, Any], feeds: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The module itself on the validation feeds, outputs named as in the export."""
    import torch

    module = _module(source, options)
    names, _ = _examples(source, options)
    outputs = []
    with torch.no_grad():
        for feed in feeds:
            produced = _as_tuple(module(*(torch.from_numpy(feed[name]) for name in names)))
            labels = _output_names(options, len(produced))
            outputs.append(
                {label: value.numpy() for label, value in zip(labels, produced, strict=True)}
            )
    return outputs


def timer(source: Path, options: Mapping[str, Any], feed: Mapping[str, Any], threads: int) -> Any:
    """The module on one feed, in inference mode, on ``threads`` intra-op threads."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    module = _module(source, options)
    names, _ = _examples(source, options)
    tensors = [torch.from_numpy(feed[name]) for name in names]

    @torch.inference_mode()
    def run() -> Any:
        return module(*tensors)

    run.threads = torch.get_num_threads()  # type: ignore[attr-defined]
    run.close = lambda: torch.set_num_threads(previous)  # type: ignore[attr-defined]
    return run


@hookimpl
def onnx_gate_exporters() -> list[Exporter]:
    return [
        Exporter(
            "torch",
            (".py", ".pt2"),
            export,
            "PyTorch modules (a factory in a .py file, or a torch.export .pt2) via torch.onnx.export",
            OPTIONS_SCHEMA,
            runs_code=True,
            reference=reference,
            timer=timer,
        )
    ]
