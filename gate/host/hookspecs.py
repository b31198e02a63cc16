"""Every hook onnx-gate calls, in the order a run needs them.

Each hook returns an iterable of records (see :mod:`gate.records`). The host
collects the records of all plugins when the plugin manager is first used,
before the policy is checked; a plugin must not do heavy work here (import
onnxruntime inside the record's functions, not at module top). Two plugins
registering the same name is an error naming both. None of these hooks is
``firstresult``: every plugin's records are kept.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from gate.identity import PROJECT_NAME
from gate.records import (
    ExecutionProvider,
    Exporter,
    GraphOptimizer,
    Quantizer,
    Reporter,
    Validator,
)

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


# -- load --------------------------------------------------------------------


@hookspec
def onnx_gate_exporters() -> Iterable[Exporter]:
    """Register exporters that turn a model file into ONNX.

    Called once when the registry is built. The policy's ``model.exporter``
    picks one by name; without it the first exporter whose ``suffixes`` match
    ``model.path`` is used.

    :return: the exporters this plugin provides.
    """


@hookspec
def onnx_gate_execution_providers() -> Iterable[ExecutionProvider]:
    """Register execution providers the gate can measure on.

    Called once when the registry is built. ``target.provider`` picks one by
    name; ``is_available`` is called only for the one picked.

    :return: the providers this plugin provides.
    """


# -- candidates --------------------------------------------------------------


@hookspec
def onnx_gate_graph_optimizers() -> Iterable[GraphOptimizer]:
    """Register graph optimisers, picked by a recipe's ``graph.plugin`` or ``rewrite.plugin``.

    Called once when the registry is built. ``optimize`` runs while candidates
    are built: as a recipe's ``rewrite`` before its quantiser, as its ``graph``
    step after it. ``propose``, when given, is called once per run as
    ``candidates: auto`` starts, with a :class:`gate.SearchContext`; a record with
    ``rewrites=True`` proposes rewrites, which the search also combines with
    every quantiser proposal.

    :return: the graph optimisers this plugin provides.
    """


@hookspec
def onnx_gate_quantizers() -> Iterable[Quantizer]:
    """Register quantisers, picked by a recipe's ``quantize.plugin``.

    Called once when the registry is built. A recipe's other ``quantize`` keys
    are validated against the quantiser's ``options_schema`` when the policy is
    checked; ``quantize`` runs while candidates are built. An exception it
    raises fails that candidate only and is reported with the plugin's name.
    ``propose``, when given, is called once per run as ``candidates: auto``
    starts, with a :class:`gate.SearchContext`, and returns the
    :class:`gate.Proposal` s worth trying on this model and target.

    :return: the quantisers this plugin provides.
    """


# -- validate ----------------------------------------------------------------


@hookspec
def onnx_gate_validators() -> Iterable[Validator]:
    """Register validators that turn outputs into accuracy metrics.

    Called once when the registry is built. Every validator named in
    ``validation.validators`` (by default every one whose ``tasks`` include the
    run's ``validation.task``, or that sets no ``tasks``) runs once per candidate
    after its outputs on the validation inputs are collected, and once on the
    original, where raising :class:`gate.VacuousData` stops the run with exit 2
    because the data cannot judge. The metric names it declares may be used in
    ``budgets``.

    :return: the validators this plugin provides.
    """


# -- report ------------------------------------------------------------------


@hookspec
def onnx_gate_reporters() -> Iterable[Reporter]:
    """Register reporters that write files next to ``report.json``.

    Called once when the registry is built. Every reporter runs after the
    verdict is decided, including on failed runs; an exception in one is
    recorded in ``report.json`` and does not stop the others.

    :return: the reporters this plugin provides.
    """
