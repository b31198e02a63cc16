"""A run's settings as one value: the policy, and what the command line adds to it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from gate.policy.loading import Policy

DEFAULT_OUTPUT_DIR = Path("gate-report")


@dataclass(frozen=True)
class RunOptions:
    """The command line's options for one ``onnx-gate run`` (see ``gate.ci.suite.run_gate``)."""

    output_dir: Path = DEFAULT_OUTPUT_DIR
    keep_candidates: bool = False
    """``--keep-candidates``: every built candidate saved as ``candidates/NAME.onnx``."""
    shard: tuple[int, int] | None = None
    """``--shard K/N``: gate the K-th of N shares of the policy's models."""
    stage: str | None = None
    """``--stage build|measure|decide``: one stage, reading ``source`` (the stage before)."""
    source: Path | None = None
    trust_model: bool = False
    """``--trust-model``: an exporter may run code from the model file."""
    allowed_paths: tuple[Path, ...] = ()
    """``--allow-path``: folders outside the repository the policy's files may come from."""

    def for_model(self, name: str, models_dir: str) -> RunOptions:
        """The options of one model of a suite: its own output (and source) folder."""
        return dataclasses.replace(
            self,
            output_dir=self.output_dir / models_dir / name,
            source=None if self.source is None else self.source / models_dir / name,
        )


@dataclass(frozen=True)
class RunSettings:
    """Everything one model's run is told: its policy and the command line's options."""

    policy: Policy
    options: RunOptions
