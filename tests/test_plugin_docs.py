"""docs/plugins.md's hook reference is the hookspecs' own: a hook or record field added,
removed or re-documented without regenerating it fails here."""

from __future__ import annotations

import inspect
from pathlib import Path

from gate.host import hookspecs
from gate.host.reference import hook_reference, with_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_the_hook_reference_matches_the_hookspecs():
    document = DOC.read_text(encoding="utf-8")
    assert with_reference(document) == document, (
        "docs/plugins.md is out of date: run `python -m gate.host.reference docs/plugins.md`"
    )


def test_every_hook_and_every_record_field_is_documented():
    reference = hook_reference()
    hooks = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
             if name.startswith("onnx_gate_")]  # fmt: skip
    assert len(hooks) == 6
    for name in hooks:
        assert f"### `{name}() -> Iterable[" in reference
    # the quantiser record as a plugin author meets it
    assert "| `options_schema` | `JsonSchema (optional)` | JSON schema of the options" in reference
    assert "| `propose` |" in reference and "| `quantize` |" in reference
