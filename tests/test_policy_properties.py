"""Generated policies, valid and invalid, thrown at the policy loader and at `onnx-gate check`.

What users rely on (README: "Exit codes", "Policy reference"):

* never a traceback: ``load_policies`` returns policies or raises the gate's ``UsageError``
  family, nothing else, and ``check`` prints its problems and exits;
* ``check`` exits 0 (usable), 2 (usage or policy error) or 3 (a plugin failed to load);
* a policy that fails the schema exits 2 with one ``error: FILE:LINE: LOCATION: MESSAGE``
  line per schema problem; every other exit-2 line starts ``error: `` and names the file;
* a problem is one line: nothing a policy says splits it (a CI log, an annotation or an
  editor reads one line per problem);
* the same document, as JSON or as YAML, gets the same verdict.

hypothesis-jsonschema's ``from_schema`` cannot build object schemas with the hypothesis
installed here (``AttributeError: 'many' object has no attribute 'more'``), so this module
assembles objects itself from the schema's ``properties``, ``required``, ``oneOf`` and
``additionalProperties`` and lets hypothesis-jsonschema generate every value that is not an
object (patterned strings, bounded numbers, enums, arrays of scalars). The schema is read
from the package each run, so new sections are generated as soon as they are added.

Defects the properties found are listed in ``KNOWN_DEFECTS``: each one's minimal reproducer
is a strict xfail, and the properties tolerate exactly its symptom so that they keep looking
for new ones. ``GATE_PROPERTY_STRICT=1`` tolerates none; ``GATE_PROPERTY_EXAMPLES=N`` sets
the examples per property (50).
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from conftest import CliResult
from hypothesis import HealthCheck, Phase, event, example, given, reject, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator

from gate.demo.build import mlp_model
from gate.errors import UsageError, one_line
from gate.policy.loading import POLICY_SCHEMA, Policy, format_location, load_policies, load_schema

Cli = Callable[..., CliResult]

EXAMPLES = int(os.environ.get("GATE_PROPERTY_EXAMPLES", "50"))
"""Examples per property; raise it for a longer hunt."""
STRICT = os.environ.get("GATE_PROPERTY_STRICT", "") not in ("", "0")
"""Tolerate no known defect (see KNOWN_DEFECTS): the properties then fail on them too."""

PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # explaining is slow
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # gate_cli and the model folder are reused as is
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
HANG_SECONDS = 10.0
"""One check of a small policy takes milliseconds; this long is a hang."""

MODEL_FILE = "model.onnx"
DATA_FILES = {"validation": "validation.npz", "calibration": "calibration.npz"}
LABELS_FILE = "labels.npy"


# -- the schema as a hypothesis strategy ---------------------------------------------------

ANNOTATIONS = frozenset(
    {"$schema", "$id", "$defs", "$comment", "title", "description", "default", "examples"}
)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Both schemas at once (``allOf``, or a ``$ref`` with sibling keywords)."""
    merged = dict(base)
    for key, value in extra.items():
        if key == "required":
            merged[key] = sorted(set(merged.get(key, [])) | set(value))
        elif key == "properties":
            properties = dict(merged.get(key, {}))
            for name, schema in value.items():
                properties[name] = (
                    _merge(properties[name], schema) if name in properties else schema
                )
            merged[key] = properties
        else:
            merged[key] = value
    return merged


