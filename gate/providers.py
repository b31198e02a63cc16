"""Execution providers shipped as separate onnxruntime packages: what each plugin shares.

A provider plugin names its package, says whether this onnxruntime build has it, and maps
the policy's ``target.provider_options`` - a few friendly names, validated by a schema,
plus ``ort:`` for any raw ONNX Runtime option - to the options ONNX Runtime takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gate.records import ExecutionProvider

RAW = "ort"
"""``provider_options.ort``: options passed to ONNX Runtime as they are."""


def available(ort_name: str) -> Callable[[], bool]:
    """Whether this onnxruntime build registers the provider (its libraries may still be
    missing at run time: :func:`gate.run.runtime.make_session` checks what a session got)."""

    def check() -> bool:
        import onnxruntime

        return ort_name in onnxruntime.get_available_providers()

    return check


def options_schema(friendly: Mapping[str, Any]) -> dict[str, Any]:
    """A closed schema of the friendly options plus the raw ``ort`` mapping."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **friendly,
            RAW: {
                "type": "object",
                "description": "Options passed to ONNX Runtime unchanged (its own names).",
            },
        },
    }


def ort_provider(
    name: str,
    ort_name: str,
    package: str,
    friendly: Mapping[str, Any],
    mapping: Callable[[Mapping[str, Any]], dict[str, Any]],
    description: str,
    install: str,
) -> ExecutionProvider:
    """The record of a provider: ``mapping`` turns the friendly options into ONNX Runtime's;
    raw ``ort`` options are applied on top, so they win."""

    def provider_options(options: Mapping[str, Any]) -> dict[str, Any]:
        friendly_options = {key: value for key, value in options.items() if key != RAW}
        return {**mapping(friendly_options), **dict(options.get(RAW) or {})}

    return ExecutionProvider(
        name=name,
        ort_name=ort_name,
        package=package,
        is_available=available(ort_name),
        provider_options=provider_options,
        description=description,
        options_schema=options_schema(friendly),
        install=install,
    )


def renamed(options: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """Friendly names to ONNX Runtime's; values as given (its Python API stringifies them)."""
    return {names.get(key, key): value for key, value in options.items()}
