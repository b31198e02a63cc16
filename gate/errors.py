"""Expected failures. Each carries the exit code it maps to; the CLI prints
its message on one line per problem and never a traceback."""

from __future__ import annotations

from collections.abc import Iterable

from gate.exitcodes import ExitCode


class GateError(Exception):
    """Base class for failures a user can act on."""

    exit_code: ExitCode = ExitCode.RUNTIME_ERROR

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        message = one_line(message)
        super().__init__(message)
        self.message = message
        self.problems = [one_line(problem) for problem in problems or []]

    def lines(self) -> list[str]:
        return self.problems or [self.message]


_CONTROL = {code: f"\\x{code:02x}" for code in (*range(32), 127)}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def one_line(text: str) -> str:
    """A message is one line even when it quotes a policy string holding a newline or a
    terminal escape: CI logs and annotations split on newlines, and one problem must not
    read as several (or as an injected command)."""
    return text.translate(_CONTROL)


class UsageError(GateError):
    """The command line or the policy is wrong (exit 2)."""

    exit_code = ExitCode.USAGE_ERROR


class PolicyError(UsageError):
    """The policy file is unreadable or invalid; ``problems`` has one line each."""


class ModelError(GateError):
    """The model file cannot be read, checked or run (exit 3)."""


class PluginError(GateError):
    """A plugin failed to load, registered a clashing name, or raised (exit 3)."""


class OptionError(UsageError):
    """Raised by a plugin whose options do not fit the model it was given (exit 2), e.g. a
    SavedModel signature it lacks. The host names the plugin; the message says the rest."""


class UnknownNameError(UsageError):
    """A policy names a backend no plugin registered; the message lists valid ones."""


class SkipCandidate(Exception):
    """Raised by a plugin to decline a model, with the reason shown in the report.

    For example a quantiser given a model that is already quantised. The
    candidate is recorded as ``skipped``, not ``failed``.
    """


class InterruptedAfterReport(KeyboardInterrupt):
    """A signal that arrived while a finished run's reports were written: they are whole
    and say the verdict, so the command exits with ``exit_code``, not as interrupted."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"interrupted after the report was written (exit {exit_code})")
        self.exit_code = exit_code


SHOWN_NAMES = 8
"""Names a message lists before it says how many more there are."""
MAX_LINE = 400
"""Characters of one line on a console, in summary.md or an annotation; report.json keeps all."""


def listed(names: Iterable[object], empty: str = "none", shown: int = SHOWN_NAMES) -> str:
    """``a, b, c``, or the first few and ``and 19,992 more``: a data file of 20,000 arrays
    must not make one problem a line of 150,000 characters."""
    items = [str(name) for name in names]
    if not items:
        return empty
    if len(items) <= shown:
        return ", ".join(items)
    return ", ".join(items[:shown]) + f" and {len(items) - shown:,} more"


def bounded(line: str, limit: int = MAX_LINE) -> str:
    """One line cut to ``limit`` characters, saying how long it was and where the rest is."""
    if len(line) <= limit:
        return line
    return line[: limit - 60].rstrip() + f"... ({len(line):,} characters; all in report.json)"


def first_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's first line, bounded: what a report says of an unexpected failure."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
