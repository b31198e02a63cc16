"""Typed records that plugins register, and the contexts the host hands them.

A plugin returns records from its hooks (see :mod:`gate.host.hookspecs`); the host
keys them by ``name``. Heavy work happens only when the host calls a record's
function, never while records are collected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    labels: Any
    """``data.labels`` when given, read for the task: class ids (``numpy`` int array, one per
    sample), strings (``ctc``), or boxes (``detection``: a dict of ``boxes``, ``classes``,
    ``sample`` arrays); ``None`` without labels."""
    synthetic: bool
    """True when the validation inputs were synthesised rather than read from a file."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The task's options (``validation.<task>``), defaults filled in."""
    task: str = "tensor"
    """The task the run judges by (``validation.task``, or what ``auto`` inferred)."""
    inputs: Sequence[Sample] = ()
    """The validation feeds, in order (an embedding's attention mask is read here)."""
    outputs: Sequence[str] = ()
    """Every output judged (``validation.outputs``); ``output`` is the first."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Kept for the whole run: a validator may store what it derives from ``reference``
    here, under its own name, rather than derive it again for every candidate."""
    details: dict[str, Any] = field(default_factory=dict)
    """Put short, JSON-ready facts here (decoded strings, detection counts) to have them
    shown against the candidate in the report."""


class VacuousData(Exception):
    """Raised by a validator when the original's decisions on the validation inputs are
    empty (no boxes, empty strings): its metric cannot judge. The run stops with exit 2,
    pointing at ``data.validation``."""


@dataclass(frozen=True)
class SearchContext:
    """What a plugin may know when it proposes candidates for ``candidates: auto``.

    Built once per run from the loaded model and the target's testbed
    fingerprint, before anything is built or timed.
    """

    provider: str
    """ONNX Runtime provider the candidates will run on, e.g. ``CPUExecutionProvider``."""
    arch: str
    """``x86_64``, ``aarch64``, ..."""
    cpu_flags: frozenset[str]
    """CPU features that matter to int8 / fp16 kernels (``avx2``, ``avx512_vnni``, ``neon``...)."""
    vnni: bool
    """The CPU has int8 dot-product instructions (VNNI on x86, dot-product on Arm)."""
    op_counts: Mapping[str, int]
    """Operator type -> number of nodes, subgraphs included."""
    weight_share: Mapping[str, float]
    """Operator type -> share of the model's weight parameters it reads."""
    parameters: int
    """Weight elements in the model: its initializers, subgraphs included."""
    kind: str
    """A rough family read off the graph: ``transformer``, ``cnn``, ``recurrent``, ``mlp`` or ``other``."""
    quantized_ops: tuple[str, ...]
    """Quantised operators already in the model (empty for a float model)."""
    has_calibration: bool
    """The policy gives ``data.calibration`` (real data, not synthetic inputs)."""
    baseline_level: str
    """The graph optimisation level the original runs at."""
    decode_tail: tuple[str, ...] = ()
    """The nodes after the last Conv / MatMul / Gemm when they decode (a detector's
    Sigmoid / Concat / Mul tail), by the names ``nodes_to_exclude`` takes; empty otherwise."""

    def share(self, *op_types: str) -> float:
        return sum(self.weight_share.get(op_type, 0.0) for op_type in op_types)

    @property
    def on_cpu(self) -> bool:
        return self.provider == "CPUExecutionProvider"


@dataclass(frozen=True)
class Proposal:
    """One candidate a plugin suggests for ``candidates: auto``, with what it expects of it.

    The search tries proposals in order of expected value
    (``expected_speedup * (1 - accuracy_risk)``) and revises those numbers for a
    whole ``family`` as soon as one member has been measured.
    """

    name: str
    """Candidate name, e.g. ``dynamic-s8``; unique within a run."""
    options: Mapping[str, Any]
    """Options for the proposing plugin, as a policy recipe would give them."""
    expected_speedup: float
    """Prior guess of the speedup on this target (1.0 = as fast as the original)."""
    reason: str
    """Why this is worth trying here, in one sentence (shown in the report)."""
    accuracy_risk: float = 0.0
    """Prior probability, 0-1, that it misses an accuracy budget."""
    family: str = ""
    """Proposals that share a family learn from each other's measurements."""
    declined: bool = False
    """True when the plugin considered this and decided against it; ``reason`` says why."""


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
    runs_code: bool = False
    """Loading the source runs code from it (pickle, joblib, a full torch.load): the gate
    refuses such a file unless the policy says ``model.trusted: true``."""
    reference: Callable[[Path, Mapping[str, Any], Sequence[Sample]], list[Sample]] | None = None
    """``reference(source, options, feeds) -> outputs``: the framework model run on the
    validation feeds, keyed by the exported model's output names. When given, the report
    compares the framework model with the exported one (``export``), apart from the
    exported-vs-optimised comparison of every candidate."""
    timer: Callable[[Path, Mapping[str, Any], Sample, int], Callable[[], Any]] | None = None
    """``timer(source, options, feed, threads) -> run``: the framework model loaded once,
    and a function of no arguments that runs it on ``feed`` with ``threads`` intra-op
    threads (0: the framework's default). When given, the gate times it against the
    exported original in paired blocks and reports ``runtime_speedup``. ``run.threads``,
    when set, is the intra-op threads the framework really runs on (when it could not take
    ``threads``); ``run.close()``, when present, is called after timing (to restore the
    process's thread settings)."""


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
    propose: Callable[[SearchContext], Iterable[Proposal]] | None = None
    """Candidates worth trying on this model and target, for ``candidates: auto``."""
    rewrites: bool = False
    """True for a graph rewrite that belongs before quantisation (a recipe's ``rewrite``
    step, e.g. transformer fusion); False for how the session runs (its ``graph`` step)."""
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
    propose: Callable[[SearchContext], Iterable[Proposal]] | None = None
    """Candidates worth trying on this model and target, for ``candidates: auto``.

    A quantiser whose ``options_schema`` accepts ``nodes_to_exclude`` also gets
    the accuracy fallback: when one of its candidates misses an accuracy budget,
    the search retries it with the nodes that hurt most excluded.
    """
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
    tasks: frozenset[str] = frozenset()
    """The ``validation.task`` values it judges; empty: every task."""


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
    """Maps ``target.provider_options`` (validated against ``options_schema``) to what
    ONNX Runtime takes for this provider."""
    description: str = ""
    plugin: str = ""
    options_schema: Mapping[str, Any] = field(default_factory=dict)
    """JSON schema of ``target.provider_options``; ``onnx-gate check`` validates against it."""
    install: str = ""
    """How to get the package, shown when the provider is missing."""


@dataclass(frozen=True)
class Reporter:
    """Writes one more report file next to ``report.json``."""

    name: str
    write: Callable[[Mapping[str, Any], Path], list[Path]]
    """``write(report, output_dir) -> files written``; ``report`` is report.json's content."""
    description: str = ""
    plugin: str = ""

    @classmethod
    def file(
        cls,
        name: str,
        filename: str,
        render: Callable[[Mapping[str, Any], Path], str],
        description: str = "",
    ) -> Reporter:
        """A reporter writing one file, ``render(report, output_dir)``, atomically."""

        def write(report: Mapping[str, Any], output_dir: Path) -> list[Path]:
            from gate.files import write_atomic

            path = output_dir / filename
            write_atomic(path, render(report, output_dir))
            return [path]

        return cls(name, write, f"{filename}: {description}" if description else filename)


Record = Exporter | GraphOptimizer | Quantizer | Validator | ExecutionProvider | Reporter