def _inline(node: Any, root: dict[str, Any]) -> Any:
    """The schema with local ``$ref``s and ``allOf`` resolved and annotations dropped."""
    if isinstance(node, list):
        return [_inline(item, root) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return _merge(_inline(target, root), _inline(siblings, root))
    inlined: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":  # property names are not keywords
            inlined[key] = {name: _inline(schema, root) for name, schema in value.items()}
        elif key not in ANNOTATIONS and not key.startswith("x-"):
            inlined[key] = _inline(value, root)
    for part in inlined.pop("allOf", []):
        inlined = _merge(inlined, part)
    return inlined


KEYS = st.text(max_size=10)
"""Names a policy chooses (input names, option keys): any text, control characters too."""
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
JSON_VALUES = st.recursive(
    LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


def _has_object(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    kinds = schema.get("type")
    if kinds == "object" or (isinstance(kinds, list) and "object" in kinds):
        return True
    if any(key in schema for key in ("properties", "additionalProperties", "required")):
        return True
    nested = [schema.get(key) for key in ("items", "then", "else")]
    nested += [branch for key in ("oneOf", "anyOf") for branch in schema.get(key, [])]
    return any(_has_object(item) for item in nested)


def _strategy(schema: Any) -> st.SearchStrategy[Any]:
    if schema is True or schema == {}:
        return JSON_VALUES
    if isinstance(schema.get("type"), list) and "if" in schema:
        return st.one_of([_strategy(branch) for branch in _if_branches(schema)])
    if schema.get("type") == "object" or "properties" in schema:
        return _objects(schema)
    if schema.get("type") == "array" and _has_object(schema.get("items")):
        low = schema.get("minItems", 0)
        high = min(schema.get("maxItems", low + 3), low + 3)
        return st.lists(_strategy(schema["items"]), min_size=low, max_size=high)
    if _has_object(schema):
        raise NotImplementedError(f"extend {__name__} to generate {schema}")
    return from_schema(schema)


def _if_branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """``type: [A, B], if: {type: A}, then: ..., else: ...`` as one schema per type."""
    condition = schema["if"]
    if set(condition) != {"type"}:
        raise NotImplementedError(f"extend {__name__} to generate {schema}")
    base = {k: v for k, v in schema.items() if k not in ("if", "then", "else", "type")}
    return [
        _merge(
            {**base, "type": kind},
            schema.get("then", {}) if kind == condition["type"] else schema.get("else", {}),
        )
        for kind in schema["type"]
    ]


def _objects(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))
    alternatives = schema.get("oneOf")
    if alternatives is None:
        choices: list[set[str]] = [set()]
    elif all(set(branch) == {"required"} for branch in alternatives):
        choices = [set(branch["required"]) for branch in alternatives]  # exactly one of them
    else:
        raise NotImplementedError(f"extend {__name__} to generate {schema}")
    extra = schema.get("additionalProperties", True)

    def build(chosen: set[str]) -> st.SearchStrategy[dict[str, Any]]:
        others = set().union(*choices) - chosen
        must = required | chosen
        fixed = st.fixed_dictionaries(
            {key: _strategy(properties[key]) for key in sorted(must)},
            optional={
                key: _strategy(schema)
                for key, schema in properties.items()
                if key not in must and key not in others
            },
        )
        if extra is False:
            return fixed
        values = JSON_VALUES if extra in (True, {}) else _strategy(extra)
        extras = st.dictionaries(KEYS.filter(lambda key: key not in properties), values, max_size=3)
        return st.tuples(extras, fixed).map(lambda pair: {**pair[0], **pair[1]})

    return st.one_of([build(chosen) for chosen in choices])


@cache
def _schema() -> dict[str, Any]:
    return load_schema(POLICY_SCHEMA)


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(_schema())


def _schema_documents() -> st.SearchStrategy[dict[str, Any]]:
    return _strategy(_inline(_schema(), _schema()))


def _anchor(document: dict[str, Any], anchor: str) -> dict[str, Any]:
    """Point a generated policy at the real tiny model (and its data) so it can load."""
    if anchor == "as generated":
        return document
    document = copy.deepcopy(document)
    for entry in [document.get("model"), *document.get("models", [])]:
        if isinstance(entry, dict):
            entry["path"] = MODEL_FILE
    if anchor == "real model and data":
        for owner in [document, *document.get("models", [])]:
            data = owner.get("data")
            if isinstance(data, dict):
                for key, name in DATA_FILES.items():
                    if key in data:
                        data[key] = name
                if "labels" in data:
                    data["labels"] = LABELS_FILE
                    data["validation"] = DATA_FILES["validation"]
    return document


@st.composite
def _policies(draw: st.DrawFn) -> dict[str, Any]:
    document = draw(st.deferred(_schema_documents))
    if draw(st.booleans()):  # a short policy, as most are: a few sections, often usable
        keep = draw(st.sets(st.sampled_from(sorted(document)), max_size=2))
        keep |= {"version", "model", "models"}
        document = {key: value for key, value in document.items() if key in keep}
    anchor = draw(st.sampled_from(["as generated", "real model", "real model and data"]))
    return _anchor(document, anchor)


POLICIES = _policies()
"""Schema-valid policies."""


# -- invalid documents ---------------------------------------------------------------------

WRONG_TYPES = [None, True, 7, 2.5, "text", [], {}, [1], {"k": 1}]
BOUNDARY_VALUES = st.one_of(
    st.integers(min_value=2**1024, max_value=10**400),  # beyond float range
    st.integers(min_value=-(10**400), max_value=-(2**1024)),
    st.sampled_from([-1, 0, float("nan"), float("inf"), float("-inf"), ""]),
    st.text(alphabet="ab", min_size=256, max_size=300),  # longer than a file name may be
    st.sampled_from(["x\x00y", "x\ny", "x\ry", "budgets[9]"]),
)


def _spots(value: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key) of every value below the top level."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield value, key
            yield from _spots(item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield value, index
            yield from _spots(item)


def _mappings(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
    if isinstance(value, dict | list):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _mappings(item)


@st.composite
def mutated_policies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid policy with one change: a wrong type, an unknown key, a value out of range
    (or at a boundary a file system or a float cannot take), or a key removed."""
    document = copy.deepcopy(draw(POLICIES))
    kind = draw(st.sampled_from(["wrong type", "unknown key", "boundary value", "removed key"]))
    event(f"mutation: {kind}")
    if kind == "unknown key":
        mapping = draw(st.sampled_from(list(_mappings(document))))
        mapping[draw(KEYS.filter(lambda key: key not in mapping))] = draw(LEAVES)
        return document
    spots = list(_spots(document))
    if kind == "removed key":
        container, key = draw(
            st.sampled_from([spot for spot in spots if isinstance(spot[0], dict)])
        )
        del container[key]
        return document
    container, key = draw(st.sampled_from(spots))
    if kind == "wrong type":
        current = type(container[key])
        container[key] = copy.deepcopy(
            draw(st.sampled_from([value for value in WRONG_TYPES if type(value) is not current]))
        )
    else:
        container[key] = draw(BOUNDARY_VALUES)
    return document


ALIAS_BOMB = (
    "version: 1\nmodel:\n  path: m\n  options:\n    l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
    + "".join(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))
).encode()
"""Nine levels of ten aliases each: a billion values once expanded."""
YAML_TOKENS = [
    "version: 1\n", "model:\n", "  path: model.onnx\n", "models:\n", "- name: a\n", "  path: b\n",
    "budgets:\n", "- {metric: speedup, min: 1.1}\n", "{", "}", "[", "]", ", ", ": ", "- ", "\n",
    "  ", "\t", "&a ", "*a", "<<: *a\n", "!!binary aGk=", "!!set ", "!!python/object:os.system ",
    "!!timestamp ", "? ", "---\n", "...\n", "%YAML 1.2\n", '"', "'", "# c\n", "|\n", ">-\n",
    '"\\0"', '"\\n"', "\x00", "\ufeff", "\u2028", ".nan", "1e400", "9" * 400, "~", "=",
]  # fmt: skip
JSON_TOKENS = [
    '{"version": 1, ', '"model": {"path": "model.onnx"}', '"models": [', '{"name": "a", ',
    '"path": "b"}', "{", "}", "[", "]", ", ", ": ", '"', '"k"', "1", "-", "NaN", "Infinity",
    "1e999", "9" * 400, "9" * 4400, '"\\u0000"', '"\\ud800"', "\\", "\ufeff", "\n", " ", "null",
]  # fmt: skip


def _texts(tokens: list[str]) -> st.SearchStrategy[str]:
    return st.text() | st.lists(st.sampled_from(tokens) | st.text(max_size=3), max_size=30).map(
        "".join
    )


# -- writing policies ----------------------------------------------------------------------


class _QuotedDumper(yaml.SafeDumper):
    """Every string double-quoted: the YAML means what the JSON means under any YAML
    version's plain-scalar rules (the gate reads YAML 1.2 scalars, PyYAML writes 1.1)."""


_QuotedDumper.add_representer(
    str, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style='"')
)


def write_policy(folder: Path, document: Any, suffix: str, flow: bool = False) -> Path:
    path = folder / f"policy{suffix}"
    if suffix == ".json":
        text = json.dumps(document, indent=None if flow else 2)
    else:
        text = yaml.dump(document, Dumper=_QuotedDumper, default_flow_style=flow, sort_keys=False)
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    return path


# -- defects known today -------------------------------------------------------------------


@dataclass(frozen=True)
class Defect:
    """A gate defect these properties found: its minimal reproducer is pinned below as a
    strict xfail, and the properties tolerate exactly its symptom (a crash with this
    exception, or an error line split by a CR/LF the policy itself contains) so they keep
    hunting for others. Once the gate is fixed the pinned case passes, strict xfail fails
    the run, and deleting the entry here makes the properties strict again."""

    reason: str
    suffix: str
    text: str
    exception: type[BaseException] | None = None
    """The exception the gate lets out; None for a problem printed over several lines."""
    says: str = ""
    """A fragment of its message."""

    def crashed(self, error: BaseException) -> bool:
        return (
            self.exception is not None
            and isinstance(error, self.exception)
            and self.says in str(error)
        )


FOUND_DEFECTS = {
    "int-beyond-float-in-load": Defect(
        "an integer beyond float range (the schema's 'number' allows it) in budgets[].max/min, "
        "measure.max_seconds/min_seconds, search.max_seconds, build.timeout_s, "
        "selection.min_gain, regressions[].max_drop/max_rise or limits.model_mb/data_mb "
        "crashes load_policies: float() raises OverflowError",
        ".yaml",
        f"version: 1\nmodel: {{path: model.onnx}}\nselection: {{min_gain: 1{'0' * 309}}}\n",
        OverflowError,
        "int too large to convert to float",
    ),
    "int-beyond-float-in-check": Defect(
        "an integer beyond float range in inputs.<name>.range crashes check: math.isfinite() "
        "raises OverflowError",
        ".yaml",
        f"version: 1\nmodel: {{path: model.onnx}}\ninputs: {{x: {{range: [0, 1{'0' * 309}]}}}}\n",
        OverflowError,
        "int too large to convert to float",
    ),
    "json-int-over-4300-digits": Defect(
        "a JSON policy with an integer literal over 4300 digits crashes load_policies: "
        "json.loads raises ValueError (not JSONDecodeError), which _parse does not catch",
        ".json",
        "1" * 4301,
        ValueError,
        "Exceeds the limit (4300 digits)",
    ),
    "raw-text-in-messages": Defect(
        "a CR or LF inside a policy string is printed raw, splitting one problem over several "
        "lines (the rest without 'error: '): file paths ('file not found'), input names in "
        "locations, plugin names (provider, exporter, validators, search.exclude, candidates), "
        "metric names, model names, waivers[].model; schema patterns ending in '$' accept a "
        "trailing newline, so 'speedup\\n' and model name 'a\\n' pass the schema",
        ".yaml",
        'version: 1\nmodel: {path: "a\\nb"}\n',
    ),
}


KNOWN_DEFECTS: dict[str, Defect] = {}
"""Defects not fixed yet, tolerated by the properties (none today: every one found is in
FOUND_DEFECTS, whose reproducers now run as plain tests)."""

TOLERATED = {} if STRICT else KNOWN_DEFECTS


def _known_crash(error: BaseException) -> str | None:
    return next((key for key, defect in TOLERATED.items() if defect.crashed(error)), None)


def _strings(document: Any) -> Iterator[str]:
    """Every key and string in a document, each container once (YAML aliases share them)."""
    stack, seen = [document], set()
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict | list) and id(value) not in seen:
            seen.add(id(value))
            stack += [*value.keys(), *value.values()] if isinstance(value, dict) else value


def _rejoined(lines: list[str], document: Any) -> list[str]:
    """Lines split by a CR or LF that a policy string carried into a message joined back
    (known defect 'raw-text-in-messages'), when the policy has such a string; a line that
    is not an ``error:`` (or ``warning:``) line is otherwise left for the oracle to refuse."""
    if (
        "raw-text-in-messages" not in TOLERATED
        or all(line.startswith(("error: ", "warning: ")) for line in lines)
        or not any(BREAKS.search(text) for text in _strings(document))
    ):
        return lines
    joined: list[str] = []
    for line in lines:
        if joined and not line.startswith(("error: ", "warning: ")):
            event("known defect: raw-text-in-messages")
            joined[-1] += "\\n" + line
        else:
            joined.append(line)
    return joined


# -- the documented behaviour --------------------------------------------------------------


class Hang(BaseException):
    """Not an Exception: the gate's own ``except Exception`` must not swallow it."""


@contextmanager
def time_limit(seconds: float = HANG_SECONDS) -> Iterator[None]:
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


BREAKS = re.compile(r"\r\n|\r|\n")
"""What a terminal, a CI log or an annotation takes for the end of a line."""
SCHEMA_LINE = re.compile(r"^error: (?P<file>[^:]+):(?P<line>[0-9]+): (?P<rest>.+)$")
WHERE = re.compile(r"^error: policy\.(json|yaml)(:[0-9]+)?: ")


def _joined(text: str) -> str:
    """A location as the gate prints it: control characters (CR, LF, ...) escaped, so one
    problem stays one line."""
    return one_line(text)


def output_lines(text: str) -> list[str]:
    lines = BREAKS.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def _tolerate_known(error: Exception) -> None:
    known = _known_crash(error)
    if known is None:
        raise error
    event(f"known defect: {known}")
    reject()


def run_check(gate_cli: Cli, policy: Path) -> CliResult:
    try:
        with time_limit():
            return gate_cli("check", policy)
    except Exception as error:  # gate_cli lets what the command raised out: a traceback
        _tolerate_known(error)
        raise


def run_load(policy: Path) -> list[Policy] | UsageError:
    """``load_policies``: the policies, or the UsageError it raised. Anything else is a crash."""
    try:
        with time_limit():
            return load_policies(policy)
    except UsageError as error:
        return error
    except Exception as error:
        _tolerate_known(error)
        raise


def assert_check_result(result: CliResult, policy: Path, document: Any = None) -> list[str]:
    """What every ``check`` must do: exit 0, 2 or 3, no traceback, one line per problem, each
    exit-2 line naming the policy. Returns the stderr lines."""
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exit_code in (0, 2, 3), (result.exit_code, result.stdout, result.stderr)
    lines = _rejoined(output_lines(result.stderr), document)
    if result.exit_code == 0:
        assert result.stdout.startswith(f"{policy}: OK ("), result.stdout
        assert output_lines(result.stdout) == [result.stdout.rstrip("\n")], result.stdout
        assert all(line.startswith("warning: ") for line in lines), result.stderr
        return lines
    assert lines, f"exit {result.exit_code} without a word"
    for line in lines:
        assert line.startswith("error: "), f"a problem split over lines: {result.stderr!r}"
        if result.exit_code == 2:
            assert policy.name in line, f"an error that does not name the policy: {line!r}"
    return lines


def assert_schema_problems(lines: list[str], document: dict[str, Any], policy: Path) -> None:
    """One ``error: FILE:LINE: LOCATION: MESSAGE`` line per schema problem, at its location."""
    expected = [
        format_location(error.absolute_path) for error in _validator().iter_errors(document)
    ]
    assert len(lines) == len(expected), (expected, lines)
    last_line = len(policy.read_bytes().splitlines()) or 1
    unmatched = sorted(expected)
    for line in lines:
        match = SCHEMA_LINE.match(line)
        assert match, f"not FILE:LINE: LOCATION: MESSAGE: {line!r}"
        assert match["file"] == policy.name
        assert 1 <= int(match["line"]) <= last_line, line
        location = next(
            (
                where
                for where in unmatched
                if _joined(match["rest"]).startswith(f"{_joined(where)}: ")
            ),
            None,
        )
        assert location is not None, f"{line!r} is at none of {unmatched}"
        unmatched.remove(location)


def assert_documented(gate_cli: Cli, policy: Path, document: Any) -> tuple[int, list[str]]:
    """The loader and ``check`` on a policy file whose content parses to ``document``.
    Returns check's exit code and its stderr lines without the file's name and line."""
    loaded = run_load(policy)
    result = run_check(gate_cli, policy)
    lines = assert_check_result(result, policy, document)
    if isinstance(loaded, UsageError):
        event(f"load raises {type(loaded).__name__}")
        assert result.exit_code == 2
        assert result.stderr == "".join(f"error: {line}\n" for line in loaded.lines())
    else:
        event(f"load returns; check exits {result.exit_code}")
        models = document.get("models") if isinstance(document, dict) else None
        assert len(loaded) == (len(models) if models else 1)
    if not isinstance(document, dict):
        assert result.exit_code == 2 and len(lines) == 1, lines
    elif not _validator().is_valid(document):
        assert result.exit_code == 2
        assert_schema_problems(lines, document, policy)
    return result.exit_code, [WHERE.sub("", line) for line in lines]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny real ONNX model and its data, for the policies that name them; the plugin host
    built once (``check`` builds one per call, 15 ms of entry-point scanning)."""
    import gate.host.manager

    folder = tmp_path_factory.mktemp("properties")
    rng = np.random.default_rng(0)
    layers = [(rng.normal(size=(4, 3)), rng.normal(size=3))]
    onnx.save_model(mlp_model(layers), str(folder / MODEL_FILE))
    for name in DATA_FILES.values():
        np.savez(folder / name, x=rng.normal(size=(8, 4)).astype(np.float32))
    np.save(folder / LABELS_FILE, rng.integers(0, 3, size=8))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gate.host.manager, "get_host", cache(gate.host.manager.get_host))
        yield folder


# -- properties ----------------------------------------------------------------------------


@PROPERTY
@given(document=POLICIES)
def test_the_generator_makes_schema_valid_policies(document: dict[str, Any]) -> None:
    problems = [
        f"{format_location(error.absolute_path)}: {error.message}"
        for error in _validator().iter_errors(document)
    ]
    assert not problems


@PROPERTY
@given(document=POLICIES, suffix=st.sampled_from([".yaml", ".json"]), flow=st.booleans())
def test_a_schema_valid_policy_loads_or_is_refused_in_one_line_per_problem(
    gate_cli: Cli, folder: Path, document: dict[str, Any], suffix: str, flow: bool
) -> None:
    assert_documented(gate_cli, write_policy(folder, document, suffix, flow), document)


@PROPERTY
@given(document=mutated_policies(), suffix=st.sampled_from([".yaml", ".json"]))
@example(document={"version": 1, "model": {"path": "\x00"}}, suffix=".yaml")
@example(document={"version": 1, "model": {"path": "a" * 256}}, suffix=".json")
@example(document={"version": 1, "models": [{"name": "a", "path": "b/" * 2100}]}, suffix=".yaml")
@example(
    document={"version": 1, "model": {"path": "m"}, "data": {"labels": "\x00"}}, suffix=".json"
)
def test_a_policy_with_one_mistake_is_reported_where_it_is(
    gate_cli: Cli, folder: Path, document: dict[str, Any], suffix: str
) -> None:
    assert_documented(gate_cli, write_policy(folder, document, suffix), document)


@PROPERTY
@given(document=JSON_VALUES, suffix=st.sampled_from([".yaml", ".json"]))
def test_any_json_value_is_refused_with_its_schema_problems(
    gate_cli: Cli, folder: Path, document: Any, suffix: str
) -> None:
    code, _ = assert_documented(gate_cli, write_policy(folder, document, suffix), document)
    assert code == 2


@PROPERTY
@given(document=st.one_of(POLICIES, mutated_policies()), flow=st.booleans())
def test_json_and_yaml_of_one_document_get_one_verdict(
    gate_cli: Cli, folder: Path, document: dict[str, Any], flow: bool
) -> None:
    verdicts = {
        suffix: assert_documented(gate_cli, write_policy(folder, document, suffix, flow), document)
        for suffix in (".json", ".yaml")
    }
    assert verdicts[".json"] == verdicts[".yaml"]


def _parsed(suffix: str, data: bytes) -> Any:
    """Best effort at what the gate reads from a fuzzed file (for ``_rejoined``)."""
    try:
        text = data.decode("utf-8")
        return json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except Exception:
        return None


@PROPERTY
@given(
    content=st.one_of(
        _texts(YAML_TOKENS).map(lambda text: (".yaml", text.encode("utf-8", "surrogatepass"))),
        _texts(JSON_TOKENS).map(lambda text: (".json", text.encode("utf-8", "surrogatepass"))),
        st.tuples(st.sampled_from([".yaml", ".json"]), st.binary(max_size=200)),
    )
)
@example(content=(".yaml", b"version: 1\nmodel: {path: m, options: &o {a: *o}}\n"))
@example(content=(".yaml", ALIAS_BOMB))
@example(content=(".yaml", b"[" * 1_100 + b"]" * 1_100))
@example(content=(".json", b"[" * 50_000 + b"]" * 50_000))
@example(content=(".json", b'{"version": 1, "model": {"path": "m"}, "version": 1}'))
@example(content=(".yaml", b"version: 1\nmodel: {path: m}\nversion: 1\n"))
@example(content=(".json", b'\xef\xbb\xbf{"version": 1, "model": {"path": "m"}}'))
@example(content=(".yaml", b"version: 1\nmodel: {path: m\x00}\n"))
@example(content=(".yaml", b"version: 1\nmodel: {path: !!python/object/apply:os.getcwd []}\n"))
@example(content=(".yaml", b"version: 1\nmodel: {path: m}\n---\nversion: 1\n"))
def test_any_text_or_bytes_as_a_policy_file_gets_error_lines_not_a_traceback(
    gate_cli: Cli, folder: Path, content: tuple[str, bytes]
) -> None:
    suffix, data = content
    policy = folder / f"policy{suffix}"
    policy.write_bytes(data)
    loaded = run_load(policy)
    result = run_check(gate_cli, policy)
    split = not all(line.startswith("error: ") for line in output_lines(result.stderr))
    assert_check_result(result, policy, _parsed(suffix, data) if split else None)
    if isinstance(loaded, UsageError):
        assert result.exit_code == 2
        assert result.stderr == "".join(f"error: {line}\n" for line in loaded.lines())
    event(f"check exits {result.exit_code}")


# -- the defects found, pinned -------------------------------------------------------------


@pytest.mark.parametrize("defect", FOUND_DEFECTS.values(), ids=list(FOUND_DEFECTS))
def test_defects_the_properties_found_stay_fixed(
    gate_cli: Cli, folder: Path, defect: Defect
) -> None:
    """Each minimal reproducer, held to what the properties require (without tolerance)."""
    policy = folder / f"policy{defect.suffix}"
    policy.write_text(defect.text, encoding="utf-8")
    with time_limit():
        try:
            loaded = load_policies(policy)
        except UsageError as error:
            loaded = error
        result = gate_cli("check", policy)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exit_code in (0, 2, 3)
    lines = output_lines(result.stderr)
    assert all(line.startswith("error: ") and policy.name in line for line in lines), lines
    if isinstance(loaded, UsageError):
        assert result.exit_code == 2
