"""The report as typed records: what a run's steps fill in, serialised in one place.

``ModelReport`` is one model's report.json, ``CandidateEntry`` one of its
``candidates``, and ``SuiteReport`` the report over several models. The steps set fields; :meth:`ModelReport.to_json` is the only place a
report becomes JSON, and ``tests/test_architecture.py`` holds every field to
``schemas/report.schema.json`` (and the schema to the fields). Fields that a report
carries only once known (``testbed``, ``search``, ``export``, ...) start as ``UNSET`` and
are left out of the JSON until a step sets them, so a report says how far its run got.
Reporter plugins receive the JSON form: their API is the documented report.json.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gate.exitcodes import ExitCode
from gate.identity import __version__


class _Unset:
    """Not known yet: the field is not written."""

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


def _json_fields(record: Any) -> dict[str, Any]:
    return {
        item.name: getattr(record, item.name)
        for item in dataclasses.fields(record)
        if getattr(record, item.name) is not UNSET
    }


class _Record:
    """``update`` and ``get`` in the spirit of the dict a report used to be, limited to
    the record's own fields: a misspelt key is an error, not a new key (the records have
    slots, so a misspelt attribute is one too)."""

    __slots__ = ()

    def update(self, **values: Any) -> None:
        names = {item.name for item in dataclasses.fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - names)
        if unknown:
            raise AttributeError(f"{type(self).__name__} has no field {', '.join(unknown)}")
        for name, value in values.items():
            setattr(self, name, value)

    def get(self, name: str, default: Any = None) -> Any:
        value = getattr(self, name, UNSET)
        return default if value is UNSET else value

    def is_set(self, name: str) -> bool:
        return getattr(self, name) is not UNSET


@dataclass(kw_only=True, eq=False, slots=True)
class CandidateEntry(_Record):
    """One candidate of report.json: what it is, how it was judged, and what became of it."""

    name: str
    status: str = "failed"
    """passed, rejected, failed, skipped (or inconclusive)."""
    chosen: bool = False
    recipe: Any = None
    session: dict[str, Any]
    """The session options it runs with (graph_optimization_level, ...)."""
    stage: str | None = None
    """Where it failed: build, load, validate or measure."""
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    budgets: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    timing: dict[str, Any] | None = None
    artifact: dict[str, Any] | None = None
    validation: Any = UNSET
    """Task validators' details (decoded strings, detections) when they give any."""
    search: Any = UNSET
    """How the search came to it: origin, order, parent, reason."""
    sensitivity: Any = UNSET
    """The accuracy fallback's ranking of its nodes, worst first."""
    outcome: Any = UNSET
    """The decision log's line: why it won or lost."""

    def to_json(self) -> dict[str, Any]:
        return _json_fields(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CandidateEntry:
        """An entry as a stage wrote it (same version): unknown keys are refused."""
        return cls(**dict(data))


@dataclass(kw_only=True, eq=False, slots=True)
class ModelReport(_Record):
    """One model's report.json."""

    report_version: int = 1
    tool: dict[str, str] = field(
        default_factory=lambda: {"name": "onnx-gate", "version": __version__}
    )
    name: str | None = None
    verdict: str = "error"
    exit_code: int = 3
    message: str = ""
    policy: str = ""
    model: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    measurement: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None
    candidates: list[CandidateEntry] = field(default_factory=list)
    budgets: list[dict[str, Any]] = field(default_factory=list)
    waivers: list[dict[str, Any]] = field(default_factory=list)
    chosen: str | None = None
    decision: str = ""
    output_model: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    # Written once known:
    testbed: dict[str, Any] = UNSET
    """The machine's fingerprint (CPU, flags, cores, memory, versions)."""
    regressions: list[dict[str, Any]] = UNSET
    export: dict[str, Any] = UNSET
    """An exported model held to its framework model."""
    build: dict[str, Any] | None = UNSET
    search: dict[str, Any] = UNSET
    """The search's order, log, fallbacks and wall time."""
    counts: dict[str, int] = UNSET
    final: dict[str, Any] | None = UNSET
    """The head-to-head final among the leading candidates; None when none ran."""
    recommendation: str | None = UNSET
    partial: bool = UNSET
    """True when a signal cut the run short."""
    stage: str = UNSET
    build_stage: dict[str, Any] | None = UNSET
    measured: dict[str, Any] = UNSET
    """The decide stage: where its measurements came from."""
    files: list[str] = UNSET

    def to_json(self) -> dict[str, Any]:
        document = _json_fields(self)
        document["candidates"] = [entry.to_json() for entry in self.candidates]
        return document


@dataclass(kw_only=True, eq=False, slots=True)
class SuiteReport(_Record):
    """The report over several models (``models:``, ``--shard``, ``merge``): each model's
    verdict, the budget rows and counts of all of them, and the combined verdict. Each
    model's own report lies in ``models/NAME/``."""

    report_version: int = 1
    tool: dict[str, str] = field(
        default_factory=lambda: {"name": "onnx-gate", "version": __version__}
    )
    verdict: str = "error"
    exit_code: int = 3
    message: str = ""
    policy: str = ""
    budgets: list[dict[str, Any]] = field(default_factory=list)
    waivers: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    kind: str = "suite"
    models: list[dict[str, Any]] = field(default_factory=list)
    """One line per model: name, dir, verdict, exit_code, chosen, message, partial."""
    shard: dict[str, Any] | None = None
    """``--shard K/N``: index, count and the models of this share."""
    all_models: list[str] = field(default_factory=list)
    # Written once known:
    policy_sha256: str | None = UNSET
    testbed: dict[str, Any] | None = UNSET
    counts: dict[str, int] = UNSET
    partial: bool = UNSET
    """True when a signal cut the suite short."""
    stage: str = UNSET
    merged_from: list[str] = UNSET
    """``merge``: the folders merged."""
    files: list[str] = UNSET

    def to_json(self) -> dict[str, Any]:
        return _json_fields(self)


def mark_partial(report: ModelReport | SuiteReport, message: str) -> None:
    """A run a signal cut short: an error (exit 3), partial, and ``message`` saying so."""
    report.update(
        verdict="error", exit_code=int(ExitCode.RUNTIME_ERROR), message=message, partial=True
    )
    report.errors.append(message)
