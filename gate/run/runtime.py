"""ONNX Runtime sessions, created the same way for the original and every candidate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gate.errors import listed
from gate.records import Sample

ORT_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",
    "all": "ORT_ENABLE_ALL",
}


@dataclass(frozen=True)
class Target:
    """Where models run: one provider, one thread setting, for every session."""

    provider: str
    provider_options: dict[str, Any] = field(default_factory=dict)
    threads: int = 0
    fallback: bool = False
    """Whether a session ONNX Runtime puts on the CPU instead is accepted (target.fallback)."""

    def describe(self) -> dict[str, Any]:
        return {
            "ort_provider": self.provider,
            "provider_options": self.provider_options,
            "intra_op_threads": self.threads or "onnxruntime default",
            "inter_op_threads": 1,
            "execution_mode": "sequential",
            "allow_spinning": False,
        }


def graph_level(name: str) -> Any:
    import onnxruntime as ort

    level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[name], None)
    if level is None:  # ORT_ENABLE_LAYOUT arrived in onnxruntime 1.22
        level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if name == "layout" else None
    return level


def session_options(settings: Mapping[str, Any], threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = graph_level(settings.get("graph_optimization_level", "all"))
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle sessions that keep spinning steal the cores the timed one needs: an A/A
    # pair measured 0.87x with spinning on, 1.03x with it off (anchors/optimisers.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    for key, value in settings.get("config_entries", {}).items():
        options.add_session_config_entry(key, str(value))
    return options


class ProviderNotUsed(RuntimeError):
    """ONNX Runtime created the session on another provider than the target's."""


def make_session(path: Path, settings: Mapping[str, Any], target: Target) -> Any:
    """A session on the target's provider, and only there.

    ONNX Runtime falls back to the CPU, with a log line at most, when a provider's
    libraries are missing (CUDA without cuDNN, say): timings would then describe the
    CPU. That is an error unless ``target.fallback`` allows it.
    """
    import warnings

    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # "Specified provider ... is not in available provider names"
        session = ort.InferenceSession(
            str(path),
            sess_options=session_options(settings, target.threads),
            providers=[(target.provider, target.provider_options)],
        )
    used = session.get_providers()
    if target.provider not in used and not target.fallback:
        raise ProviderNotUsed(
            f"ONNX Runtime put the session on {listed(used)}, not {target.provider} "
            "(its libraries may be missing or incompatible); set target.fallback: true to "
            "accept that"
        )
    return session


def onnxruntime_errors() -> tuple[type[BaseException], ...]:
    """What ONNX Runtime raises from a session (its pybind classes derive from Exception,
    not RuntimeError), so callers catch ORT's failures and leave the gate's own bugs."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    ort = [
        value
        for value in vars(state).values()
        if isinstance(value, type) and issubclass(value, Exception)
    ]
    return (RuntimeError, *ort)


def run_all(session: Any, feeds: Sequence[Sample]) -> list[Sample]:
    """Tensor outputs for every feed, keyed by output name (a ZipMap's sequence of maps,
    which scikit-learn converters add beside the probability tensor, is not judged)."""
    names = [output.name for output in session.get_outputs() if output.type.startswith("tensor(")]
    return [dict(zip(names, session.run(names, feed), strict=True)) for feed in feeds]


def run_stream(session: Any, feeds: Sequence[Sample], state: Mapping[str, str]) -> list[Sample]:
    """Outputs for the feeds run in order as one stream: from the second step on, each
    state input takes the session's own state output of the step before (``state``:
    output -> input); the first feed's state inputs are the stream's initial state."""
    names = [output.name for output in session.get_outputs() if output.type.startswith("tensor(")]
    outputs: list[Sample] = []
    for step, feed in enumerate(feeds):
        fed = dict(feed)
        if step:
            fed.update({target: outputs[-1][source] for source, target in state.items()})
        outputs.append(dict(zip(names, session.run(names, fed), strict=True)))
    return outputs
