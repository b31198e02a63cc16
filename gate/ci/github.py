"""GitHub Actions glue for onnx-gate: what the composite action (``action.yml``) runs.

Sub-commands (``python -m gate.ci.github SUB ...``, or ``python gate/ci/github.py SUB ...``):

``run``
    Run the gate (``onnx-gate run POLICY`` or ``onnx-gate merge DIRS``) and, given a
    base report, ``onnx-gate compare``; step outputs ``exit-code`` and
    ``compare-exit-code``. The gate's own output is fenced with ``::stop-commands::``
    so nothing it prints (a model name, a plugin's message) can act as a workflow command.
``report``
    Read DIR/report.json and write the step outputs (``verdict``, ``exit-code``,
    ``report``, ``model``, ``action-exit-code``), the Markdown job summary (capped
    under GitHub's 1 MiB) and at most 10 error, 10 warning and 10 notice annotations
    pointing at the policy line of each budget. Prints ``action-exit-code=N`` last.
``comment``
    The sticky pull-request comment (found by a hidden marker and edited in place).
    It never fails the job: on a fork's pull request, without a token, with a
    read-only token or when the API is unreachable it writes a notice and leaves the
    report in the job summary.

Why it stands alone. The action runs this file as a script from its own checkout with
the runner's Python, under ``-I``: ``run`` executes before anything may be importable
(it is what runs the installed gate), and ``report``/``comment`` must work whatever
onnx-gate version the workflow installed, older releases included, and after a gate
that crashed. So it uses the standard library only (PyYAML, when importable, for
policy line numbers) and imports nothing from ``gate``. An import-linter contract in
pyproject.toml holds that.

What it repeats of the gate, and no more. It reads report.json as data: the
``budgets`` rows, ``verdict``, ``exit_code`` and ``summary.md`` are the gate's own,
and are used as written. Only for a report from before the budget rows existed
(``_rows_from_candidates``, ``_status_of``, ``_explain``: about 50 lines) does it
rebuild them from the chosen candidate. It keeps GitHub's own rules: annotation caps,
summary size, workflow-command escaping and ``fail-on``. tests/test_github_action.py
runs it against a real older wheel and against the current gate's reports.

Library functions return values; only the ``*_main`` functions print or write files.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import secrets
import shlex
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "<!-- onnx-gate -->"
"""Hidden marker that identifies the sticky pull-request comment."""
DIGEST_PREFIX = "<!-- onnx-gate:digest="
SUMMARY_LIMIT = 1024 * 1024
"""GitHub's limit for one step's job summary, in bytes."""
SUMMARY_CAP = SUMMARY_LIMIT - 16 * 1024
"""What this module writes at most: under the limit, with room for the truncation note."""
COMMENT_CAP = 60_000
"""GitHub refuses comment bodies over 65,536 characters."""
MAX_ANNOTATIONS = 10
"""GitHub shows at most 10 error and 10 warning annotations per step."""
FAIL_ON = ("error", "warn")
COMMENT_MODES = ("off", "on-change", "always")
VERDICT_OF_EXIT = {0: "pass", 1: "fail", 4: "inconclusive"}
MISSED = ("fail", "inconclusive", "not_measured")
ICONS = {
    "pass": "✅",
    "fail": "❌",
    "error": "💥",
    "inconclusive": "❔",
    "waived": "🏳️",
    "not_measured": "➖",
}
ANNOTATION_LEVEL = {"error": "error", "warn": "warning"}
MAX_LINE = 400


# --- workflow commands ---------------------------------------------------------------


def escape_data(value: str) -> str:
    """Escape a workflow command's message (``%``, CR and LF), as @actions/core does."""
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(value: str) -> str:
    """Escape a workflow command's property value: the message escapes plus ``:`` and ``,``."""
    return escape_data(value).replace(":", "%3A").replace(",", "%2C")


def workflow_command(name: str, message: str = "", **properties: str | int | None) -> str:
    """``::name key=value,...::message`` with every part escaped; empty properties dropped."""
    props = ",".join(
        f"{key}={escape_property(str(value))}"
        for key, value in properties.items()
        if value is not None and value != ""
    )
    return f"::{name}{' ' + props if props else ''}::{escape_data(message)}"


@dataclass(frozen=True)
class Annotation:
    level: str  # error | warning | notice
    message: str
    title: str = "onnx-gate"
    file: str | None = None
    line: int | None = None

    def command(self) -> str:
        # An annotation is read in the pull request's checks list: one bounded line (the
        # gate's own `bounded`, repeated here because this module imports nothing of it).
        message = self.message
        if len(message) > MAX_LINE:
            message = message[: MAX_LINE - 60].rstrip() + f"... ({len(message):,} characters)"
        return workflow_command(
            self.level, message, file=self.file, line=self.line, title=self.title
        )


# --- GitHub's files -----------------------------------------------------------------


