"""Read a policy file (JSON or YAML), validate it, and turn it into typed settings.

Schema problems come back as one line each, ``FILE:LINE: LOCATION: MESSAGE``,
so a user (or an editor, or a CI annotation) can jump to the place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from gate.errors import PolicyError, listed
from gate.files import LimitExceeded, open_regular, read_regular
from gate.policy.guards import (
    MB,
    POLICY_MAX_BYTES,
    Limits,
    check_json_depth,
    check_policy_text,
    check_yaml_tree,
    confinement_roots,
    numbers_out_of_range,
    outside,
)

POLICY_SCHEMA = "policy.schema.json"
REPORT_SCHEMA = "report.schema.json"
GRAPH_LEVELS = ("disabled", "basic", "extended", "layout", "all")
DEFAULT_GRAPH_PLUGIN = "ort"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A JSON schema shipped in the package (``gate.schemas``)."""
    return json.loads(files("gate.schemas").joinpath(name).read_text(encoding="utf-8"))


def format_location(path: Iterable[Any]) -> str:
    """``("budgets", 1, "max")`` -> ``budgets[1].max``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map each location in a YAML/JSON document to its 1-based line."""
    import yaml

    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, key.value)
                walk(value, child)
                lines[child] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    try:
        root = yaml.compose(text, Loader=_yaml_loader())
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


@dataclass(frozen=True)
class Budget:
    metric: str
    op: str  # "<=" for max, ">=" for min
    threshold: float
    level: str
    location: str
    aggregation: str = "interval"
    line: int | None = None
    """The policy-file line that sets it (None for the gate's default accuracy budget)."""

    def holds(self, actual: float) -> bool:
        return actual <= self.threshold if self.op == "<=" else actual >= self.threshold


@dataclass(frozen=True)
class Waiver:
    """An accepted budget failure: listed and counted in every report, never hidden."""

    budget: str
    """A metric (every budget on it) or one budget by position, ``budgets[2]``."""
    reason: str
    owner: str
    expires: date
    """The last day it applies (UTC)."""
    model: str | None = None
    line: int | None = None

    def expired(self, today: date) -> bool:
        return today > self.expires

    def covers(self, budget: Budget, model: str) -> bool:
        if self.model is not None and self.model != model:
            return False
        return self.budget in (budget.metric, budget.location)

    def to_json(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "model": self.model,
            "reason": self.reason,
            "owner": self.owner,
            "expires": self.expires.isoformat(),
            "line": self.line,
        }


@dataclass(frozen=True)
class Regression:
    """How far a metric of the chosen model may move against a base report (``compare``)."""

    metric: str
    direction: str
    """``drop`` (higher is better) or ``rise`` (lower is better)."""
    fraction: float
    level: str = "error"

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, f"max_{self.direction}": self.fraction, "level": self.level}


DEFAULT_REGRESSIONS = (
    Regression("speedup", "drop", 0.05),
    # Labelled accuracy only: agreement metrics compare each run with its own original,
    # so a pull request that ships a quantised model where main shipped the original
    # would always "lose" agreement.
    Regression("accuracy", "drop", 0.0),
    Regression("latency_ms.p50", "rise", 0.10, "warn"),
)


@dataclass(frozen=True)
class Recipe:
    """One named way to build a candidate: an optional graph rewrite (e.g. transformer
    fusion), an optional quantiser, then the session's graph optimisation."""

    name: str
    graph: dict[str, Any]
    quantize: dict[str, Any] | None = None
    location: str = ""
    rewrite: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        described = {
            "graph": dict(self.graph),
            "quantize": dict(self.quantize) if self.quantize else None,
        }
        if self.rewrite:
            described["rewrite"] = dict(self.rewrite)
        return described

    def to_json(self) -> dict[str, Any]:
        """The recipe as a policy would list it (what a build child is handed)."""
        steps = {key: value for key, value in self.describe().items() if value is not None}
        return {"name": self.name, **steps}

    @classmethod
    def from_json(cls, item: Mapping[str, Any], location: str = "") -> Recipe:
        graph = {"plugin": DEFAULT_GRAPH_PLUGIN, **(item.get("graph") or {})}
        if graph["plugin"] == DEFAULT_GRAPH_PLUGIN:
            graph.setdefault("level", "all")
        return cls(item["name"], graph, item.get("quantize"), location, item.get("rewrite"))


