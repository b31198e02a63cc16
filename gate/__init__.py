"""onnx-gate: a deployment gate for ONNX models.

The public surface for plugin authors lives here: the ``hookimpl`` marker and
the record types a plugin registers. Plugins never import other ``gate``
modules.
"""

from __future__ import annotations

from gate.errors import OptionError, SkipCandidate, bounded, listed
from gate.exitcodes import ExitCode
from gate.files import open_regular, read_regular
from gate.graph import QUANTIZED_OPS, node_key, op_counts
from gate.identity import PROJECT_NAME, __version__, hookimpl
from gate.metrics import MEASURED_METRICS
from gate.records import (
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
from gate.report.document import explain_budget, model_reports, write_atomic
from gate.run.load import copy_model

__all__ = [
    "MEASURED_METRICS",
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
