"""Typed records that plugins register, and the contexts the host hands them.

A plugin returns records from its hooks (see :mod:`gate.hookspecs`); the host
keys them by ``name``. Heavy work happens only when the host calls a record's
function, never while records are collected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Sample = dict[str, np.ndarray]
"""One model feed (input name -> array) or one set of outputs (output name -> array)."""

JsonSchema = dict[str, Any]

EMPTY_OPTIONS_SCHEMA: JsonSchema = {"type": "object", "additionalProperties": False}


@dataclass(frozen=True)
class BuildContext:
    """What a graph optimiser or quantiser may use while building a candidate."""

    work_dir: Path
    """A folder private to this candidate for intermediate files."""
    input_shapes: Mapping[str, Sequence[int]]
    """Fixed shape of every model input, as measured."""
    calibration_samples: Callable[[], Iterator[Sample]]
    """Fresh iterator over calibration feeds (from ``data.calibration`` or synthetic)."""
    calibration_source: str
    """``file`` when the policy gave calibration data, ``synthetic`` otherwise."""
    provider: str
    """ONNX Runtime provider the candidate will run on, e.g. ``CPUExecutionProvider``."""
    notes: list[str] = field(default_factory=list)
    """Append a sentence here to have it shown against the candidate in the report."""

    def note(self, text: str) -> None:
        self.notes.append(text)


@dataclass(frozen=True)
class ValidationContext:
    """Outputs of the original and a candidate on the same validation feeds."""

    reference: Sequence[Sample]
    candidate: Sequence[Sample]
    output: str
    """Name of the output the policy judges (``validation.output``; first output by default)."""
    labels: np.ndarray | None
    """Class labels, one per validation sample, when ``data.labels`` is given."""
    synthetic: bool
    """True when the validation inputs were synthesised rather than read from a file."""
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Exporter:
    """Turns a model file into ONNX. The built-in ``onnx-file`` passes ONNX through."""

    name: str
    suffixes: tuple[str, ...]
    export: Callable[[Path, Path, Mapping[str, Any]], Path]
    """``export(source, out_dir, options) -> path of an ONNX model``."""
    description: str = ""
    options_schema: JsonSchema = field(default_factory=lambda: dict(EMPTY_OPTIONS_SCHEMA))
    plugin: str = ""


@dataclass(frozen=True)
class GraphOptimizer:
    """Rewrites a graph and says how the result must be run."""

    name: str
    optimize: Callable[[Path, Path, Mapping[str, Any], BuildContext], dict[str, Any]]
    """``optimize(source, destination, options, context) -> session settings``.

    Writes the optimised model to ``destination`` and returns the session
    settings the candidate is measured (and must be deployed) with, e.g.
    ``{"graph_optimization_level": "all"}``.
    """
    description: str = ""
    options_schema: JsonSchema = field(default_factory=lambda: dict(EMPTY_OPTIONS_SCHEMA))
    plugin: str = ""


@dataclass(frozen=True)
class Quantizer:
    """Writes a quantised copy of a model."""

    name: str
    quantize: Callable[[Path, Path, Mapping[str, Any], BuildContext], None]
    """``quantize(source, destination, options, context)``; raise to fail the candidate."""
    description: str = ""
    options_schema: JsonSchema = field(default_factory=lambda: dict(EMPTY_OPTIONS_SCHEMA))
    """JSON schema of the options a recipe may give next to ``plugin``."""
    uses_calibration: bool = False
    plugin: str = ""


@dataclass(frozen=True)
class Validator:
    """Compares a candidate's outputs with the original's and returns metrics."""

    name: str
    metrics: Mapping[str, str]
    """Metric name -> one-line meaning, for every metric ``validate`` may return."""
    validate: Callable[[ValidationContext], dict[str, float]]
    description: str = ""
    needs_labels: bool = False
    """When true the validator runs only if ``data.labels`` is given."""
    plugin: str = ""


@dataclass(frozen=True)
class ExecutionProvider:
    """An ONNX Runtime execution provider the gate can measure on."""

    name: str
    ort_name: str
    """Name ONNX Runtime knows it by, e.g. ``CUDAExecutionProvider``."""
    package: str
    """The pip package that brings it, named in the error when it is missing."""
    is_available: Callable[[], bool]
    provider_options: Callable[[Mapping[str, Any]], dict[str, Any]] = lambda options: dict(options)
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class Reporter:
    """Writes one more report file next to ``report.json``."""

    name: str
    write: Callable[[Mapping[str, Any], Path], list[Path]]
    """``write(report, output_dir) -> files written``; ``report`` is report.json's content."""
    description: str = ""
    plugin: str = ""


Record = Exporter | GraphOptimizer | Quantizer | Validator | ExecutionProvider | Reporter