@dataclass(frozen=True)
class InputSpec:
    shape: list[int] | None = None
    value_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class MeasureSettings:
    warmup_runs: int = 10
    min_runs: int = 100
    max_runs: int = 20000
    max_seconds: float | None = None
    """Cap per block; None: 4 s, or longer for slow models (see gate.run.measure.block_cap)."""
    min_seconds: float = 0.5
    confidence: float = 0.95
    on_inconclusive: str = "inconclusive"
    memory: bool = True
    batch: int | None = None
    burst: int = 1
    session_noise: float = 0.02
    """Timed runs per turn; 0 picks enough to fill about 0.5 ms (see gate.run.measure.auto_burst)."""


@dataclass(frozen=True)
class SearchSettings:
    """Limits of the search over candidates (``candidates: auto`` or a list)."""

    max_trials: int = 24
    """Most candidates built, fallbacks included."""
    max_seconds: float = 900.0
    """No new candidate starts after this many seconds of search."""
    fallback: bool = True
    """Retry a quantised candidate that misses an accuracy budget with its worst nodes excluded."""
    max_fallbacks: int = 3
    """Most fallback retries per rejected candidate."""
    exclude: tuple[str, ...] = ()
    """Plugin record names (quantisers, graph optimisers) whose proposals are not tried."""


@dataclass(frozen=True)
class BuildSettings:
    isolate: bool = True
    timeout_s: float = 600.0
    memory_mb: int | None = None


@dataclass
class Policy:
    path: Path
    raw: dict[str, Any]
    name: str
    model_path: Path
    exporter: str | None
    exporter_options: dict[str, Any]
    inputs: dict[str, InputSpec]
    calibration_path: Path | None
    validation_path: Path | None
    labels_path: Path | None
    synthetic_samples: int
    calibration_samples: int
    seed: int
    provider: str
    provider_options: dict[str, Any]
    threads: int | None
    usd_per_hour: float | None
    baseline_graph: dict[str, Any]
    recipes: list[Recipe] | None
    budgets: list[Budget]
    validation_output: str | None
    validators: list[str] | None
    measure: MeasureSettings
    min_gain: float
    build: BuildSettings = field(default_factory=BuildSettings)
    limits: Limits = field(default_factory=Limits)
    search: SearchSettings = field(default_factory=SearchSettings)
    fallback: bool = False
    """target.fallback: CPU may stand in for a provider that is missing or not used."""
    trusted: bool = False
    """model.trusted: the model file may be loaded by an exporter that runs code from it."""
    waivers: list[Waiver] = field(default_factory=list)
    in_suite: bool = False
    """True for each model of a ``models:`` policy."""
    model_index: int | None = None
    """Its position under ``models:``, for locations in messages."""
    overridden: tuple[str, ...] = ()
    """The keys its ``models[i]`` entry sets for it (inputs, data, budgets)."""
    regressions: tuple[Regression, ...] = DEFAULT_REGRESSIONS
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)
    final_contenders: int = 3
    """selection.final: candidates timed head to head against the leader before choosing."""
    task: str = "auto"
    """validation.task: what the outputs mean (see gate.run.task)."""
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """validation.<task> for each task the policy gives options for."""
    validation_outputs: list[str] | None = None
    charset_path: Path | None = None
    """validation.ctc.charset, resolved against the policy's folder."""

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def line_of(self, location: tuple[Any, ...]) -> int | None:
        """The policy-file line of a location, walking up to the nearest known one."""
        while True:
            if location in self.lines:
                return self.lines[location]
            if not location:
                return None
            location = location[:-1]

    def problem(self, location: tuple[Any, ...], message: str) -> str:
        line = self.line_of(location)
        where = f"{self.path.name}:{line}" if line else self.path.name
        return f"{where}: {format_location(self.written_at(location))}: {message}"

    def written_at(self, location: tuple[Any, ...]) -> tuple[Any, ...]:
        """Where a location of this model's settings is written in the policy file:
        ``model.path`` of the second model of a ``models:`` policy is ``models[1].path``."""
        if self.model_index is None or not location:
            return location
        if location[0] == "model":
            return ("models", self.model_index, *location[1:])
        if location[0] in self.overridden:
            return ("models", self.model_index, *location)
        return location


