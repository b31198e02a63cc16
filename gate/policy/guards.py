"""Checks on untrusted input before anything parses or runs it.

A gate runs on every pull request, often on files a stranger wrote: the model, its external
data, the policy and the data it names. These checks refuse what would read outside the
repository, exhaust the runner, or crash a parser, each with one line naming the problem.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gate.errors import ModelError, PolicyError
from gate.files import not_regular, open_regular

MB = 1_000_000
"""As everywhere in onnx-gate's reports: 10^6 bytes."""
PROTOBUF_LIMIT = 2 << 30
"""protobuf cannot parse one message over 2 GiB: bigger models keep weights as external data."""

# The policy is parsed before its own limits are known: these are fixed.
POLICY_MAX_BYTES = 1 * MB
POLICY_MAX_DEPTH = 64
POLICY_MAX_NODES = 100_000
"""Values in the policy with YAML aliases expanded: an alias bomb is refused, not walked."""

# Domains whose ops ONNX Runtime's CPU build implements; any other needs a custom-op library.
KNOWN_DOMAINS = frozenset(
    {
        "",
        "ai.onnx",
        "ai.onnx.ml",
        "com.microsoft",
        "com.microsoft.nchwc",
        "ai.onnx.preview.training",
    }
)


@dataclass(frozen=True)
class Limits:
    """``limits`` in the policy: what one run may read."""

    model_mb: float = 4096.0
    """The model file plus its external data, and the bytes any one tensor declares."""
    nodes: int = 1_000_000
    """Nodes in the graph, subgraphs included."""
    data_mb: float = 2048.0
    """One .npz or .npy data file, decompressed."""

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Limits:
        defaults = cls()
        return cls(
            model_mb=float(doc.get("model_mb", defaults.model_mb)),
            nodes=int(doc.get("nodes", defaults.nodes)),
            data_mb=float(doc.get("data_mb", defaults.data_mb)),
        )


def _megabytes(size: float) -> str:
    return f"{size / MB:,.1f} MB"


# -- paths -------------------------------------------------------------------


