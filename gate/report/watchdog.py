"""The last word when the gate's own process hangs in native code.

ONNX Runtime runs a model with Python's lock released, so while a session is stuck in
native code (a Loop that never ends, a kernel that deadlocks) Python's signal handlers
never run: a CI timeout's SIGTERM does nothing, its SIGKILL a few seconds later loses
the report, and the job shows nothing but "killed". The watchdog is a thread woken by
the signal itself (``signal.set_wakeup_fd`` writes its number to a pipe at C level): if
the main thread has not taken the signal within ``GRACE_S``, it writes every live
report.json as partial, saying which signal came and that the run was stuck in native
code, and ends the process with exit 3 (the runtime-error code) before the SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gate.exitcodes import ExitCode

GRACE_S = 3.0
"""How long the main thread has to take a signal before the watchdog writes for it.
CI runners wait 10 s (GitLab, GitHub's cancel) between SIGTERM and SIGKILL."""

_live: list[tuple[Any, Path]] = []
_lock = threading.Lock()
_taken = threading.Event()
_writing = threading.Event()
_started = False


@contextlib.contextmanager
def watched(report: Any, output_dir: Path) -> Iterator[None]:
    """While the block runs, ``report`` (a ModelReport or SuiteReport) is written to
    ``output_dir`` by the watchdog should the process hang past a signal."""
    entry = (report, output_dir)
    with _lock:
        _live.append(entry)
    try:
        yield
    finally:
        with _lock:
            _live.remove(entry)


def signal_taken() -> None:
    """The main thread took the signal (its handler ran): it writes the report itself."""
    _taken.set()


@contextlib.contextmanager
def writing() -> Iterator[None]:
    """The main thread is writing the report files, with signals held until they are whole:
    a signal then is the main thread's to act on once they are (a slow fsync is no hang)."""
    with _lock:  # not while the watchdog writes: it ends the process when it is done
        _writing.set()
    try:
        yield
    finally:
        _writing.clear()


def start() -> bool:
    """Start the watchdog for SIGTERM and SIGINT (POSIX, main thread only); once."""
    global _started
    if _started or os.name != "posix" or threading.current_thread() is not threading.main_thread():
        return _started
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read,), name="onnx-gate-watchdog", daemon=True).start()
    _started = True
    return True


def _watch(read: int) -> None:
    while True:
        data = os.read(read, 16)
        numbers = [n for n in data if n in (signal.SIGTERM, signal.SIGINT)]
        if not numbers:
            continue
        if _taken.wait(GRACE_S) or _writing.is_set():
            return  # the main thread is unwinding, or writing, and acts on the signal itself
        with _lock:  # the main thread cannot start writing its own report past this point
            if _taken.is_set() or _writing.is_set():
                return
            _write_partial(signal.Signals(numbers[0]).name)
            os._exit(int(ExitCode.RUNTIME_ERROR))  # nothing else can run in a stuck process


def _write_partial(signal_name: str) -> None:
    """Every live report as report.json, partial, saying why (``_lock`` held)."""
    from gate.report.document import write_report_json
    from gate.report.model import mark_partial

    message = (
        f"{signal_name} arrived while the gate was stuck in native code (ONNX Runtime did not "
        f"return within {GRACE_S:g} s); this report is partial"
    )
    for report, output_dir in reversed(_live):  # the model's own report first, then its suite's
        with contextlib.suppress(Exception):  # one that cannot be written must not stop the rest
            mark_partial(report, message)
            write_report_json(report.to_json(), output_dir)