@cache
def _yaml_loader() -> type:
    """A safe loader that reads scalars as YAML 1.2 (and JSON) do.

    PyYAML follows YAML 1.1, where ``off``/``on``/``yes``/``no`` are booleans
    (so ``level: off`` would be ``False``) and ``1e-3`` is a string.
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    # YAML 1.2 has no timestamps either: a waiver's expires: 2027-01-31 stays a string.
    dropped = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
    resolvers = {
        key: [(tag, regexp) for tag, regexp in entries if tag not in dropped]
        for key, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.yaml_implicit_resolvers = resolvers
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list("tTfF"),
    )
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def _yaml_load(name: str, text: str) -> Any:
    """Safe YAML (no tags that build objects), refused before construction when it nests
    too deep, expands through aliases to too much, or repeats a key in one mapping."""

    loader = _yaml_loader()(text)
    try:
        root = loader.get_single_node()
        check_yaml_tree(name, root)
        _refuse_duplicate_yaml_keys(name, root)
        return None if root is None else loader.construct_document(root)
    finally:
        loader.dispose()


def _refuse_duplicate_yaml_keys(name: str, root: Any) -> None:
    import yaml

    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[Any] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in keys:
                        raise PolicyError(
                            f"{name}:{key.start_mark.line + 1}: key '{key.value}' appears twice "
                            "in one mapping"
                        )
                    keys.add(key.value)
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def _parse(path: Path) -> tuple[Any, str]:
    try:
        if path.is_dir():
            raise PolicyError(f"the policy {path} is a folder, not a file")
        shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        refuse = lambda why: PolicyError(f"the policy {shown} {why}")  # noqa: E731
        with open_regular(path, POLICY_MAX_BYTES, refuse) as reader:
            check_policy_text(path.name, reader.size)
            try:
                text = reader.read().decode("utf-8")
            except LimitExceeded:  # stat said less: /dev/zero-like, or growing as it is read
                raise PolicyError(
                    f"{path.name}: the policy reads on past {POLICY_MAX_BYTES / MB:g} MB; a "
                    f"policy over {POLICY_MAX_BYTES / MB:g} MB is refused"
                ) from None
    except FileNotFoundError:
        raise PolicyError(f"policy file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"{path.name}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise PolicyError(f"{path.name}: the policy nests too deep; refused") from None
        except _DuplicateKey as exc:
            raise PolicyError(f"{path.name}: key '{exc}' appears twice in one object") from None
        except ValueError:  # an integer literal of more digits than Python converts
            raise PolicyError(f"{path.name}: invalid JSON: a number too long to read") from None
        check_json_depth(path.name, document)
        return document, text
    try:
        return _yaml_load(path.name, text), text
    except PolicyError:
        raise
    except RecursionError:
        raise PolicyError(f"{path.name}: the policy nests too deep; refused") from None
    except Exception as exc:  # yaml.YAMLError; yaml is imported lazily
        mark = getattr(exc, "problem_mark", None)
        where = f"{path.name}:{mark.line + 1}" if mark else path.name
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyError(f"{where}: invalid YAML: {problem}") from None


class _DuplicateKey(Exception):
    pass


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A second `budgets:` further down would silently replace the one a reviewer read.
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _DuplicateKey(key)
        document[key] = value
    return document


SIZE_MESSAGES = {"maxItems": "items", "maxLength": "characters", "maxProperties": "keys"}
"""Constraints whose jsonschema message quotes the whole value; ours gives its size."""


def schema_problems(
    document: Any, schema: Mapping[str, Any], where: tuple[Any, ...] = ()
) -> list[tuple[tuple[Any, ...], str]]:
    """Validate ``document``; one (location, message) per problem, sorted by location."""
    from jsonschema import Draft202012Validator

    problems = []
    for error in Draft202012Validator(schema).iter_errors(document):
        message = error.message
        custom = error.schema.get("x-error") if isinstance(error.schema, dict) else None
        if custom and error.validator in ("oneOf", "anyOf", "not"):
            message = custom
        elif error.validator in SIZE_MESSAGES and isinstance(error.instance, (list, str, dict)):
            # jsonschema quotes the whole value: a 10,000-entry list is not a message
            unit = SIZE_MESSAGES[error.validator]
            message = f"{len(error.instance):,} {unit}; at most {error.validator_value:,} allowed"
        if len(message) > 240:
            message = message[:237] + "..."
        problems.append(((*where, *error.absolute_path), message))
    return sorted(problems, key=lambda item: [str(p) for p in item[0]])


def _read_valid(path: Path) -> tuple[dict[str, Any], dict[tuple[Any, ...], int]]:
    """The policy document, checked against the schema, and its line index."""
    document, text = _parse(path)
    lines = _line_index(text)

    def where(location: tuple[Any, ...]) -> str:
        probe = location
        while probe not in lines and probe:
            probe = probe[:-1]
        line = lines.get(probe)
        prefix = f"{path.name}:{line}" if line else path.name
        return f"{prefix}: {format_location(location)}"

    if not isinstance(document, dict):
        raise PolicyError(
            f"{path.name}: the policy must be a mapping with 'version: 1' and 'model'"
        )
    problems = schema_problems(document, load_schema(POLICY_SCHEMA))
    if problems:
        raise PolicyError(
            f"{path.name}: {len(problems)} problem(s)",
            [f"{where(location)}: {message}" for location, message in problems],
        )
    # The schema compares any integer exactly; turning one into a float later would overflow.
    huge = [f"{where(location)}: {problem}" for location, problem in numbers_out_of_range(document)]
    if huge:
        raise PolicyError(f"{path.name}: {len(huge)} problem(s)", huge)
    return document, lines


def load_policies(path: str | Path, allowed_paths: Sequence[Path] = ()) -> list[Policy]:
    """Read and validate a policy; one :class:`Policy` per model it names (``model`` or
    ``models``), in the policy's order. Raise :class:`PolicyError` listing every problem.

    The files it names must lie in its repository (its own folder outside one) or under
    ``allowed_paths``. Checks needing plugins (names, plugin options, metric names) are
    done by :func:`gate.run.check.check_policy`.
    """
    path = Path(path).absolute()
    roots = confinement_roots(path, allowed_paths)
    if (roots[0] / ".git").exists() and outside(path, roots):
        raise PolicyError(
            f"the policy {path.name} is a symbolic link leading outside its repository; "
            "refused (the person running the gate can allow a folder with --allow-path)"
        )
    document, lines = _read_valid(path)
    policies = [_build(path, doc, doc_lines) for doc, doc_lines in _per_model(document, lines)]
    problems = [problem for policy in policies for problem in _paths_outside(policy, roots, path)]
    if problems:
        raise PolicyError(f"{path.name}: {len(problems)} problem(s)", list(dict.fromkeys(problems)))
    for index, policy in enumerate(policies):
        policy.in_suite = "models" in document
        if policy.in_suite:
            policy.model_index = index
            policy.overridden = tuple(k for k in OVERRIDES if k in document["models"][index])
    problems = []
    seen: dict[str, int] = {}
    for index, policy in enumerate(policies):
        if policy.name in seen:
            problems.append(
                f"{path.name}:{lines.get(('models', index, 'name'), '?')}: models[{index}].name: "
                f"'{policy.name}' is also the name of models[{seen[policy.name]}]"
            )
        seen.setdefault(policy.name, index)
    problems += list(dict.fromkeys(p for policy in policies for p in _repeated_budgets(policy)))
    for index, waiver in enumerate(policies[0].waivers):
        if waiver.model is not None and waiver.model not in seen:
            problems.append(
                f"{path.name}:{waiver.line or '?'}: waivers[{index}].model: no model is called "
                f"'{waiver.model}' (models: {listed(seen)})"
            )
    for index, waiver in enumerate(policies[0].waivers):
        # A waiver that matches no budget would never apply, and nobody would be told why.
        covered = [
            budget
            for policy in policies
            if waiver.model in (None, policy.name)
            for budget in policy.budgets
            if waiver.budget in (budget.metric, budget.location)
        ]
        if not covered:
            known = sorted({b.metric for policy in policies for b in policy.budgets})
            problems.append(
                f"{path.name}:{waiver.line or '?'}: waivers[{index}].budget: '{waiver.budget}' "
                f"matches no budget{' of ' + waiver.model if waiver.model else ''} (budgets on: "
                f"{listed(known)}; or budgets[N] by position)"
            )
    if problems:
        raise PolicyError(f"{path.name}: {len(problems)} problem(s)", problems)
    return policies


def _repeated_budgets(policy: Policy) -> list[str]:
    """The same budget twice changes no verdict, and a reviewer reads one and misses the other."""
    first: dict[tuple[Any, ...], int] = {}
    problems = []
    for index, budget in enumerate(policy.budgets):
        key = (budget.metric, budget.op, budget.threshold, budget.level, budget.aggregation)
        if key in first:
            earlier = format_location(policy.written_at(("budgets", first[key])))
            problems.append(policy.problem(("budgets", index), f"repeats {earlier}; refused"))
        first.setdefault(key, index)
    return problems


def _paths_outside(policy: Policy, roots: Sequence[Path], path: Path) -> list[str]:
    """A policy from a pull request must not make the gate read the runner's other files."""
    named = {
        ("model", "path"): policy.model_path,
        ("data", "validation"): policy.validation_path,
        ("data", "calibration"): policy.calibration_path,
        ("data", "labels"): policy.labels_path,
        ("validation", "ctc", "charset"): policy.charset_path,
    }
    scope = (
        "repository"
        if (roots[0] / ".git").exists()
        else "policy's folder"
        if roots[0] == path.resolve().parent
        else "working directory (no repository holds the policy)"
    )
    problems = []
    for location, target in named.items():
        if target is None:
            continue
        if outside(target, roots):
            problems.append(
                policy.problem(
                    location,
                    f"{_written(policy, location)} leads outside the {scope}; refused (the "
                    "person running the gate can allow a folder with --allow-path or "
                    "ONNX_GATE_ALLOW_PATHS)",
                )
            )
        elif ".git" in target.parts:  # the checkout's credentials live there
            problems.append(
                policy.problem(location, f"{_written(policy, location)} is inside .git; refused")
            )
    return problems


