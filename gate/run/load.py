"""Step 1: turn the policy's model into a checked ONNX file with fixed input shapes."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gate.errors import ModelError, PolicyError, listed
from gate.files import not_regular, open_regular, temp_beside
from gate.host.manager import Host, call_plugin
from gate.policy.guards import (
    MB,
    check_data_file,
    check_model_file,
    npz_array_shapes,
    unknown_ops,
)
from gate.policy.loading import Policy


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    dims: list[int | str | None]
    """As declared in the model; strings are symbolic dimensions."""
    shape: list[int] = field(default_factory=list)
    """Fixed shape the gate feeds (inputs) or that ONNX Runtime returned (outputs)."""
    shaped: bool = True
    """Whether the model declares a shape at all (an output may declare none)."""
    shape_from: str | None = None
    """Where ``shape`` came from: the model, inputs.<name>.shape, a data file, a default of 1
    for dynamic dimensions, or (outputs) what ONNX Runtime returned."""

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "name": self.name,
            "dtype": str(self.dtype),
            "declared_shape": self.dims,
            "shape": self.shape or None,
        }
        if self.shape_from is not None:
            described["shape_from"] = self.shape_from
        return described


@dataclass
class LoadedModel:
    path: Path
    sha256: str
    size_bytes: int
    opsets: dict[str, int]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    exporter: str
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the gate chose for the user that is not a problem (shapes taken from the data)."""
    untensored_outputs: list[str] = field(default_factory=list)
    """Outputs that are not tensors (a ZipMap's sequence of maps): not judged."""
    metadata: dict[str, str] = field(default_factory=dict)
    """The model's ``metadata_props`` (an Ultralytics export's ``task`` and ``names``)."""

    @property
    def input_shapes(self) -> dict[str, list[int]]:
        return {spec.name: spec.shape for spec in self.inputs}


def file_sha256(path: Path) -> str:
    """The file's digest; ``OSError`` for anything but a regular file (a FIFO, /proc)."""
    digest = hashlib.sha256()
    with open_regular(path, 1 << 62, OSError) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def quantised_operators(path: Path | None) -> int:
    """How many of the model's nodes compute on quantised data (gate.graph)."""
    import onnx

    from gate.graph import quantised_compute_nodes

    if path is None:
        return 0
    return quantised_compute_nodes(onnx.load(str(path), load_external_data=False).graph)


def model_size_bytes(path: Path) -> int:
    """The model file plus the external-data files it references."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    total = path.stat().st_size
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return total
    seen: set[str] = set()
    for tensor in proto.graph.initializer:
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in seen:
                    seen.add(entry.value)
                    extra = path.parent / entry.value
                    if extra.is_file():
                        total += extra.stat().st_size
    return total


def copy_model(source: Path, destination: Path) -> None:
    """Copy an ONNX model; one with external data is re-saved with it alongside. The model
    file appears under its name only once complete (temp file and rename)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    data = destination.with_name(f"{destination.name}.data")
    temp, data_temp = temp_beside(destination), None
    try:
        proto = onnx.load(str(source), load_external_data=False)
        if any(uses_external_data(t) for t in proto.graph.initializer):
            full = onnx.load(str(source))
            data_temp = temp_beside(data)
            _move_weights_out(full, data_temp, data.name)
            os.replace(data_temp, data)  # the data first: the model file names it
            temp.write_bytes(full.SerializeToString())
        else:
            shutil.copyfile(source, temp)
        os.replace(temp, destination)
    except BaseException:
        temp.unlink(missing_ok=True)
        if data_temp is not None:
            data_temp.unlink(missing_ok=True)
        raise


def _move_weights_out(model: Any, path: Path, location: str) -> None:
    """Initializers of 1 KiB or more into one data file, as onnx.save_model(...,
    save_as_external_data=True) would - whose check for an existing data file looks in
    the working directory, and so fails a run started beside the user's own model."""
    from onnx.external_data_helper import set_external_data

    offset = 0
    with path.open("wb") as stream:
        for tensor in model.graph.initializer:
            if not tensor.HasField("raw_data") or len(tensor.raw_data) < 1024:
                continue
            stream.write(tensor.raw_data)
            set_external_data(tensor, location=location, offset=offset, length=len(tensor.raw_data))
            offset += len(tensor.raw_data)
            tensor.ClearField("raw_data")


