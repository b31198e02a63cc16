"""Validation and calibration feeds: read from .npz files, or synthesised and marked so."""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gate.errors import GateError, PolicyError, listed
from gate.policy.guards import Limits, check_data_file, open_data_file
from gate.policy.loading import Policy
from gate.records import Sample
from gate.run.load import LoadedModel, TensorSpec

DEFAULT_LIMITS = Limits()


@dataclass
class FeedSet:
    feeds: list[Sample]
    source: str  # "file" or "synthetic"
    path: Path | None = None

    def describe(self, base: Path) -> dict[str, object]:
        return {
            "source": self.source,
            "path": _relative(self.path, base) if self.path else None,
            "samples": len(self.feeds),
        }


def _why(exc: Exception) -> str:
    # numpy's own advice ("load it unsafely using allow_pickle=True") is not ours to give.
    if "allow_pickle" in str(exc):
        return "it holds object arrays (pickled data), which the gate never loads"
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def synthesize(model: LoadedModel, policy: Policy, count: int, seed: int) -> list[Sample]:
    """Random feeds of the fixed shapes; ``inputs.<name>.range`` bounds the values."""
    for spec in model.inputs:
        value_range = policy.inputs.get(spec.name)
        low_high = value_range.value_range if value_range else None
        if low_high is not None and not _fits(low_high, spec.dtype):
            raise PolicyError(
                policy.problem(
                    ("inputs", spec.name, "range"),
                    f"{list(low_high)} does not fit the input's type, {spec.dtype}",
                )
            )
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for spec in model.inputs:
            value_range = policy.inputs.get(spec.name)
            low_high = value_range.value_range if value_range else None
            feed[spec.name] = _random(rng, spec, low_high)
        feeds.append(feed)
    return feeds


def _fits(low_high: tuple[float, float], dtype: np.dtype) -> bool:
    if dtype == np.bool_:
        return True
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    return all(float(info.min) <= value <= float(info.max) for value in low_high)


def _random(
    rng: np.random.Generator, spec: TensorSpec, low_high: tuple[float, float] | None
) -> np.ndarray:
    shape = spec.shape
    if spec.dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(spec.dtype, np.integer):
        low, high = low_high or (0, 10)
        return rng.integers(int(low), max(int(high), int(low) + 1), size=shape).astype(spec.dtype)
    if low_high is not None:
        return rng.uniform(low_high[0], low_high[1], size=shape).astype(spec.dtype)
    return rng.standard_normal(size=shape).astype(spec.dtype)


@contextlib.contextmanager
def _npz(path: Path, where: str, limits: Limits, not_npz: str) -> Iterator[Any]:
    """A data file opened as an .npz archive (bounded, no pickles); any failure to read it,
    in the body too, is one line naming ``where``; ``not_npz`` says what was expected."""
    check_data_file(path, where, limits)
    try:
        with open_data_file(path, where, limits) as stream:
            if not zipfile.is_zipfile(stream):
                raise PolicyError(f"{where}: {not_npz}")
            stream.seek(0)
            with np.load(stream, allow_pickle=False) as archive:
                yield archive
    except GateError:
        raise
    except Exception as exc:
        raise PolicyError(f"{where}: cannot read {path.name} as .npz: {_why(exc)}") from None


def load_feeds(
    path: Path, model: LoadedModel, where: str, limits: Limits = DEFAULT_LIMITS
) -> list[Sample]:
    """Feeds from an .npz keyed by input name whose first axis indexes samples.

    Each ``array[i]`` must have the input's fixed shape. When the input's first
    dimension is a batch of 1, the array may instead stack samples along that
    axis (``array[i:i+1]`` is then one sample).
    """
    not_npz = (
        f"{path.name} is not an .npz archive (numpy.savez writes one, an array per model input)"
    )
    with _npz(path, where, limits, not_npz) as archive:
        # Names first: a file of 20,000 stray arrays is refused before any is read.
        _check_names(archive.files, model, path, where)
        arrays = {key: archive[key] for key in archive.files}
    problems = []

    per_input: dict[str, list[np.ndarray]] = {}
    for spec in model.inputs:
        array = arrays[spec.name]
        shape = tuple(spec.shape)
        if array.ndim >= 1 and array.shape[1:] == shape:
            samples = [array[i] for i in range(array.shape[0])]
        elif shape and shape[0] == 1 and array.shape[1:] == shape[1:]:
            samples = [array[i : i + 1] for i in range(array.shape[0])]
        else:
            came_from = (
                f" (taken from {spec.shape_from})"
                if spec.shape_from
                and spec.shape_from.startswith("data.")
                and spec.shape_from != where
                else ""
            )
            problems.append(
                f"{where}: array '{spec.name}' has shape {list(array.shape)}; expected "
                f"[samples, {', '.join(map(str, shape))}] for input shape {list(shape)}{came_from}"
            )
            continue
        if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
            problems.append(
                f"{where}: array '{spec.name}' is {array.dtype}; the input is {spec.dtype}"
            )
            continue
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).reshape(array.shape[0], -1).any(axis=1).sum())
            problems.append(
                f"{where}: array '{spec.name}' has NaN or Inf values in {bad} sample(s)"
            )
            continue
        per_input[spec.name] = [np.ascontiguousarray(s, dtype=spec.dtype) for s in samples]
    counts = {name: len(samples) for name, samples in per_input.items()}
    if len(set(counts.values())) > 1:
        problems.append(f"{where}: arrays hold different sample counts: {counts}")
    if counts and not any(counts.values()):
        problems.append(f"{where}: {path.name} holds no samples")
    if problems:
        raise PolicyError(f"{where}: data does not match the model", problems)
    count = next(iter(counts.values()))
    return [{name: per_input[name][i] for name in per_input} for i in range(count)]


