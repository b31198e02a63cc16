"""A policy written for a person to read and edit: YAML with a comment on every choice.

``onnx-gate init`` and ``onnx-gate run MODEL`` (no policy) write one. Values are written
as JSON, which is YAML, so a name with any character in it survives the round trip.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
PLAIN_STRING = re.compile(r"^[A-Za-z_./][A-Za-z0-9_./-]*$")
YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "none", "~"}
COMMENT_COLUMN = 34


@dataclass
class Line:
    """``key: value  # comment`` at ``depth``; ``value`` None opens a block, ``key`` None
    with ``value`` None is a comment on its own, ``commented`` writes the line as a hint."""

    depth: int
    key: str | None
    value: Any = None
    comment: str = ""
    commented: bool = False
    item: bool = False
    """A list item (``- value``)."""


@dataclass
class PolicyText:
    """A policy document built line by line, with the comments that say why."""

    header: list[str] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)

    def add(self, depth: int, key: str | None, value: Any = None, comment: str = "") -> None:
        self.lines.append(Line(depth, key, value, comment))

    def hint(self, depth: int, key: str, value: Any, comment: str = "") -> None:
        """A line left commented out: what to uncomment once its file or need exists."""
        self.lines.append(Line(depth, key, value, comment, commented=True))

    def note(self, depth: int, text: str) -> None:
        """A comment on lines of its own, wrapped to the width a reader sees at once."""
        import textwrap

        for part in textwrap.wrap(text, width=88 - 2 * depth) or [""]:
            self.lines.append(Line(depth, None, None, part))

    def item(self, depth: int, value: Any, comment: str = "") -> None:
        self.lines.append(Line(depth, None, value, comment, item=True))

    def render(self) -> str:
        out = [f"# {text}".rstrip() for text in self.header]
        for line in self.lines:
            indent = "  " * line.depth
            if line.key is None and line.value is None:
                out.append(f"{indent}# {clean(line.comment)}".rstrip())
                continue
            if line.item:
                text = f"{indent}- {flow(line.value)}"
            else:
                text = f"{indent}{key_text(line.key or '')}:"
                if line.value is not None:
                    text += f" {flow(line.value)}"
            if line.commented:
                text = f"{indent}# {text.lstrip()}"
            if line.comment:
                text = f"{text.ljust(COMMENT_COLUMN)} # {clean(line.comment)}"
            out.append(text)
        return "\n".join(out) + "\n"


def clean(comment: str) -> str:
    """A comment stays one comment: a model's names may hold line breaks of any kind."""
    return " ".join(comment.split())


def key_text(key: str) -> str:
    plain = PLAIN_KEY.match(key) and key.lower() not in YAML_WORDS
    return key if plain else json.dumps(key)


def flow(value: Any) -> str:
    """A value on one line: a flow mapping with plain keys where they are plain."""
    if isinstance(value, dict):
        inner = ", ".join(f"{key_text(str(k))}: {flow(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same number
    if isinstance(value, str) and PLAIN_STRING.match(value) and value.lower() not in YAML_WORDS:
        return value
    return json.dumps(value)


def format_number(value: float, digits: int = 3) -> str:
    """A budget threshold a person would write: three significant figures."""
    if value == 0:
        return "0"
    if abs(value) >= 10**digits:
        return f"{value:.0f}"
    text = f"{value:.{digits}g}"
    return str(float(text)) if "e" in text else text


def round_up(value: float, digits: int = 2) -> float:
    """``value`` rounded up to ``digits`` significant figures (a budget never below it)."""
    import math

    if value <= 0:
        return value
    scale = 10 ** (math.floor(math.log10(value)) - digits + 1)
    return float(f"{math.ceil(value / scale) * scale:.{digits}g}")
