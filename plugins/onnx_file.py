"""Exporter for models that already are ONNX: used as they are."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate import Exporter, hookimpl


def _export(source: Path, out_dir: Path, options: Mapping[str, Any]) -> Path:
    return source


@hookimpl
def onnx_gate_exporters() -> list[Exporter]:
    return [Exporter("onnx", (".onnx",), _export, "ONNX model files, used as they are")]