def _written(policy: Policy, location: tuple[str, str]) -> str:
    section = policy.raw.get(location[0], {})
    text = repr(section.get(location[1])) if isinstance(section, dict) else "it"
    return text if len(text) <= 80 else text[:77] + "..."


def load_policy(path: str | Path, allowed_paths: Sequence[Path] = ()) -> Policy:
    """Read and validate a policy naming one model (see :func:`load_policies`)."""
    policies = load_policies(path, allowed_paths)
    if policies[0].in_suite:
        raise PolicyError(
            f"{Path(path).name}: names {len(policies)} models under 'models'; "
            "this command takes a policy with one 'model'"
        )
    return policies[0]


MODEL_KEYS = ("name", "path", "exporter", "options", "trusted")
OVERRIDES = ("inputs", "data", "budgets")


def _per_model(
    document: dict[str, Any], lines: dict[tuple[Any, ...], int]
) -> list[tuple[dict[str, Any], dict[tuple[Any, ...], int]]]:
    """A ``models:`` policy as one single-model document per entry, with line numbers
    pointing at the entry's own keys where it overrides the policy's."""
    if "models" not in document:
        return [(document, lines)]
    shared = {key: value for key, value in document.items() if key != "models"}
    expanded = []
    for index, entry in enumerate(document["models"]):
        overridden = [key for key in OVERRIDES if key in entry]
        doc = {
            **shared,
            **{key: entry[key] for key in overridden},
            "model": {key: entry[key] for key in MODEL_KEYS if key in entry},
        }
        doc_lines = {
            location: line
            for location, line in lines.items()
            if not location or location[0] not in ("models", *overridden)
        }
        doc_lines[("model",)] = lines.get(("models", index), 0)
        for location, line in lines.items():
            rest = location[2:]
            if location[:2] != ("models", index) or not rest:
                continue
            doc_lines[("model", *rest) if rest[0] in MODEL_KEYS else rest] = line
        expanded.append((doc, doc_lines))
    return expanded