def _check_names(arrays: list[str], model: LoadedModel, path: Path, where: str) -> None:
    names = [spec.name for spec in model.inputs]
    missing = [name for name in names if name not in arrays]
    extra = [key for key in arrays if key not in names]
    problems = []
    if missing:
        problems.append(
            f"{where}: {path.name} lacks input(s) {listed(missing)} (has: {listed(arrays, 'nothing')})"
        )
    if extra:
        problems.append(
            f"{where}: {path.name} has array(s) {listed(extra)} that are not model inputs ({listed(names)})"
        )
    if problems:
        raise PolicyError(f"{where}: data does not match the model", problems)


def load_labels(
    path: Path, samples: int, where: str, limits: Limits = DEFAULT_LIMITS
) -> np.ndarray:
    check_data_file(path, where, limits)
    try:
        with open_data_file(path, where, limits) as stream:
            if zipfile.is_zipfile(stream):
                raise PolicyError(
                    f"{where}: {path.name} is an .npz archive; labels are one .npy array "
                    "(numpy.save)"
                )
            stream.seek(0)
            labels = np.load(stream, allow_pickle=False)
    except GateError:
        raise
    except Exception as exc:
        raise PolicyError(f"{where}: cannot read {path.name} as .npy: {_why(exc)}") from None
    labels = (
        np.asarray(labels).reshape(-1) if np.ndim(labels) > 1 and labels.shape[-1] == 1 else labels
    )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise PolicyError(
            f"{where}: expected a 1-D integer array of class labels; found {labels.dtype} {list(labels.shape)}"
        )
    if labels.shape[0] != samples:
        raise PolicyError(f"{where}: {labels.shape[0]} labels for {samples} validation samples")
    return labels


def load_text_labels(path: Path, where: str, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """A 1-D .npy of strings, one per text line (task ctc)."""
    check_data_file(path, where, limits)
    try:
        with open_data_file(path, where, limits) as stream:
            labels = np.load(stream, allow_pickle=False)
    except GateError:
        raise
    except Exception as exc:
        raise PolicyError(f"{where}: cannot read {path.name} as .npy: {_why(exc)}") from None
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype.kind != "U":
        found = (
            f"{labels.dtype} {list(labels.shape)}"
            if isinstance(labels, np.ndarray)
            else "an .npz archive"
        )
        raise PolicyError(
            f"{where}: task ctc expects a 1-D .npy of strings (numpy.save(path, "
            f"numpy.array(lines))), one per text line; found {found}"
        )
    return labels


BOX_LABEL_ARRAYS = {"boxes": 2, "classes": 1, "sample": 1}


def load_box_labels(
    path: Path, samples: int, where: str, limits: Limits = DEFAULT_LIMITS
) -> dict[str, np.ndarray]:
    """An .npz of ``boxes`` [M, 4] (x1 y1 x2 y2, input pixels), ``classes`` [M] and
    ``sample`` [M] (the validation sample each box is in): task detection."""
    not_npz = (
        "task detection expects an .npz (numpy.savez) of boxes [M, 4], classes [M] and sample [M]"
    )
    with _npz(path, where, limits, not_npz) as archive:
        missing = [name for name in BOX_LABEL_ARRAYS if name not in archive.files]
        if missing:
            raise PolicyError(
                f"{where}: {path.name} has no {listed(missing)} (has: "
                f"{listed(archive.files, 'nothing')}); detection labels are boxes [M, 4], "
                "classes [M] and sample [M]"
            )
        labels = {name: np.asarray(archive[name]) for name in BOX_LABEL_ARRAYS}
    boxes, classes, sample = labels["boxes"], labels["classes"], labels["sample"]
    count = boxes.shape[0] if boxes.ndim else -1
    if (
        boxes.ndim != 2
        or boxes.shape[1] != 4
        or not np.issubdtype(boxes.dtype, np.number)
        or not np.isfinite(boxes).all()
    ):
        raise PolicyError(
            f"{where}: boxes must be finite numbers [M, 4]; found {boxes.dtype} {list(boxes.shape)}"
        )
    for name, values in (("classes", classes), ("sample", sample)):
        if values.shape != (count,) or not np.issubdtype(values.dtype, np.integer):
            raise PolicyError(
                f"{where}: {name} must be {count} integers, one per box; found {values.dtype} {list(values.shape)}"
            )
    if count and (sample.min() < 0 or sample.max() >= samples):
        raise PolicyError(
            f"{where}: sample holds {int(sample.min())}..{int(sample.max())}; "
            f"data.validation has samples 0..{samples - 1}"
        )
    return labels


def validation_feeds(policy: Policy, model: LoadedModel) -> FeedSet:
    if policy.validation_path is not None:
        return FeedSet(
            load_feeds(policy.validation_path, model, "data.validation", policy.limits),
            "file",
            policy.validation_path,
        )
    return FeedSet(synthesize(model, policy, policy.synthetic_samples, policy.seed), "synthetic")


def calibration_feeds(policy: Policy, model: LoadedModel) -> FeedSet:
    if policy.calibration_path is not None:
        feeds = load_feeds(policy.calibration_path, model, "data.calibration", policy.limits)
        return FeedSet(feeds[: policy.calibration_samples], "file", policy.calibration_path)
    # A different seed from validation, so synthetic calibration never sees the validation inputs.
    return FeedSet(
        synthesize(model, policy, min(policy.calibration_samples, 32), policy.seed + 1), "synthetic"
    )