_KINDS = {
    "sequence_type": "a sequence",
    "map_type": "a map",
    "optional_type": "an optional",
    "sparse_tensor_type": "a sparse tensor",
}


def _tensor_specs(
    values: Any, exclude: set[str], skipped: list[str] | None = None
) -> list[TensorSpec]:
    """The tensors among ``values``; other kinds are an error, or (outputs, given
    ``skipped``) left out and named there."""
    import onnx

    specs = []
    for value in values:
        if value.name in exclude:
            continue
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type" and skipped is not None:
            skipped.append(f"'{value.name}' ({_KINDS.get(str(kind), kind)})")
            continue
        if kind != "tensor_type":
            raise ModelError(
                f"input '{value.name}' is {_KINDS.get(str(kind), kind)}; the gate feeds "
                "tensors only"
            )
        tensor = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        dims: list[int | str | None] = []
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_value"):  # some exporters (Paddle) write -1 for "dynamic"
                dims.append(None)
            elif dim.HasField("dim_param") and dim.dim_param not in UNNAMED_DIMS:
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        specs.append(TensorSpec(value.name, dtype, dims, shaped=tensor.HasField("shape")))
    return specs


def with_returned_shapes(
    outputs: list[TensorSpec], returned: Mapping[str, np.ndarray]
) -> tuple[list[TensorSpec], list[str]]:
    """The outputs as ONNX Runtime returned them for one sample, and a warning for each
    whose declared shape does not fit: published models often declare stale shapes
    (a CRNN declaring [1, seqlen] that returns [32, 1, 8210]), and what runs is the truth."""
    specs, warnings = [], []
    for spec in outputs:
        value = returned.get(spec.name)
        if value is None:
            specs.append(spec)
            continue
        shape = [int(n) for n in np.shape(value)]
        declared = [d if isinstance(d, int) else None for d in spec.dims]
        if spec.shaped and (
            len(declared) != len(shape)
            or any(d is not None and d != n for d, n in zip(declared, shape, strict=False))
        ):
            warnings.append(
                f"output '{spec.name}' is declared {_dims_text(spec.dims)} but ONNX Runtime "
                f"returns {shape}; the gate judges what it returns"
            )
        specs.append(
            TensorSpec(spec.name, spec.dtype, spec.dims, shape, spec.shaped, "onnxruntime")
        )
    return specs, warnings