def format_outputs(values: Mapping[str, object]) -> str:
    """``name=value`` lines for $GITHUB_OUTPUT; multi-line values use a random delimiter."""
    lines = []
    for name, value in values.items():
        text = "" if value is None else str(value)
        if "\n" in text or "\r" in text:
            delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
            lines.append(f"{name}<<{delimiter}\n{text}\n{delimiter}\n")
        else:
            lines.append(f"{name}={text}\n")
    return "".join(lines)


def set_outputs(values: Mapping[str, object], env: Mapping[str, str] | None = None) -> bool:
    """Append step outputs to the file $GITHUB_OUTPUT names; False when there is none."""
    path = (os.environ if env is None else env).get("GITHUB_OUTPUT")
    if not path:
        return False
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(format_outputs(values))
    return True


def append_summary(text: str, env: Mapping[str, str] | None = None) -> bool:
    """Append Markdown to the job summary ($GITHUB_STEP_SUMMARY); False when there is none."""
    path = (os.environ if env is None else env).get("GITHUB_STEP_SUMMARY")
    if not path:
        return False
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(text)
    return True


def summary_size(env: Mapping[str, str] | None = None) -> int:
    path = (os.environ if env is None else env).get("GITHUB_STEP_SUMMARY")
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


# --- reading a report ---------------------------------------------------------------


def load_report(output_dir: Path) -> dict[str, Any] | None:
    """DIR/report.json as a dict, or None when it is missing or unreadable."""
    try:
        report = json.loads(_read_text(output_dir / "report.json") or "null")
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def is_suite(report: Mapping[str, Any]) -> bool:
    return report.get("kind") == "suite"


_PATH_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def parse_location(location: str) -> list[str | int]:
    """``models[1].budgets[0]`` -> ``["models", 1, "budgets", 0]``."""
    return [int(index) if index else key for index, key in _PATH_PART.findall(location)]


class PolicyLines:
    """1-based line numbers of locations in policy files, read once per file (needs PyYAML)."""

    def __init__(self) -> None:
        self._roots: dict[str, Any] = {}

    def _root(self, path: str) -> Any:
        if path not in self._roots:
            root = None
            try:
                import yaml

                text = _read_text(path, 1_000_000)  # the gate's own limit on a policy
                root = None if text is None else yaml.compose(text, Loader=yaml.SafeLoader)
            except Exception:  # no PyYAML, no file, or not YAML/JSON: no line numbers
                root = None
            self._roots[path] = root
        return self._roots[path]

    def line(self, path: str | None, location: str | None) -> int | None:
        if not path or not location:
            return None
        node = self._root(path)
        if node is None:
            return None
        for part in parse_location(location):
            children = getattr(node, "value", None)
            if isinstance(part, int) and type(node).__name__ == "SequenceNode":
                if not 0 <= part < len(children):
                    return None
                node = children[part]
            elif isinstance(part, str) and type(node).__name__ == "MappingNode":
                node = next((value for key, value in children if key.value == part), None)
                if node is None:
                    return None
            else:
                return None
        return int(node.start_mark.line) + 1


def _explain(row: Mapping[str, Any]) -> str:
    actual = row.get("actual")
    found = "not measured" if actual is None else f"{actual:.6g}"
    threshold = row.get("threshold")
    expected = f"{threshold:g}" if isinstance(threshold, int | float) else str(threshold)
    return f"{row.get('metric')} expected {row.get('op', '')} {expected}, found {found}"


def _status_of(result: Mapping[str, Any]) -> str:
    if result.get("status"):
        return str(result["status"])
    if result.get("actual") is None and result.get("decision") != "inconclusive":
        return "not_measured"
    decision = result.get("decision")
    if decision in ("pass", "fail", "inconclusive"):
        return str(decision)
    return "pass" if result.get("passed") else "fail"


