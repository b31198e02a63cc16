"""Step 2: build every candidate from its recipe. A failing recipe fails alone."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gate.errors import GateError, SkipCandidate
from gate.host.manager import Host, call_plugin
from gate.policy.loading import Policy, Recipe
from gate.records import BuildContext, Sample
from gate.run.load import LoadedModel

ORIGINAL = "original"


@dataclass
class Candidate:
    """A model to judge: the original, or one built from a recipe."""

    name: str
    recipe: dict[str, Any] | None
    path: Path | None = None
    session: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    stage: str | None = None
    """Where it failed: build, load, validate or measure."""

    @property
    def failed(self) -> bool:
        return self.error is not None

    skipped: bool = False

    def fail(self, stage: str, message: str) -> None:
        self.stage, self.error = stage, message

    def skip(self, reason: str) -> None:
        self.stage, self.error, self.skipped = "build", reason, True


def original_candidate(model: LoadedModel, policy: Policy) -> Candidate:
    return Candidate(
        ORIGINAL,
        None,
        model.path,
        {"graph_optimization_level": policy.baseline_graph["level"]},
    )


def build_candidate(
    recipe: Recipe,
    source: Path,
    input_shapes: Mapping[str, Sequence[int]],
    host: Host,
    work_root: Path,
    provider: str,
    calibration: Callable[[], Iterator[Sample]],
    calibration_source: str,
) -> Candidate:
    """Quantise (when the recipe says so), then graph-optimise; record any failure."""
    candidate = Candidate(recipe.name, recipe.describe())
    work_dir = work_root / recipe.name
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    context = BuildContext(
        work_dir=work_dir,
        input_shapes=input_shapes,
        calibration_samples=calibration,
        calibration_source=calibration_source,
        provider=provider,
        notes=candidate.notes,
    )
    try:
        if recipe.rewrite is not None:
            rewritten = work_dir / "rewritten.onnx"
            _run_step(host, "graph_optimizer", recipe.rewrite, source, rewritten, context)
            source = rewritten
        if recipe.quantize is not None:
            quantized = work_dir / "quantized.onnx"
            _run_step(host, "quantizer", recipe.quantize, source, quantized, context)
            source = quantized
        destination = work_dir / "model.onnx"
        session = _run_step(host, "graph_optimizer", recipe.graph, source, destination, context)
        candidate.path, candidate.session = destination, dict(session or {})
    except SkipCandidate as exc:
        candidate.skip(str(exc))
    except GateError as exc:
        candidate.fail("build", exc.message)
    except Exception as exc:  # the host itself must survive any recipe
        candidate.fail("build", f"{type(exc).__name__}: {exc}")
    return candidate


def _run_step(
    host: Host,
    kind: str,
    step: Mapping[str, Any],
    source: Path,
    destination: Path,
    context: BuildContext,
) -> Any:
    """One step of a recipe (rewrite, quantize or graph): the plugin named by ``step["plugin"]``
    turns ``source`` into ``destination``. Returns what the plugin returned (a graph
    optimiser's session settings)."""
    record = host.get(kind, step["plugin"])
    options = {k: v for k, v in step.items() if k != "plugin"}
    action = "quantize" if kind == "quantizer" else "optimize"
    result = call_plugin(
        record, action, getattr(record, action), source, destination, options, context,
        may_skip=True,
    )  # fmt: skip
    if not destination.is_file():
        raise GateError(
            f"{kind.replace('_', ' ')} '{record.name}' (plugin '{record.plugin}') wrote no model"
        )
    return result
