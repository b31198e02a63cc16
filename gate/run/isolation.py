"""Build a candidate in a child process, so a quantiser that segfaults, hangs or
eats all memory fails that candidate alone and the run goes on.

ORT's quantisers are native code and do crash on real graphs (Constant-node
weights, already-quantised models): an exception can be caught in-process, a
segfault cannot.

    python -m gate.run.isolation SPEC.json   # the child side
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gate.policy.loading import BuildSettings, Recipe
from gate.records import Sample
from gate.run.candidates import Candidate, build_candidate


@dataclass(frozen=True)
class Isolation:
    timeout_s: float = 600.0
    memory_mb: int | None = None
    limited_by: str = "build.timeout_s"
    """The setting that set ``timeout_s``, named when a build is cut off."""
    memory_setting: str = "build.memory_mb"
    """Where ``memory_mb`` came from, named when a child may have run out of it."""
    per_step: bool = False
    """``timeout_s`` bounds each step the child reports (a sample run), not the whole
    child: a probe of many samples may take long in all, never long on one."""


def save_feeds(feeds: Sequence[Sample], path: Path) -> None:
    """Feeds as one .npz: key ``000012.input_name`` is input ``input_name`` of sample 12."""
    np.savez(
        path,
        **{
            f"{index:06d}.{name}": value
            for index, feed in enumerate(feeds)
            for name, value in feed.items()
        },
    )


def load_feeds(path: Path) -> list[Sample]:
    return list(iter_feeds(path))


def iter_feeds(path: Path) -> Iterator[Sample]:
    """The feeds of :func:`save_feeds`, one sample in memory at a time."""
    with np.load(path, allow_pickle=False) as archive:
        keys: dict[int, list[tuple[str, str]]] = {}
        for key in archive.files:
            index, name = key.split(".", 1)
            keys.setdefault(int(index), []).append((name, key))
        for index in sorted(keys):
            yield {name: archive[key] for name, key in keys[index]}


def build_isolated(
    recipe: Recipe,
    source: Path,
    input_shapes: Mapping[str, Sequence[int]],
    work_root: Path,
    provider: str,
    calibration_path: Path,
    calibration_source: str,
    isolation: Isolation,
    provider_options: Mapping[str, Any] | None = None,
) -> Candidate:
    """Run :func:`gate.run.candidates.build_candidate` in a child; its failure modes become the candidate's."""
    candidate = Candidate(recipe.name, recipe.describe())
    spec = {
        "recipe": recipe.to_json(),
        "source": str(source.resolve()),
        "input_shapes": {name: list(shape) for name, shape in input_shapes.items()},
        "work_root": str(work_root),
        "provider": provider,
        "provider_options": dict(provider_options or {}),
        "calibration": str(calibration_path.resolve()),
        "calibration_source": calibration_source,
    }
    return _in_child(candidate, spec, work_root, isolation, "build")


def probe_isolated(
    candidate: Candidate,
    work_root: Path,
    provider: str,
    provider_options: Mapping[str, Any],
    feeds_path: Path,
    isolation: Isolation,
) -> Candidate:
    """Open ``candidate``'s model and run it once in a child: a model that crashes ONNX
    Runtime, hangs it or asks it for all memory fails here, not in the gate's own process."""
    spec = {
        # Absolute: the child runs in work_root, and --from folders are often relative.
        "probe": {"path": str(Path(str(candidate.path)).resolve()), "session": candidate.session},
        "provider": provider,
        "provider_options": dict(provider_options),
        "calibration": str(feeds_path.resolve()),
    }
    return _in_child(candidate, spec, work_root, isolation, "load")


