"""onnx-gate: a deployment gate for ONNX models.

The public surface for plugin authors lives here: the ``hookimpl`` marker and
the record types a plugin registers. Plugins never import other ``gate``
modules.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "onnx_gate"
"""pluggy marker name and entry-point group."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

from gate.errors import OptionError, SkipCandidate, bounded, listed  # noqa: E402
from gate.exitcodes import ExitCode  # noqa: E402
from gate.files import open_regular, read_regular  # noqa: E402
from gate.graph import QUANTIZED_OPS, node_key, op_counts  # noqa: E402
from gate.load import copy_model  # noqa: E402
from gate.records import (  # noqa: E402
    BuildContext,
    ExecutionProvider,
    Exporter,
    GraphOptimizer,
    Proposal,
    Quantizer,
    Reporter,
    SearchContext,
    VacuousData,
    ValidationContext,
    Validator,
)
from gate.report import explain_budget, model_reports, write_atomic  # noqa: E402

__all__ = [
    "PROJECT_NAME",
    "QUANTIZED_OPS",
    "BuildContext",
    "ExecutionProvider",
    "ExitCode",
    "Exporter",
    "GraphOptimizer",
    "OptionError",
    "Proposal",
    "Quantizer",
    "Reporter",
    "SearchContext",
    "SkipCandidate",
    "VacuousData",
    "ValidationContext",
    "Validator",
    "__version__",
    "bounded",
    "copy_model",
    "explain_budget",
    "hookimpl",
    "listed",
    "model_reports",
    "node_key",
    "op_counts",
    "open_regular",
    "read_regular",
    "write_atomic",
]
