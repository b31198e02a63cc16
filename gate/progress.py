"""Progress while a run takes minutes: a live line on a terminal, plain
timestamped lines in CI logs (no spinners or escape codes when not a TTY)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gate.errors import bounded

Progress = Callable[[str], None]

RESULT_PREFIX = "measured "
"""Messages starting with this are results: kept on screen, not just shown in passing."""


@contextmanager
def progress(quiet: bool = False, live: bool | None = None) -> Iterator[Progress]:
    """A progress callback for the CLI; ``live`` defaults to whether stderr is a terminal."""
    started = time.perf_counter()
    if quiet:
        yield lambda message: None
        return
    if live is None:
        live = sys.stderr.isatty()
    if not live:

        def plain(message: str) -> None:
            line = bounded(f"[{time.perf_counter() - started:6.1f}s] {message}")
            print(line, file=sys.stderr, flush=True)

        yield plain
        return

    from rich.console import Console

    console = Console(stderr=True)
    with console.status("starting") as status:

        def update(message: str) -> None:
            message = bounded(message)
            elapsed = time.perf_counter() - started
            if message.startswith(RESULT_PREFIX):
                console.print(
                    f"[dim]{elapsed:6.1f}s[/dim] {message[len(RESULT_PREFIX) :]}", highlight=False
                )
            status.update(f"{message}  [dim]{elapsed:.0f}s[/dim]")

        yield update