def _in_child(
    candidate: Candidate,
    spec: dict[str, Any],
    work_root: Path,
    isolation: Isolation,
    first_stage: str,
) -> Candidate:
    work_root.mkdir(parents=True, exist_ok=True)
    spec_path = work_root / f".{candidate.name}.spec.json"
    result_path = work_root / f".{candidate.name}.result.json"
    stage_path = work_root / f".{candidate.name}.stage"
    result_path.unlink(missing_ok=True)
    stage_path.unlink(missing_ok=True)
    spec_path.write_text(
        json.dumps(
            {
                **spec,
                "result": str(result_path),
                "stage": str(stage_path),
                "memory_mb": isolation.memory_mb,
                # Whatever the parent could import (plugins on a path added at run time), the child can too.
                "sys_path": [entry for entry in sys.path if entry],
            }
        )
    )
    stderr_path = work_root / f".{candidate.name}.stderr"
    try:
        with stderr_path.open("w") as stderr_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "gate.run.isolation", str(spec_path)],
                cwd=work_root,  # never import a stray onnx.py or gate/ from the user's folder
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr_file,  # a file, not a pipe: a helper holding it open cannot stall us
                start_new_session=True,  # its own process group: a kill reaches its threads and children
            )
    except (OSError, subprocess.SubprocessError) as exc:
        candidate.fail(first_stage, f"could not start the {first_stage} process: {exc}")
        return candidate
    try:
        _wait(process, isolation, stage_path)
    except subprocess.TimeoutExpired:
        _kill(process)
        what = "the build" if first_stage == "build" else "its first run"
        if isolation.per_step:
            what = "one sample's run"
        candidate.fail(
            first_stage,
            f"timed out after {isolation.timeout_s:g} s ({isolation.limited_by}); {what} was killed",
        )
        return candidate
    except BaseException:  # Ctrl-C or SIGTERM: its own session would outlive us otherwise
        _kill(process)
        raise
    _kill(process)  # helpers it left behind in its group
    stderr = stderr_path.read_text(errors="replace")
    if process.returncode != 0 or not result_path.is_file():
        # A crash while the child ran the new model once is a load/run failure, not a build one.
        stage = stage_path.read_text() if stage_path.is_file() else first_stage
        message = _death(process.returncode, stderr, isolation, first_stage)
        if stage == "load":
            built = "built " if first_stage == "build" else ""
            message += f" while loading and running the {built}model once"
        candidate.fail(stage, message)
        return candidate
    result = json.loads(result_path.read_text())
    candidate.notes.extend(result["notes"])
    if result["path"]:
        candidate.path, candidate.session = Path(result["path"]), result["session"]
    if result["skipped"]:
        candidate.skip(result["error"])
    elif result["error"]:
        error = result["error"]
        if isolation.memory_mb is not None and any(sign in error for sign in MEMORY_SIGNS):
            error += f" ({isolation.memory_setting} is {isolation.memory_mb}: it may be too small)"
        candidate.fail(result["stage"], error)
    return candidate


def _wait(process: subprocess.Popen[bytes], isolation: Isolation, stage_path: Path) -> None:
    """Wait for the child; with ``per_step``, the deadline moves each time the child
    touches its stage file (once per sample)."""
    if not isolation.per_step:
        process.wait(timeout=isolation.timeout_s)
        return
    import time

    last, seen = time.monotonic(), -1
    while True:
        try:
            process.wait(timeout=min(1.0, isolation.timeout_s))
            return
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                stamp = stage_path.stat().st_mtime_ns
                if stamp != seen:
                    seen, last = stamp, time.monotonic()
            if time.monotonic() - last > isolation.timeout_s:
                raise


# How running out of address space shows up inside a build process.
MEMORY_SIGNS = (
    "MemoryError",
    "bad_alloc",
    "failed to map segment",
    "Cannot allocate memory",
    "Failed to allocate memory",
)


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # it may have finished meanwhile
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _death(returncode: int, stderr: str, isolation: Isolation, process: str = "build") -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        message = f"the {process} process crashed ({name})"
    else:
        tail = (stderr.strip().splitlines() or ["no output"])[-1][:300]
        message = f"the {process} process exited {returncode}: {tail}"
    if isolation.memory_mb is not None and (
        "MemoryError" in stderr or "bad_alloc" in stderr or returncode < 0
    ):
        message += (
            f"; {isolation.memory_setting} is {isolation.memory_mb}: it may have run out of memory"
        )
    return message