def _dims_text(dims: list[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _data_shapes(policy: Policy, inputs: list[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Per input, the array shape a data file holds and which file: validation first, as
    it is the data every candidate is judged on. Headers only; the full checks come later."""
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    for where, path in (
        ("data.calibration", policy.calibration_path),
        ("data.validation", policy.validation_path),
    ):
        if path is None or not path.is_file():
            continue  # a missing file is named when the data is read
        try:
            check_data_file(path, where, policy.limits)
        except PolicyError:
            continue  # named, in its place, when the data is read
        for name, shape in npz_array_shapes(path, inputs, int(policy.limits.data_mb * MB)).items():
            shapes[name] = (where, shape)
    return shapes


def _shape_from_data(
    dims: list[int | str | None], array_shape: tuple[int, ...]
) -> tuple[list[int], bool] | None:
    """The per-sample shape an array of samples gives a declared input, and whether it was
    read as samples stacked along a leading axis of 1, or None when it does not fit:
    ``[samples, *shape]``, else samples stacked along that axis (as ``load_feeds`` reads)."""
    if len(array_shape) == len(dims) + 1:
        shape, stacked = list(array_shape[1:]), False
    elif len(array_shape) == len(dims) and dims and (dims[0] == 1 or not isinstance(dims[0], int)):
        shape, stacked = [1, *array_shape[1:]], True
    else:
        return None
    fits = all(not isinstance(d, int) or d == n for d, n in zip(dims, shape, strict=True))
    return (shape, stacked) if fits and all(n > 0 for n in shape) else None


UNNAMED_DIMS = {"", "?"}
"""Symbolic names that name nothing (Paddle writes "?"): never shared between inputs."""


def _names_a_batch(dim: int | str | None) -> bool:
    return dim == 1 or (isinstance(dim, str) and ("batch" in dim.lower() or dim in ("N", "n")))


def _shared_dimension_conflicts(policy: Policy, inputs: list[TensorSpec]) -> list[str]:
    """Inputs that share a symbolic dimension (a batch, a sequence length) must agree on
    its size: sized one by one from a policy and data files, they can come apart."""
    seen: dict[str, tuple[int, TensorSpec]] = {}
    problems = []
    for spec in inputs:
        for dim, size in zip(spec.dims, spec.shape, strict=True):
            if not isinstance(dim, str) or dim in UNNAMED_DIMS:
                continue
            if dim not in seen:
                seen[dim] = (size, spec)
                continue
            first_size, first = seen[dim]
            if first_size != size:
                problems.append(
                    policy.problem(
                        ("inputs", spec.name, "shape"),
                        f"dimension '{dim}' is {size} for input '{spec.name}' (from "
                        f"{spec.shape_from}) but {first_size} for input '{first.name}' (from "
                        f"{first.shape_from}); the model shares it between them",
                    )
                )
                seen[dim] = (size, spec)  # one line per clash, not one per later input
    return problems


def _fix_shapes(
    policy: Policy,
    declared: list[TensorSpec],
    warnings: list[str],
    notes: list[str],
    data_shapes: dict[str, tuple[str, tuple[int, ...]]],
) -> list[TensorSpec]:
    names = [spec.name for spec in declared]
    problems = [
        policy.problem(
            ("inputs", name), f"the model has no input '{name}' (inputs: {listed(names)})"
        )
        for name in policy.inputs
        if name not in names
    ]
    fixed = []
    for spec in declared:
        wanted = policy.inputs.get(spec.name)
        dynamic = ["?" if d is None else str(d) for d in spec.dims if not isinstance(d, int)]
        if wanted is not None and wanted.shape is not None:
            if len(wanted.shape) != len(spec.dims):
                problems.append(
                    policy.problem(
                        ("inputs", spec.name, "shape"),
                        f"has {len(wanted.shape)} dimensions; the model's input has {len(spec.dims)} {spec.dims}",
                    )
                )
                continue
            for axis, (want, have) in enumerate(zip(wanted.shape, spec.dims, strict=True)):
                if isinstance(have, int) and have != want:
                    problems.append(
                        policy.problem(
                            ("inputs", spec.name, "shape", axis),
                            f"is {want} but the model fixes this dimension to {have}",
                        )
                    )
            shape, source = list(wanted.shape), f"inputs.{spec.name}.shape"
        elif not dynamic:
            shape, source = [int(d) for d in spec.dims if isinstance(d, int)], "model"
        else:
            where, array_shape = data_shapes.get(spec.name, (None, ()))
            from_data = _shape_from_data(spec.dims, array_shape) if where else None
            if from_data is not None:
                # The data shows the sizes the model runs at; a default of 1 would refuse it.
                (shape, stacked), source = from_data, str(where)
                said = (
                    f"input '{spec.name}': dynamic dimension(s) {listed(dynamic)} taken from "
                    f"{where} (shape {shape}; set inputs.{spec.name}.shape to choose another)"
                )
                if stacked and not _names_a_batch(spec.dims[0]):
                    # [N, F] for [T, F] may be N samples of T=1 or one sample of T=N;
                    # along an axis named as a batch, stacking is the documented layout.
                    warnings.append(
                        f"{said}: its array {list(array_shape)} was read as "
                        f"{array_shape[0]} samples with {spec.dims[0]} = 1"
                    )
                else:
                    notes.append(said)
            else:
                shape, source = [d if isinstance(d, int) else 1 for d in spec.dims], "default"
                why = (
                    f"; {where} holds shape {list(array_shape)}, which does not fit {_dims_text(spec.dims)}"
                    if where
                    else ""
                )
                warnings.append(
                    f"input '{spec.name}' has dynamic dimension(s) {listed(dynamic)}; measured with "
                    f"shape {shape}{why} (set inputs.{spec.name}.shape to choose)"
                )
        fixed.append(TensorSpec(spec.name, spec.dtype, spec.dims, shape, shape_from=source))
    problems.extend(_shared_dimension_conflicts(policy, fixed))
    if problems:
        raise PolicyError(f"{policy.path.name}: inputs do not match the model", problems)
    return fixed


def load_model(policy: Policy, host: Host, work_dir: Path) -> LoadedModel:
    """Export (when needed), check and describe the policy's model."""
    import onnx

    if policy.exporter is not None:
        exporter = host.get("exporter", policy.exporter, "model.exporter")
    else:
        suffix = policy.model_path.suffix.lower()
        matches = [e for e in host.records["exporter"].values() if suffix in e.suffixes]
        if not matches:
            raise PolicyError(
                policy.problem(
                    ("model", "path"), f"no exporter handles '{suffix}' files; set model.exporter"
                )
            )
        exporter = matches[0]
    if exporter.runs_code and not policy.trusted:
        raise PolicyError(
            policy.problem(
                ("model", "path"),
                f"loading {policy.model_path.name} with the '{exporter.name}' exporter runs code "
                "stored in the file; set model.trusted: true only for a file you or your own "
                "pipeline made",
            )
        )
    why = not_regular(policy.model_path)
    if why:  # exporters read the file themselves: a FIFO would block them for ever
        raise PolicyError(
            policy.problem(("model", "path"), f"{policy.model_path.name} {why}; refused")
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    path = Path(
        call_plugin(
            exporter,
            "export",
            exporter.export,
            policy.model_path,
            work_dir,
            policy.exporter_options,
        )
    )

    label = policy.model_path.name if path == policy.model_path else f"{path.name} (exported)"
    proto = check_model_file(path, label, policy.limits)
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"model {policy.model_path.name} is not a valid ONNX model: {first_line}"
        ) from exc

    initializers = {tensor.name for tensor in proto.graph.initializer}
    warnings: list[str] = []
    notes: list[str] = []
    declared = _tensor_specs(proto.graph.input, initializers)
    if not declared:
        raise ModelError(
            f"model {policy.model_path.name} has no inputs: there is nothing to feed or time"
        )
    strings = [spec.name for spec in declared if spec.dtype == np.dtype(object)]
    if strings:
        raise ModelError(
            f"model {policy.model_path.name} takes string input(s) {listed(strings)}: the "
            "gate feeds and times numeric tensors only"
        )
    inputs = _fix_shapes(
        policy, declared, warnings, notes, _data_shapes(policy, [spec.name for spec in declared])
    )
    for spec in inputs:  # one sample is fed, synthesised and copied many times over
        per_sample = math.prod(spec.shape) * spec.dtype.itemsize
        if per_sample > policy.limits.data_mb * MB:
            raise ModelError(
                f"model {policy.model_path.name}: input '{spec.name}' of shape {spec.shape} "
                f"takes {per_sample / MB:,.1f} MB per sample, over limits.data_mb "
                f"({policy.limits.data_mb:g})"
            )
    skipped: list[str] = []
    outputs = _tensor_specs(proto.graph.output, set(), skipped)
    if not outputs:
        raise ModelError(
            f"model {policy.model_path.name} has no "
            + (f"tensor outputs (only {listed(skipped)})" if skipped else "outputs")
            + ": there is nothing to validate"
        )
    if skipped:
        notes.append(
            f"output(s) {listed(skipped)} are not tensors and are not judged; "
            f"candidates are judged on {listed(spec.name for spec in outputs)}"
        )
    return LoadedModel(
        path=path,
        sha256=file_sha256(path),
        size_bytes=model_size_bytes(path),
        opsets={entry.domain or "ai.onnx": entry.version for entry in proto.opset_import},
        inputs=inputs,
        outputs=outputs,
        exporter=exporter.name,
        warnings=warnings,
        notes=notes,
        untensored_outputs=[
            value.name
            for value in proto.graph.output
            if value.type.WhichOneof("value") != "tensor_type"
        ],
        metadata={entry.key: entry.value for entry in proto.metadata_props},
    )


def cannot_run_message(model_path: Path, detail: str) -> str:
    """Why the original cannot run, naming ops no kernel implements when there are some."""
    import onnx

    try:
        unknown = unknown_ops(onnx.load(str(model_path), load_external_data=False))
    except Exception:  # it parsed once already; this is only a better message
        unknown = []
    if unknown:
        detail = (
            f"it uses ops from domains ONNX Runtime has no kernels for: {listed(unknown)} "
            "(they need a custom-op library)"
        )
    return f"ONNX Runtime cannot run the original model: {detail}"