def _rows_from_candidates(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Budget rows for a report from before ``budgets`` existed: the chosen candidate's
    results, else the original's (what failed when nothing was chosen)."""
    candidates = [c for c in report.get("candidates") or [] if isinstance(c, Mapping)]
    chosen = report.get("chosen")
    pick = next((c for c in candidates if c.get("name") == chosen), None)
    pick = pick or next((c for c in candidates if c.get("name") == "original"), None)
    pick = pick or (candidates[0] if candidates else None)
    if pick is None:
        return []
    model = report.get("name") or Path(str((report.get("model") or {}).get("path") or "")).stem
    rows = []
    for index, result in enumerate(pick.get("budgets") or []):
        row = {
            "model": model or None,
            "id": result.get("location") or f"budgets[{index}]",
            "metric": result.get("metric"),
            "level": result.get("level", "error"),
            "op": result.get("op"),
            "threshold": result.get("threshold"),
            "line": result.get("line"),
            "candidate": pick.get("name"),
            "actual": result.get("actual"),
            "status": _status_of(result),
            "waiver": result.get("waiver"),
        }
        row["message"] = result.get("message") or _explain(row)
        rows.append(row)
    return rows


def budget_rows(
    report: Mapping[str, Any], lines: PolicyLines | None = None
) -> list[dict[str, Any]]:
    """The report's budget rows, normalised; line numbers filled in from the policy file
    where the report has none."""
    raw = report.get("budgets")
    if isinstance(raw, list):
        rows = [dict(row) for row in raw if isinstance(row, Mapping)]
    else:
        rows = _rows_from_candidates(report)
    policy = report.get("policy")
    for row in rows:
        row.setdefault("model", report.get("name"))
        row.setdefault("level", "error")
        row["status"] = _status_of(row)
        if not row.get("message"):
            row["message"] = _explain(row)
        if not isinstance(row.get("line"), int) and lines is not None:
            row["line"] = lines.line(row.get("policy") or policy, row.get("id"))
    return rows


def repo_relative(path: str | None, workspace: str | None) -> str | None:
    """A path as GitHub wants it in an annotation: relative to the repository root."""
    if not path:
        return None
    absolute = Path(os.path.abspath(path))
    if workspace:
        for root in {Path(os.path.abspath(workspace)), Path(workspace).resolve()}:
            for candidate in (absolute, absolute.resolve()):
                try:
                    return candidate.relative_to(root).as_posix()
                except ValueError:
                    continue
    return Path(path).as_posix()


# --- decisions ----------------------------------------------------------------------


def report_verdict(report: Mapping[str, Any] | None, exit_code: int) -> str:
    if report and report.get("verdict"):
        return str(report["verdict"])
    return VERDICT_OF_EXIT.get(exit_code, "error")


def warn_misses(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Misses that do not hold the build back: warn-level budgets that failed, and
    error-level ones the gate let pass (undecided under measure.on_inconclusive: warn)."""
    return [
        row
        for row in rows
        if (row.get("level") == "warn" and row.get("status") == "fail")
        or (
            row.get("level") == "error"
            and row.get("blocking") is False
            and row.get("status") in MISSED
        )
    ]


def action_exit_code(
    verdict: str,
    exit_code: int,
    rows: Sequence[Mapping[str, Any]],
    fail_on: str = "error",
    compare_exit_code: int | None = None,
) -> int:
    """The code the action ends with.

    ``fail-on: error``: the gate's exit code. ``fail-on: warn``: also 1 when the verdict
    is pass but a warn-level budget row failed (and 1 for a non-pass verdict that exited
    0). Either way a comparison with the base report that found a regression (compare
    exited 1) turns a pass into 1; a comparison that could not be made changes nothing.
    """
    if fail_on not in FAIL_ON:
        raise ValueError(f"fail-on must be one of {', '.join(FAIL_ON)}, not {fail_on!r}")
    if exit_code != 0:
        return exit_code
    if fail_on == "warn" and (verdict not in ("pass", "pending") or warn_misses(rows)):
        return 1
    if compare_exit_code == 1:
        return 1
    return 0


def _cap(items: list[Annotation], level: str, what: str) -> list[Annotation]:
    if len(items) <= MAX_ANNOTATIONS:
        return items
    hidden = len(items) - (MAX_ANNOTATIONS - 1)
    more = Annotation(level, f"{hidden} more {what}: see the job summary and report.json")
    return [*items[: MAX_ANNOTATIONS - 1], more]


def annotations(
    report: Mapping[str, Any] | None,
    rows: Sequence[Mapping[str, Any]],
    workspace: str | None = None,
    exit_code: int = 0,
    output_dir: str = "",
) -> list[Annotation]:
    """At most 10 of each level: the report's errors first (no file or line), then one per
    missed budget at its policy line (error-level rows as errors, warn-level as warnings)
    and a notice per waived budget."""
    if report is None:
        return [
            Annotation(
                "error",
                f"onnx-gate exited with {exit_code} and wrote no report.json in {output_dir or 'the output directory'}; see the log",
            )
        ]
    policy = repo_relative(report.get("policy"), workspace)
    suite = is_suite(report)
    found: dict[str, list[Annotation]] = {"error": [], "warning": [], "notice": []}
    for line in report.get("errors") or []:
        found["error"].append(Annotation("error", str(line)))
    for row in rows:
        status, level = row.get("status"), row.get("level")
        where = {
            "file": repo_relative(row.get("policy"), workspace) if row.get("policy") else policy,
            "line": row.get("line") if isinstance(row.get("line"), int) else None,
        }
        if where["file"] is None:
            where["line"] = None
        title = f"onnx-gate: {row.get('metric')}"
        prefix = f"{row['model']}: " if suite and row.get("model") else ""
        message = prefix + str(row.get("message") or _explain(row))
        if status in MISSED and level in ANNOTATION_LEVEL:
            if level == "error" and row.get("blocking") is False:
                level = "warn"  # e.g. undecided under measure.on_inconclusive: warn
            if status != "fail":
                message += f" ({status.replace('_', ' ')})"
            if row.get("candidate"):
                message += f" [candidate {row['candidate']}]"
            found[ANNOTATION_LEVEL[level]].append(
                Annotation(ANNOTATION_LEVEL[level], message, title, **where)
            )
        elif status == "waived":
            waiver = row.get("waiver") or {}
            details = ", ".join(
                f"{key} {waiver[key]}" for key in ("reason", "owner", "expires") if waiver.get(key)
            )
            found["notice"].append(
                Annotation(
                    "notice",
                    f"waived: {message}" + (f" ({details})" if details else ""),
                    title,
                    **where,
                )
            )
    if exit_code not in (0, 1, 4) and not found["error"]:
        found["error"].append(
            Annotation(
                "error",
                f"onnx-gate exited with {exit_code}: {report.get('message') or 'see the log'}",
            )
        )
    return [
        *_cap(found["error"], "error", "errors and missed error-level budgets"),
        *_cap(found["warning"], "warning", "missed warn-level budgets"),
        *_cap(found["notice"], "notice", "waived budgets"),
    ]


# --- Markdown -----------------------------------------------------------------------


def _cell(value: object) -> str:
    text = str(value)
    if len(text) > MAX_LINE // 2:  # a cell of a table, or the line of an error: bounded
        text = text[: MAX_LINE // 2 - 30].rstrip() + f"... ({len(text):,} characters)"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _number(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "—"
    if isinstance(value, int | float):
        return f"{value:.4g}"
    return _cell(value)


def _blob_link(path: str | None, line: int | None, env: Mapping[str, str]) -> str:
    if not path:
        return "—"
    label = f"{path}:{line}" if line else path
    server, repo, sha = (
        env.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_SHA")
    )
    if server and repo and sha and not Path(path).is_absolute():
        anchor = f"#L{line}" if line else ""
        return f"[`{_cell(label)}`]({server}/{repo}/blob/{sha}/{path}{anchor})"
    return f"`{_cell(label)}`"


def budget_table(
    rows: Sequence[Mapping[str, Any]],
    policy: str | None,
    env: Mapping[str, str],
    with_model: bool,
) -> str:
    if not rows:
        return ""
    header = ["budget", "metric", "level", "expected", "actual", "status", "policy"]
    if with_model:
        header.insert(0, "model")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        status = str(row.get("status"))
        threshold = row.get("threshold")
        cells = [
            f"`{_cell(row.get('id') or '')}`",
            f"`{_cell(row.get('metric'))}`",
            _cell(row.get("level")),
            f"{_cell(row.get('op') or '')} {_number(threshold)}".strip(),
            _number(row.get("actual")),
            f"{ICONS.get(status, '')} {_cell(status.replace('_', ' '))}".strip(),
            _blob_link(policy, row.get("line") if isinstance(row.get("line"), int) else None, env),
        ]
        if with_model:
            cells.insert(0, _cell(row.get("model") or ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _models_table(report: Mapping[str, Any]) -> str:
    models = [m for m in report.get("models") or [] if isinstance(m, Mapping)]
    if not models:
        return ""
    lines = ["| model | verdict | exit | chosen | message |", "|---|---|---:|---|---|"]
    for model in models:
        verdict = str(model.get("verdict"))
        lines.append(
            f"| {_cell(model.get('name'))} | {ICONS.get(verdict, '')} {_cell(verdict)} | "
            f"{_cell(model.get('exit_code'))} | {_cell(model.get('chosen') or '—')} | "
            f"{_cell(model.get('message') or '')} |"
        )
    return "\n".join(lines) + "\n"


MAX_READ = 64_000_000
"""Bytes of a report, summary or policy this step reads; a file past it is not the gate's."""


def _read_text(path: Path | str, limit: int = MAX_READ) -> str | None:
    """A regular file's text, or None: never a FIFO (it would block the step), a device or
    a /proc file (a summary.md committed as a link to /proc/self/environ would post the
    job's environment). The gate's own reader (gate.files) repeated in a few lines, since
    this module imports nothing of the installed gate."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, ValueError):
        return None
    try:
        status = os.fstat(descriptor)
        kernel = {os.stat(root).st_dev for root in ("/proc", "/sys") if os.path.isdir(root)}
        if not stat.S_ISREG(status.st_mode) or status.st_dev in kernel:
            return None
        os.set_blocking(descriptor, True)
        with os.fdopen(descriptor, "rb") as stream:
            descriptor = -1
            data = stream.read(limit + 1)
        return None if len(data) > limit else data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        if descriptor >= 0:
            os.close(descriptor)


def render_summary(
    report: Mapping[str, Any] | None,
    rows: Sequence[Mapping[str, Any]],
    output_dir: Path,
    *,
    exit_code: int,
    action_code: int,
    fail_on: str,
    compare_dir: Path | None = None,
    compare_exit_code: int | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """The job summary: the gate's summary.md, the budget table, the comparison with the
    base report, and a line saying how the job ends."""
    env = os.environ if env is None else env
    parts: list[str] = []
    verdict = report_verdict(report, exit_code)
    gate_summary = _read_text(output_dir / "summary.md")
    if gate_summary and gate_summary.strip():
        parts.append(gate_summary.rstrip() + "\n")
        if report and is_suite(report) and not re.search(r"(?m)^\|\s*model\s*\|", gate_summary):
            parts.append("### Models\n\n" + _models_table(report))
    else:
        title = f"## {ICONS.get(verdict, '')} onnx-gate: {verdict.upper()}".replace("  ", " ")
        message = (report or {}).get("message") or (
            "" if report else f"No report.json in `{output_dir}`: see the job log."
        )
        parts.append(f"{title}\n\n{message}\n" if message else f"{title}\n")
        if report and is_suite(report):
            parts.append(_models_table(report))
        for error in (report or {}).get("errors") or []:
            parts.append(f"> 💥 {_cell(error)}\n")
    if rows:
        policy = repo_relative((report or {}).get("policy"), env.get("GITHUB_WORKSPACE"))
        with_model = bool(report and is_suite(report))
        parts.append("### Budgets\n\n" + budget_table(rows, policy, env, with_model))
    if compare_dir is not None:
        compared = _read_text(compare_dir / "compare.md")
        if compared and compared.strip():
            parts.append(
                "### Compared with the base report\n\n" + _demote_headings(compared.rstrip()) + "\n"
            )
        elif compare_exit_code not in (None, 0, 1):
            parts.append(
                f"_The comparison with the base report could not be made (exit {compare_exit_code})._\n"
            )
    ending = f"onnx-gate exited with {exit_code} ({verdict})"
    if action_code != exit_code:
        reasons = []
        if warn_misses(rows) and fail_on == "warn":
            reasons.append("a warn-level budget was missed and `fail-on: warn`")
        if compare_exit_code == 1:
            reasons.append("the comparison with the base report found a regression")
        ending += f"; the job fails with {action_code}" + (
            f" because {' and '.join(reasons)}" if reasons else f" (`fail-on: {fail_on}`)"
        )
    parts.append(f"<sub>{ending}.</sub>\n")
    return "\n".join(parts)


def _demote_headings(text: str) -> str:
    """Nest another document's headings under our ``###`` (``##`` -> ``####``)."""
    return re.sub(r"(?m)^(#{1,5}) ", lambda m: "#" * min(len(m.group(1)) + 2, 6) + " ", text)


def cap_markdown(text: str, limit: int, note: str) -> str:
    """``text`` if it fits in ``limit`` bytes (UTF-8); else its first whole lines, open
    ``<details>`` and code fences closed, and ``note``, all within ``limit``."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    budget = max(0, limit - len(note.encode("utf-8")) - 1024)
    kept = encoded[:budget].decode("utf-8", errors="ignore")
    kept = kept[: kept.rfind("\n") + 1] if "\n" in kept else ""
    closing = ""
    if len(re.findall(r"(?m)^\s*```", kept)) % 2:
        closing += "```\n"
    opened = kept.count("<details") - kept.count("</details>")
    closing += "</details>\n" * max(0, opened)
    return f"{kept}{closing}\n{note.strip()}\n"


def truncation_note(env: Mapping[str, str], artifact_name: str, artifact_url: str) -> str:
    where = artifact_url or run_url(env)
    artifact = f"the `{artifact_name}` artifact" if artifact_name else "the report artifact"
    link = f"[{artifact}]({where})" if where else artifact
    return (
        f"> ✂️ **Summary truncated** to stay under GitHub's 1 MiB limit: the full summary.md and "
        f"report.json are in {link}."
    )


def run_url(env: Mapping[str, str]) -> str:
    server, repo, run = (
        env.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")
    )
    return f"{server}/{repo}/actions/runs/{run}" if server and repo and run else ""


# --- report ---------------------------------------------------------------------------


def _parse_code(text: str | None) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def report_main(args: argparse.Namespace) -> int:
    env = os.environ
    output_dir = Path(args.output_dir)
    exit_code = _parse_code(args.exit_code)
    report = load_report(output_dir)
    if exit_code is None:  # the run step never finished: take the report's word
        exit_code = int((report or {}).get("exit_code", 3))
    compare_code = _parse_code(args.compare_exit_code)
    rows = budget_rows(report, PolicyLines()) if report else []
    verdict = report_verdict(report, exit_code)
    action_code = action_exit_code(verdict, exit_code, rows, args.fail_on, compare_code)

    print("::group::onnx-gate: report")
    model = ""
    output_model = (report or {}).get("output_model")
    if report and not is_suite(report) and output_model:
        path = output_dir / str(output_model.get("path") or "model.onnx")
        model = str(path) if path.is_file() else ""
    report_path = output_dir / "report.json"
    outputs = {
        "verdict": verdict,
        "exit-code": exit_code,
        "report": str(report_path) if report is not None else "",
        "model": model,
        "name": "" if not report or is_suite(report) else report.get("name") or "",
        "action-exit-code": action_code,
    }
    set_outputs(outputs)
    for name, value in outputs.items():
        print(f"{name}: {value}")
    compare_dir = Path(args.compare_dir) if args.compare_dir else None
    if args.summary:
        text = render_summary(
            report, rows, output_dir,
            exit_code=exit_code, action_code=action_code, fail_on=args.fail_on,
            compare_dir=compare_dir, compare_exit_code=compare_code, env=env,
        )  # fmt: skip
        limit = SUMMARY_CAP - summary_size()
        note = truncation_note(env, args.artifact_name, args.artifact_url)
        if append_summary(cap_markdown(text, limit, note)):
            print("job summary written")
    print("::endgroup::")
    for annotation in annotations(
        report, rows, env.get("GITHUB_WORKSPACE"), exit_code, str(output_dir)
    ):
        print(annotation.command())
    print(
        f"onnx-gate: verdict {verdict} (exit {exit_code}), fail-on {args.fail_on}: "
        f"the action ends with exit code {action_code}"
    )
    print(f"action-exit-code={action_code}")
    sys.stdout.flush()
    return 0


# --- run ------------------------------------------------------------------------------


def onnx_gate(python: str | None = None) -> list[str]:
    """How to start onnx-gate for an interpreter: the console script beside it, else
    ``python -m gate`` (which would prefer a ``gate`` folder in the working directory)."""
    interpreter = python or sys.executable
    folder = Path(interpreter).parent
    for script in (folder / "onnx-gate", folder / "onnx-gate.exe"):
        if script.is_file():
            return [str(script)]
    return [interpreter, "-m", "gate"]


def gate_command(
    output_dir: str,
    policy: str = "",
    extra_args: str = "",
    merge: str = "",
    python: str | None = None,
) -> list[str]:
    """The ``onnx-gate`` command line for the action's inputs (``args`` split like a shell
    would, never run by one; ``merge`` globs expanded to directories)."""
    executable = onnx_gate(python)
    extra = shlex.split(extra_args)
    if merge.strip():
        directories = []
        for pattern in shlex.split(merge):
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            directories += [match for match in matches if os.path.isdir(match)] or [pattern]
        return [*executable, "merge", *directories, "--output-dir", output_dir, *extra]
    if not policy:
        raise ValueError("the policy input is required unless merge is given")
    return [*executable, "run", policy, "--output-dir", output_dir, *extra]


def fenced(command: Sequence[str]) -> int:
    """Run ``command`` with workflow commands off (``::stop-commands::``) and return its code."""
    token = f"onnx-gate-{secrets.token_hex(16)}"
    print(f"::stop-commands::{token}", flush=True)
    try:
        return subprocess.run(list(command), check=False).returncode
    except OSError as exc:
        print(f"cannot run {command[0]}: {exc}", flush=True)
        return 3
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        print(f"::{token}::", flush=True)


def run_main(args: argparse.Namespace) -> int:
    print("::group::onnx-gate: run", flush=True)
    try:
        command = gate_command(args.output_dir, args.policy, args.args, args.merge, args.python)
    except ValueError as exc:
        print("::endgroup::")
        print(Annotation("error", str(exc)).command())
        set_outputs({"exit-code": 2, "compare-exit-code": ""})
        return 0
    shown = command[1:] if len(command) > 1 and command[1] != "-m" else command[3:]
    print("$ onnx-gate " + shlex.join(shown), flush=True)
    code = fenced(command)
    print(f"onnx-gate exited with {code}", flush=True)
    print("::endgroup::", flush=True)
    compare_code: int | None = None
    if args.base_report:
        print("::group::onnx-gate: compare with the base report", flush=True)
        head = Path(args.output_dir) / "report.json"
        if not Path(args.base_report).is_file():
            print(f"no base report at {args.base_report}: nothing to compare with")
            print("::endgroup::")
            print(
                workflow_command(
                    "notice",
                    f"base-report {args.base_report} not found: no comparison this time",
                    title="onnx-gate",
                )
            )
        elif not head.is_file():
            print("::endgroup::")
            print("no report.json to compare")
        else:
            compare_dir = str(Path(args.output_dir) / "compare")
            compare_code = fenced(
                [*onnx_gate(args.python), "compare",
                 args.base_report, str(head), "--output-dir", compare_dir]
            )  # fmt: skip
            print(f"onnx-gate compare exited with {compare_code}", flush=True)
            print("::endgroup::", flush=True)
            if compare_code not in (0, 1):
                print(
                    workflow_command(
                        "notice",
                        f"the comparison with {args.base_report} could not be made (exit {compare_code}); the gate's verdict stands",
                        title="onnx-gate",
                    )
                )
    set_outputs(
        {"exit-code": code, "compare-exit-code": "" if compare_code is None else compare_code}
    )
    return 0


# --- comment --------------------------------------------------------------------------

Request = Callable[[str, str, Mapping[str, Any] | None], tuple[int, Any]]
"""``request(method, url, json_body) -> (status, decoded JSON)``; raises ``HTTPError``
or ``URLError`` like urllib."""


def urllib_request(token: str) -> Request:
    def request(method: str, url: str, body: Mapping[str, Any] | None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/vnd.github+json")
        req.add_header("Authorization", f"Bearer {token}")
        req.add_header("X-GitHub-Api-Version", "2022-11-28")
        req.add_header("User-Agent", "onnx-gate-action")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None

    return request


@dataclass(frozen=True)
class PullRequest:
    number: int | None
    fork: bool
    reason: str = ""


def pull_request_of(event_name: str, event: Mapping[str, Any]) -> PullRequest:
    """The pull request this run is for and whether its token is read-only because the
    head is a fork (``pull_request`` events; ``pull_request_target`` runs with the base's
    token, so it can comment)."""
    pr = event.get("pull_request")
    if isinstance(pr, Mapping) and isinstance(pr.get("number"), int):
        head_repo = (pr.get("head") or {}).get("repo") or {}
        base_repo = (pr.get("base") or {}).get("repo") or {}
        # A deleted fork leaves head.repo null. (head.repo.fork is no test: a repository that
        # is itself a fork has it set for its own branches too.)
        fork = not head_repo or head_repo.get("full_name") != base_repo.get("full_name")
        return PullRequest(pr["number"], fork and event_name != "pull_request_target")
    issue = event.get("issue")
    if (
        isinstance(issue, Mapping)
        and issue.get("pull_request")
        and isinstance(issue.get("number"), int)
    ):
        return PullRequest(issue["number"], False)
    if event_name.startswith("pull_request"):
        return PullRequest(
            None, False, "the event payload (GITHUB_EVENT_PATH) names no pull request"
        )
    return PullRequest(None, False, f"the {event_name or 'unknown'} event is not a pull request")


def comment_digest(
    report: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]], extra: str = ""
) -> str:
    """What ``on-change`` compares: the verdict and each budget's status, not the timings."""
    state = {
        "verdict": (report or {}).get("verdict"),
        "models": [(m.get("name"), m.get("verdict")) for m in (report or {}).get("models") or []],
        "chosen": (report or {}).get("chosen"),
        "rows": [(r.get("model"), r.get("id"), r.get("status")) for r in rows],
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]


def comment_body(markdown: str, digest: str, env: Mapping[str, str]) -> str:
    note = (
        f"> ✂️ Cut to fit a comment: the whole report is in the job summary and artifact "
        f"({run_url(env) or 'see the workflow run'})."
    )
    body = cap_markdown(markdown, COMMENT_CAP, note)
    link = run_url(env)
    footer = f"\n<sub>[workflow run]({link})</sub>\n" if link else ""
    return f"{MARKER}\n{DIGEST_PREFIX}{digest} -->\n{body.rstrip()}\n{footer}"


def existing_digest(body: str) -> str | None:
    match = re.search(re.escape(DIGEST_PREFIX) + r"([0-9a-f]+) -->", body)
    return match.group(1) if match else None


def find_comment(request: Request, api: str, repo: str, number: int) -> Mapping[str, Any] | None:
    for page in range(1, 11):
        _, comments = request(
            "GET", f"{api}/repos/{repo}/issues/{number}/comments?per_page=100&page={page}", None
        )
        for comment in comments or []:
            if MARKER in str(comment.get("body") or ""):
                return comment
        if not comments or len(comments) < 100:
            return None
    return None


@dataclass
class CommentResult:
    action: str  # created | updated | unchanged | skipped | degraded
    reason: str = ""
    url: str = ""


def post_comment(
    markdown: str,
    digest: str,
    mode: str,
    env: Mapping[str, str],
    request: Request | None = None,
) -> CommentResult:
    """Create or update the sticky comment; never raises for GitHub's or the network's
    sake (a fork, a missing or read-only token, an API error: ``degraded``)."""
    if mode == "off":
        return CommentResult("skipped", "comment: off")
    event_name = env.get("GITHUB_EVENT_NAME", "")
    try:
        event = json.loads(Path(env.get("GITHUB_EVENT_PATH", "")).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        event = {}
    pr = pull_request_of(event_name, event if isinstance(event, Mapping) else {})
    if pr.number is None:
        return CommentResult("skipped", pr.reason)
    if pr.fork:
        return CommentResult(
            "degraded",
            f"pull request #{pr.number} comes from a fork, so this run's token is read-only",
        )
    token = env.get("GITHUB_TOKEN", "")
    if request is None and not token:
        return CommentResult("degraded", "no token (set the action's token input)")
    repo = env.get("GITHUB_REPOSITORY", "")
    if not repo:
        return CommentResult("degraded", "GITHUB_REPOSITORY is not set")
    api = env.get("GITHUB_API_URL", "https://api.github.com").rstrip("/")
    request = request or urllib_request(token)
    body = comment_body(markdown, digest, env)
    try:
        existing = find_comment(request, api, repo, pr.number)
        if existing is not None:
            if mode == "on-change" and existing_digest(str(existing.get("body") or "")) == digest:
                return CommentResult(
                    "unchanged", "the result did not change", existing.get("html_url", "")
                )
            _, made = request(
                "PATCH", f"{api}/repos/{repo}/issues/comments/{existing['id']}", {"body": body}
            )
            return CommentResult("updated", "", (made or {}).get("html_url", ""))
        _, made = request("POST", f"{api}/repos/{repo}/issues/{pr.number}/comments", {"body": body})
        return CommentResult("created", "", (made or {}).get("html_url", ""))
    except urllib.error.HTTPError as exc:
        hint = (
            " (the token is read-only: grant `pull-requests: write`)"
            if exc.code in (401, 403, 404)
            else ""
        )
        return CommentResult("degraded", f"GitHub answered {exc.code} {exc.reason}{hint}")
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
        return CommentResult("degraded", f"the GitHub API could not be reached: {exc}")


def comment_main(args: argparse.Namespace) -> int:
    env = os.environ
    try:
        output_dir = Path(args.output_dir)
        report = load_report(output_dir)
        exit_code = _parse_code(args.exit_code)
        if exit_code is None:
            exit_code = int((report or {}).get("exit_code", 3))
        compare_code = _parse_code(args.compare_exit_code)
        rows = budget_rows(report, PolicyLines()) if report else []
        verdict = report_verdict(report, exit_code)
        action_code = action_exit_code(verdict, exit_code, rows, args.fail_on, compare_code)
        compare_dir = Path(args.compare_dir) if args.compare_dir else None
        markdown = render_summary(
            report, rows, output_dir,
            exit_code=exit_code, action_code=action_code, fail_on=args.fail_on,
            compare_dir=compare_dir, compare_exit_code=compare_code, env=env,
        )  # fmt: skip
        digest = comment_digest(report, rows, f"{action_code}:{compare_code}")
        result = post_comment(markdown, digest, args.mode, env)
    except Exception as exc:  # a comment must never fail the job
        result = CommentResult("degraded", f"internal error: {exc}")
        markdown = ""
    if result.action == "degraded":
        print(
            workflow_command(
                "notice",
                f"no pull-request comment: {result.reason}. The report is in the job summary.",
                title="onnx-gate",
            )
        )
        note = f"> ℹ️ onnx-gate did not comment on the pull request: {result.reason}.\n"
        if args.summary_written or not markdown:
            append_summary(note)
        else:
            append_summary(
                cap_markdown(markdown, SUMMARY_CAP - summary_size(), "> ✂️ Cut.") + "\n" + note
            )
    elif result.action == "skipped":
        print(f"no pull-request comment: {result.reason}")
    else:
        print(f"pull-request comment {result.action}{': ' + result.url if result.url else ''}")
    set_outputs({"comment": result.action})
    return 0


# --- command line ---------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gate.ci.github", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run onnx-gate (and compare with a base report)")
    run.add_argument("--output-dir", required=True)
    run.add_argument("--policy", default="")
    run.add_argument("--args", default="", help="extra onnx-gate arguments, split like a shell")
    run.add_argument("--merge", default="", help="merge these shard output folders (globs)")
    run.add_argument("--base-report", default="", help="main's report.json to compare with")
    run.add_argument("--python", default=None, help="interpreter with onnx-gate installed")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--output-dir", required=True)
        p.add_argument("--exit-code", default=None, help="the gate's exit code")
        p.add_argument("--fail-on", choices=FAIL_ON, default="error")
        p.add_argument("--compare-dir", default=None)
        p.add_argument("--compare-exit-code", default=None)

    report = sub.add_parser("report", help="step outputs, job summary and annotations")
    common(report)
    report.add_argument("--artifact-name", default="")
    report.add_argument("--artifact-url", default="")
    report.add_argument(
        "--no-summary", dest="summary", action="store_false", help="write no job summary"
    )

    comment = sub.add_parser("comment", help="the sticky pull-request comment")
    common(comment)
    comment.add_argument("--mode", choices=COMMENT_MODES, default="on-change")
    comment.add_argument(
        "--summary-written",
        action="store_true",
        help="the report step already wrote the job summary: on degrading, only add a note",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"run": run_main, "report": report_main, "comment": comment_main}
    return handlers[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