def _waivers(doc: dict[str, Any], path: Path, lines: dict[tuple[Any, ...], int]) -> list[Waiver]:
    waivers, problems = [], []
    for index, item in enumerate(doc.get("waivers", [])):
        line = lines.get(("waivers", index))
        try:
            expires = date.fromisoformat(item["expires"])
        except ValueError as exc:
            problems.append(f"{path.name}:{line or '?'}: waivers[{index}].expires: {exc}")
            continue
        waivers.append(
            Waiver(item["budget"], item["reason"], item["owner"], expires, item.get("model"), line)
        )
    if problems:
        raise PolicyError(f"{path.name}: {len(problems)} problem(s)", problems)
    return waivers


def _regressions(doc: dict[str, Any]) -> tuple[Regression, ...]:
    if "regressions" not in doc:
        return DEFAULT_REGRESSIONS
    return tuple(
        Regression(
            item["metric"],
            "drop" if "max_drop" in item else "rise",
            float(item.get("max_drop", item.get("max_rise", 0.0))),
            item.get("level", "error"),
        )
        for item in doc["regressions"]
    )


def _build(path: Path, doc: dict[str, Any], lines: dict[tuple[Any, ...], int]) -> Policy:
    base = path.parent

    def resolve(value: str | None) -> Path | None:
        if value is None:
            return None
        try:
            resolved = (base / value).resolve()
            resolved.exists()  # raises for a name the system cannot take (too long)
            return resolved
        except (ValueError, OSError) as exc:  # a NUL byte, a name too long for the system
            shown = value if len(value) <= 80 else value[:77] + "..."
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise PolicyError(f"{path.name}: the path {shown!r} is not usable: {why}") from None

    model = doc["model"]
    data = doc.get("data", {})
    target = doc.get("target", {})
    measure = doc.get("measure", {})
    validation = doc.get("validation", {})
    recipes = None  # candidates: auto (the default) searches instead
    if isinstance(doc.get("candidates"), list):
        recipes = [
            Recipe.from_json(item, f"candidates[{index}]")
            for index, item in enumerate(doc["candidates"])
        ]
    search = doc.get("search", {})
    budgets = [
        Budget(
            metric=item["metric"],
            op="<=" if "max" in item else ">=",
            threshold=float(item["max"] if "max" in item else item["min"]),
            level=item.get("level", "error"),
            location=f"budgets[{index}]",
            aggregation=item.get("aggregation", "interval"),
            line=lines.get(("budgets", index)),
        )
        for index, item in enumerate(doc.get("budgets", []))
    ]
    return Policy(
        path=path,
        raw=doc,
        name=model.get("name") or Path(model["path"]).stem,
        model_path=resolve(model["path"]),  # type: ignore[arg-type]
        exporter=model.get("exporter"),
        exporter_options=model.get("options", {}),
        inputs={
            name: InputSpec(spec.get("shape"), tuple(spec["range"]) if "range" in spec else None)
            for name, spec in doc.get("inputs", {}).items()
        },
        calibration_path=resolve(data.get("calibration")),
        validation_path=resolve(data.get("validation")),
        labels_path=resolve(data.get("labels")),
        synthetic_samples=data.get("samples", 16),
        calibration_samples=data.get("calibration_samples", 64),
        seed=data.get("seed", 0),
        provider=target.get("provider", "cpu"),
        provider_options=target.get("provider_options", {}),
        threads=target.get("threads"),
        usd_per_hour=target.get("usd_per_hour"),
        baseline_graph={
            "plugin": DEFAULT_GRAPH_PLUGIN,
            "level": "all",
            **doc.get("baseline", {}).get("graph", {}),
        },
        recipes=recipes,
        budgets=budgets,
        validation_output=validation.get("output") or (validation.get("outputs") or [None])[0],
        validators=validation.get("validators"),
        task=validation.get("task", "auto"),
        task_options={
            task: dict(validation[task])
            for task in ("classification", "detection", "embedding", "ctc", "stream")
            if task in validation
        },
        validation_outputs=validation.get("outputs"),
        charset_path=resolve(validation.get("ctc", {}).get("charset")),
        measure=MeasureSettings(
            warmup_runs=measure.get("warmup_runs", 10),
            min_runs=measure.get("min_runs", 100),
            max_runs=measure.get("max_runs", 20000),
            max_seconds=float(measure["max_seconds"]) if "max_seconds" in measure else None,
            min_seconds=float(measure.get("min_seconds", 0.5)),
            confidence=float(measure.get("confidence", 0.95)),
            on_inconclusive=measure.get("on_inconclusive", "inconclusive"),
            memory=measure.get("memory", True),
            batch=measure.get("batch"),
            burst=measure.get("burst", 1),
            session_noise=float(measure.get("session_noise", 0.02)),
        ),
        min_gain=float(doc.get("selection", {}).get("min_gain", 0.05)),
        final_contenders=int(doc.get("selection", {}).get("final", 3)),
        build=BuildSettings(
            isolate=doc.get("build", {}).get("isolate", True),
            timeout_s=float(doc.get("build", {}).get("timeout_s", 600)),
            memory_mb=doc.get("build", {}).get("memory_mb"),
        ),
        limits=Limits.from_json(doc.get("limits", {})),
        search=SearchSettings(
            max_trials=search.get("max_trials", 24),
            max_seconds=float(search.get("max_seconds", 900)),
            fallback=search.get("fallback", True),
            max_fallbacks=search.get("max_fallbacks", 3),
            exclude=tuple(search.get("exclude", ())),
        ),
        fallback=bool(target.get("fallback", False)),
        trusted=bool(model.get("trusted", False)),
        waivers=_waivers(doc, path, lines),
        regressions=_regressions(doc),
        lines=lines,
    )


def policy_digest(path: Path) -> str | None:
    """The policy file's sha256 (a stage refuses a build made from another policy); None
    when it cannot be read."""
    try:
        return hashlib.sha256(read_regular(path, POLICY_MAX_BYTES, OSError)).hexdigest()
    except OSError:
        return None