def _child(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    sys.path[:] = spec["sys_path"]
    if spec["memory_mb"] is not None:  # here, not in preexec_fn: the parent has threads running
        import resource

        cap = spec["memory_mb"] * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:  # a job already under `ulimit -v`: only lower it
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from gate.host.manager import get_host

    stage = Path(spec["stage"])
    if "probe" in spec:
        stage.write_text("load")
        probed = Candidate("original", None, Path(spec["probe"]["path"]), spec["probe"]["session"])
        # Every validation sample (a Loop count or a shape can come from the input), one
        # in memory at a time, each touching the stage file: the parent's per-step clock.
        samples = iter_feeds(Path(spec["calibration"]))
        _run_once(probed, (spec["provider"], spec["provider_options"]), samples, stage)
        _write_result(spec, probed)
        return
    feeds = load_feeds(Path(spec["calibration"]))
    stage.write_text("build")
    recipe = Recipe.from_json(spec["recipe"])
    candidate = build_candidate(
        recipe,
        Path(spec["source"]),
        spec["input_shapes"],
        get_host(),
        Path(spec["work_root"]),
        spec["provider"],
        lambda: iter(feeds),
        spec["calibration_source"],
    )
    if candidate.path is not None and not candidate.failed and feeds:
        # Run the new model once here: a quantiser can write a graph that crashes
        # ONNX Runtime when loaded or run, and that must not take the gate down.
        stage.write_text("load")
        _run_once(candidate, (spec["provider"], spec["provider_options"]), feeds[:1])
    _write_result(spec, candidate)


def _write_result(spec: dict[str, Any], candidate: Candidate) -> None:
    Path(spec["result"]).write_text(
        json.dumps(
            {
                "path": str(candidate.path) if candidate.path else None,
                "session": candidate.session,
                "notes": candidate.notes,
                "error": candidate.error,
                "stage": candidate.stage,
                "skipped": candidate.skipped,
            }
        )
    )


def _run_once(
    candidate: Candidate,
    provider: tuple[str, dict[str, Any]],
    feeds: Iterable[Sample],
    progress: Path | None = None,
) -> None:
    """Load the model as it will be measured and run it on ``feeds``; record a failure."""
    import onnxruntime as ort

    from gate.run.runtime import session_options

    try:
        session = ort.InferenceSession(
            str(candidate.path),
            sess_options=session_options(candidate.session, 1),
            providers=[provider],
        )
        for feed in feeds:
            if progress is not None:
                progress.write_text("load")
            session.run(None, feed)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        candidate.fail(
            "load", f"ONNX Runtime cannot run it: {text[0][:300] if text else type(exc).__name__}"
        )


if __name__ == "__main__":
    _child(sys.argv[1])


def probe_limits(build: BuildSettings, provider: str, memory: int | None) -> Isolation:
    """The original's probe: build.timeout_s (per sample) and build.memory_mb. On the CPU
    without a memory_mb, half the machine's ``memory``: side-by-side timing holds two
    sessions at once, so a model that needs more cannot be measured here, and it fails in
    its child instead of waking the OOM killer. GPU providers map far more address space
    than they use: no default."""
    if build.memory_mb is not None or provider != "CPUExecutionProvider":
        return Isolation(build.timeout_s, build.memory_mb, per_step=True)
    if memory is None:
        return Isolation(build.timeout_s, per_step=True)
    half = int(memory // (2 << 20))
    setting = "build.memory_mb (by default half this machine's memory)"
    return Isolation(build.timeout_s, half, memory_setting=setting, per_step=True)