def repository_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` holding ``.git`` (a folder or a worktree file)."""
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _working_project(policy: Path) -> Path | None:
    """The working directory, when it holds ``policy`` and is a project's folder."""
    try:
        cwd = Path.cwd().absolute()
    except OSError:  # the working directory was removed
        return None
    if cwd == Path(cwd.anchor) or cwd == Path.home().absolute() or not policy.is_relative_to(cwd):
        return None
    return cwd


def confinement_roots(policy_path: Path, allowed: Sequence[Path] = ()) -> list[Path]:
    """Where a policy's paths may lead: its repository, plus the folders the person running
    the gate allowed (``--allow-path``, ``ONNX_GATE_ALLOW_PATHS``).

    Outside any repository (a source tarball, a Docker build context without ``.git``)
    the project is the working directory when the policy lies in it, else the policy's
    own folder; never the filesystem's root or the home folder, which hold everything."""
    # The repository is found from the path as named, not as resolved: a policy committed
    # as a symbolic link to another folder must not move the fence to that folder.
    named = policy_path.absolute()
    project = repository_root(named.parent) or _working_project(named)
    roots = [(project or policy_path.resolve().parent).resolve()]
    roots += [Path(path).resolve() for path in allowed]
    return roots


def outside(path: Path, roots: Sequence[Path]) -> bool:
    """True when ``path`` (symlinks followed) lies under none of ``roots``."""
    resolved = path.resolve()
    return not any(resolved.is_relative_to(root) for root in roots)


# -- policy documents --------------------------------------------------------


def check_policy_text(name: str, size: int) -> None:
    if size > POLICY_MAX_BYTES:
        raise PolicyError(
            f"{name}: the policy is {_megabytes(size)}; a policy over "
            f"{_megabytes(POLICY_MAX_BYTES)} is refused"
        )


def check_yaml_tree(name: str, root: Any) -> None:
    """Refuse a composed YAML tree that nests too deep or expands (through aliases) to too
    many values, before anything walks it."""
    import yaml

    def count(node: Any, depth: int, seen: dict[int, int]) -> int:
        if depth > POLICY_MAX_DEPTH:
            raise PolicyError(
                f"{name}:{node.start_mark.line + 1}: the policy nests deeper than "
                f"{POLICY_MAX_DEPTH} levels; refused"
            )
        if id(node) in seen:  # an alias: its values count again wherever it is used
            return seen[id(node)]
        total = 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                total += count(key, depth + 1, seen) + count(value, depth + 1, seen)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += count(item, depth + 1, seen)
                if total > POLICY_MAX_NODES:
                    break
        if total > POLICY_MAX_NODES:
            raise PolicyError(
                f"{name}:{node.start_mark.line + 1}: the policy expands to over "
                f"{POLICY_MAX_NODES:,} values (YAML aliases included); refused"
            )
        seen[id(node)] = total
        return total

    if root is not None:
        count(root, 0, {})


def check_json_depth(name: str, document: Any) -> None:
    """JSON has no aliases, but nesting still bounds how deep a validator recurses."""
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > POLICY_MAX_DEPTH:
            raise PolicyError(
                f"{name}: the policy nests deeper than {POLICY_MAX_DEPTH} levels; refused"
            )
        if isinstance(value, dict):
            stack += [(item, depth + 1) for item in value.values()]
        elif isinstance(value, list):
            stack += [(item, depth + 1) for item in value]


NUMBER_LIMIT = 10**15
"""No setting needs more; a bigger integer overflows float() and numpy's int64."""


def numbers_out_of_range(document: Any) -> list[tuple[tuple[Any, ...], str]]:
    """(location, problem) of every integer beyond ±NUMBER_LIMIT and every NaN or infinity
    (JSON's ``NaN``, YAML's ``.inf``): no setting means either."""
    found: list[tuple[tuple[Any, ...], str]] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(document, ())]
    while stack:
        value, location = stack.pop()
        if isinstance(value, dict):
            stack += [(item, (*location, key)) for key, item in value.items()]
        elif isinstance(value, list):
            stack += [(item, (*location, index)) for index, item in enumerate(value)]
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and abs(value) > NUMBER_LIMIT:
            found.append(
                (location, f"{len(str(abs(value)))}-digit number; numbers stay within ±1e15")
            )
        elif isinstance(value, float) and not math.isfinite(value):
            found.append((location, f"{value} is not a number a setting can take"))
    return sorted(found, key=lambda item: [str(part) for part in item[0]])


# -- model files -------------------------------------------------------------


def _all_tensors(graph: Any) -> Iterator[Any]:
    """Initializers and tensor attributes (Constant values), subgraphs included; ``graph``
    may be a function, which has no initializers."""
    import onnx

    yield from getattr(graph, "initializer", ())
    for sparse in getattr(graph, "sparse_initializer", ()):  # their parts can be external too
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t
            elif attribute.type == onnx.AttributeProto.TENSORS:
                yield from attribute.tensors
            elif attribute.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
            elif attribute.type == onnx.AttributeProto.SPARSE_TENSORS:
                for sparse in attribute.sparse_tensors:
                    yield from (sparse.values, sparse.indices)
            elif attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _all_tensors(subgraph)


def _all_nodes(graph: Any) -> Iterator[Any]:
    import onnx

    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _all_nodes(subgraph)


def _expanded_nodes(proto: Any, label: str, limit: int) -> int:
    """Nodes once model-local functions are inlined (each call counts its body, nested
    calls included): a tiny file of functions calling functions expands exponentially."""
    Key = tuple[str, str, str]
    functions: dict[Key, Any] = {
        (f.domain, f.name, getattr(f, "overload", "")): f for f in proto.functions
    }
    sizes: dict[Key, int] = {}
    visiting: set[Key] = set()

    def size(nodes: Iterator[Any]) -> int:
        total = 0
        for node in nodes:
            key = (node.domain, node.op_type, getattr(node, "overload", ""))
            total += function_size(key) if key in functions else 1  # a call is its body
            if total > limit:
                return total  # enough to refuse; no need to finish an exponential count
        return total

    def function_size(key: Key) -> int:
        if key not in sizes:
            if key in visiting:
                raise ModelError(f"model {label}: function {key[0]}:{key[1]} calls itself")
            visiting.add(key)
            sizes[key] = size(_all_nodes(functions[key]))
            visiting.discard(key)
        return sizes[key]

    try:
        return size(_all_nodes(proto.graph))
    except RecursionError:
        raise ModelError(f"model {label}: its functions nest too deep to count") from None


def _declared_bytes(tensor: Any) -> int | None:
    import onnx

    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # an unknown or string type: nothing to compare against
        return None
    return math.prod(int(d) for d in tensor.dims) * itemsize


def _external_location(tensor: Any) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def check_model_file(path: Path, label: str, limits: Limits) -> Any:
    """Parse an ONNX file without its external data and refuse what must not be loaded.
    Returns the parsed ``ModelProto`` (weights kept outside it stay on disk)."""
    if path.is_dir():
        raise ModelError(f"model {label} is a folder, not an ONNX file")
    refuse = lambda why: ModelError(f"model {label} {why}")  # noqa: E731
    try:
        with open_regular(path, int(min(limits.model_mb * MB, PROTOBUF_LIMIT)), refuse) as stream:
            return _check_model_stream(stream, path, label, limits)
    except FileNotFoundError:
        raise ModelError(f"model {label} does not exist") from None


def _check_model_stream(stream: Any, path: Path, label: str, limits: Limits) -> Any:
    import onnx
    from onnx.external_data_helper import uses_external_data

    size = stream.size
    if size == 0:
        raise ModelError(f"model {label} is empty (0 bytes)")
    if size > limits.model_mb * MB:
        raise ModelError(
            f"model {label} is {_megabytes(size)}, over limits.model_mb ({limits.model_mb:g})"
        )
    if size > PROTOBUF_LIMIT:
        raise ModelError(
            f"model {label} is {_megabytes(size)} in one file, over protobuf's 2 GB limit: "
            "save it with its weights as external data (onnx.save_model(..., "
            "save_as_external_data=True))"
        )
    try:
        proto = onnx.load(stream, load_external_data=False)
    except Exception as exc:
        raise ModelError(
            f"model {label} is not a valid ONNX model: protobuf cannot parse it ({type(exc).__name__})"
        ) from None

    nodes = _expanded_nodes(proto, label, limits.nodes)
    if nodes > limits.nodes:
        raise ModelError(
            f"model {label} has more than limits.nodes ({limits.nodes:,}) nodes, with its "
            "subgraphs and function calls expanded"
        )

    folder = path.resolve().parent
    total = size
    for tensor in (
        *_all_tensors(proto.graph),
        *(t for function in proto.functions for t in _all_tensors(function)),
    ):
        declared = _declared_bytes(tensor)
        if declared is not None and declared > limits.model_mb * MB:
            raise ModelError(
                f"model {label}: tensor '{tensor.name}' declares {_megabytes(declared)} of data, "
                f"over limits.model_mb ({limits.model_mb:g})"
            )
        if not uses_external_data(tensor):
            if (
                tensor.HasField("raw_data")
                and declared is not None
                and declared != len(tensor.raw_data)
            ):
                raise ModelError(
                    f"model {label}: tensor '{tensor.name}' declares {declared:,} bytes but "
                    f"holds {len(tensor.raw_data):,}"
                )
            continue
        entry = _external_location(tensor)
        location = entry.get("location", "")
        # Every range read counts: many tensors naming one file would otherwise be counted once.
        total += _check_external(label, tensor.name, location, entry, folder, declared)
    if total > limits.model_mb * MB:
        raise ModelError(
            f"model {label} with its external data is {_megabytes(total)}, over "
            f"limits.model_mb ({limits.model_mb:g})"
        )
    return proto


def _check_external(
    label: str,
    tensor: str,
    location: str,
    entry: dict[str, str],
    folder: Path,
    declared: int | None,
) -> int:
    """Refuse external data that would be read from outside the model's folder, or from
    a hidden file in it (``.git/config`` holds the checkout's credentials, and a model's
    weights are copied into the artifact); return the bytes it reads."""
    where = f"model {label}: tensor '{tensor}' keeps its data in '{location}'"
    if not location:
        raise ModelError(f"model {label}: tensor '{tensor}' has external data without a location")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
        raise ModelError(f"{where}, an absolute path; refused (it must be beside the model)")
    candidate = folder / location
    if ".." in Path(location).parts:
        raise ModelError(f"{where}, outside the model's folder; refused")
    if any(part.startswith(".") for part in Path(location).parts):
        raise ModelError(f"{where}, a hidden file or folder (.git, say); refused")
    if any(
        part.is_symlink()
        for part in (candidate, *candidate.parents)
        if part != folder and part.is_relative_to(folder)
    ):
        raise ModelError(f"{where}, a symbolic link; refused")
    if not candidate.resolve().is_relative_to(folder):
        raise ModelError(f"{where}, outside the model's folder; refused")
    why = not_regular(candidate)
    if why:  # a FIFO would block ONNX Runtime's reader for ever
        raise ModelError(f"{where}, which {why}; refused")
    if not candidate.is_file():
        raise ModelError(f"{where}, which does not exist")
    available = candidate.stat().st_size
    try:
        offset = int(entry.get("offset", 0) or 0)
        given = int(entry["length"]) if entry.get("length") else None
    except ValueError:
        raise ModelError(f"{where}: its offset or length is not a number") from None
    if given is not None and declared is not None and given != declared:
        raise ModelError(f"{where}: {given:,} bytes for a tensor of {declared:,}")
    length = given if given is not None else declared if declared is not None else 0
    if offset < 0 or length < 0 or offset + length > available:
        raise ModelError(
            f"{where}: bytes {offset:,}-{offset + length:,} asked for, the file has {available:,}"
        )
    return length


def unknown_ops(proto: Any) -> list[str]:
    """``domain:op`` of every op from a domain ONNX Runtime does not implement, with counts."""
    found: dict[str, int] = {}
    for node in _all_nodes(proto.graph):
        if node.domain not in KNOWN_DOMAINS:
            key = f"{node.domain}:{node.op_type}"
            found[key] = found.get(key, 0) + 1
    local = {(function.domain, function.name) for function in proto.functions}
    return [
        f"{key} ({count} node{'s' if count > 1 else ''})"
        for key, count in sorted(found.items())
        if tuple(key.split(":", 1)) not in local
    ]


# -- data files --------------------------------------------------------------


def _npy_declared_bytes(stream: Any) -> int:
    """What an .npy header says its array holds: numpy allocates that much before reading."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(stream)
    except ValueError:
        return 0  # not .npy; numpy's own reader names the problem
    header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, _, dtype = header(stream)
    return math.prod(shape) * dtype.itemsize


def npz_array_shapes(
    path: Path, names: Sequence[str] | None = None, limit: int = PROTOBUF_LIMIT
) -> dict[str, tuple[int, ...]]:
    """Each array's shape in an .npz (only those in ``names`` when given), read from the .npy
    headers alone (nothing is loaded). Called after ``check_data_file``; anything unreadable
    is left to numpy's reader to name."""
    from numpy.lib import format as npy

    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with (
            open_regular(path, limit, OSError) as stream,
            zipfile.ZipFile(stream) as archive,
        ):
            for member in archive.infolist():
                if not member.filename.endswith(".npy"):
                    continue
                if names is not None and member.filename[: -len(".npy")] not in names:
                    continue
                with archive.open(member) as stream:
                    version = npy.read_magic(stream)
                    header = (
                        npy.read_array_header_1_0
                        if version == (1, 0)
                        else npy.read_array_header_2_0
                    )
                    shapes[member.filename[: -len(".npy")]] = tuple(header(stream)[0])
    except Exception:
        return shapes
    return shapes


def open_data_file(path: Path, where: str, limits: Limits) -> Any:
    """A data file opened as a regular file, read no further than ``limits.data_mb``."""
    refuse = lambda why: PolicyError(f"{where}: {path.name} {why}")  # noqa: E731
    return open_regular(path, int(limits.data_mb * MB), refuse)


def check_data_file(path: Path, where: str, limits: Limits) -> None:
    """Refuse a data file that would decompress past ``limits.data_mb`` before numpy reads it
    (an .npz member's size is in its zip header; a compressed one can claim far less on disk)."""
    if path.is_dir():
        raise PolicyError(f"{where}: {path.name} is a folder, not a data file")
    if not path.exists():
        return  # the caller names a missing file
    cap = limits.data_mb * MB
    with open_data_file(path, where, limits) as stream:
        seen = stream.status
        key = (seen.st_dev, seen.st_ino, seen.st_size, seen.st_mtime_ns, cap)
        if key in _CHECKED_DATA:  # read twice in a run (shapes, then data): check once
            return
        size = stream.size
        if size == 0:
            raise PolicyError(f"{where}: {path.name} is empty (0 bytes)")
        try:
            if zipfile.is_zipfile(stream):
                stream.seek(0)
                with zipfile.ZipFile(stream) as archive:
                    total = 0
                    for member in archive.infolist():
                        with archive.open(member) as inner:
                            total += max(member.file_size, _npy_declared_bytes(inner))
            else:
                stream.seek(0)
                total = max(size, _npy_declared_bytes(stream))
        except Exception as exc:  # a broken, encrypted or exotic zip: whatever zipfile raises
            raise PolicyError(f"{where}: cannot read {path.name}: {exc}") from None
    if total > cap:
        raise PolicyError(
            f"{where}: {path.name} holds {_megabytes(total)} of arrays, over "
            f"limits.data_mb ({limits.data_mb:g})"
        )
    _CHECKED_DATA.add(key)


_CHECKED_DATA: set[tuple[int, ...] | tuple[float, ...]] = set()
"""Data files that passed ``check_data_file``, by device, inode, size, mtime and limit."""


def cwd_relative(path: Path) -> str:
    """A path as a report shows it: relative to the working directory (a CI job's checkout),
    else to the repository holding it; the runner's own layout stays out of artifacts."""
    try:
        resolved = path.resolve()
    except (OSError, ValueError):
        return str(path)
    for base in (Path.cwd().resolve(), repository_root(resolved.parent)):
        if base is not None and resolved.is_relative_to(base):
            return str(resolved.relative_to(base))
    return str(path)
