"""The code's shape: the layering ARCHITECTURE.md describes, held by import-linter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dependencies_point_one_way() -> None:
    """The contracts in pyproject.toml ([tool.importlinter]): command line -> CI -> run ->
    policy/report/host -> foundations, a run's steps called only by the pipeline, and the
    action's helper standing alone. Function-level imports count as much as top-level ones."""
    linter = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert linter, "import-linter is a test dependency: pip install -e '.[testing]'"
    done = subprocess.run(
        [linter, "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_module_of_the_gate_has_a_place_in_the_layers() -> None:
    """A new module outside every layer would escape the contract silently."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layered = {
        name.strip() for layer in config["contracts"][0]["layers"] for name in layer.split("|")
    }
    modules = {
        "gate." + (path.parent.name if path.parent.name != "gate" else path.stem)
        for path in (ROOT / "gate").glob("*/__init__.py")
    } | {f"gate.{path.stem}" for path in (ROOT / "gate").glob("*.py") if path.stem != "__init__"}
    assert modules - {"gate.schemas"} <= layered, sorted(modules - layered)


# --- the typed report ---------------------------------------------------------------------


def _schema() -> dict:
    import json

    return json.loads((ROOT / "schemas" / "report.schema.json").read_text())


def _json_types(value: object) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number"}
    if isinstance(value, str):
        return {"string"}
    return {"array"} if isinstance(value, list) else {"object"}


def _allowed(spec: dict) -> set[str] | None:
    kind = spec.get("type")
    if kind is None:
        return None  # an enum or const: checked by validating a fresh report below
    return {kind} if isinstance(kind, str) else set(kind)


def test_the_typed_report_and_the_schema_name_the_same_fields() -> None:
    """Every field of ModelReport and SuiteReport is a property of report.schema.json and
    every property a field of one of them, with types that agree; the same for
    CandidateEntry."""
    import dataclasses

    from gate.report.model import UNSET, CandidateEntry, ModelReport, SuiteReport

    schema = _schema()
    fields = {f.name: f for f in dataclasses.fields(ModelReport)}
    suite_fields = {f.name for f in dataclasses.fields(SuiteReport)}
    assert set(fields) | suite_fields == set(schema["properties"]), (
        sorted((set(fields) | suite_fields) - set(schema["properties"])),
        sorted(set(schema["properties"]) - set(fields) - suite_fields),
    )
    candidate = schema["$defs"]["candidate"]
    entry_fields = {f.name for f in dataclasses.fields(CandidateEntry)}
    assert entry_fields == set(candidate["properties"]), sorted(
        entry_fields ^ set(candidate["properties"])
    )

    fresh, suite = ModelReport(), SuiteReport()
    entry = CandidateEntry(name="original", session={})

    def written(record: object) -> set[str]:
        return {f.name for f in dataclasses.fields(record) if getattr(record, f.name) is not UNSET}

    # What the schema requires of every report, of a model's and of a suite's is always
    # written...
    assert set(schema["required"]) | set(schema["else"]["required"]) <= written(fresh)
    assert set(schema["required"]) | set(schema["then"]["required"]) <= written(suite)
    assert set(candidate["required"]) <= written(entry)
    # ...with a value of a type the schema allows.
    for record, properties in (
        (fresh, schema["properties"]),
        (suite, schema["properties"]),
        (entry, candidate["properties"]),
    ):
        for item in dataclasses.fields(record):
            value = getattr(record, item.name)
            allowed = _allowed(properties[item.name])
            if value is UNSET or allowed is None:
                continue
            assert _json_types(value) & allowed, (item.name, value, allowed)


def test_a_fresh_report_is_valid_and_says_nothing_ran() -> None:
    """new_report is the report a run that fails at once writes: valid, an error, and
    without the fields no step has filled in yet."""
    import jsonschema

    from gate.report.document import new_report

    document = new_report(Path("policy.yaml"), "demo").to_json()
    jsonschema.validate(document, _schema())
    assert document["verdict"] == "error" and document["exit_code"] == 3
    assert "testbed" not in document and "search" not in document
    assert document["candidates"] == [] and document["policy"] == "policy.yaml"


def test_a_misspelt_report_field_is_an_error_not_a_new_key() -> None:
    import pytest

    from gate.report.model import ModelReport

    with pytest.raises(AttributeError, match="verdikt"):
        ModelReport().update(verdikt="pass")
