"""Opening the files a policy, a command line or a model names.

Only regular files are read (after following symbolic links): a FIFO blocks a reader
forever, ``/dev/zero`` never ends, and ``/proc`` files say they hold 0 bytes and then
produce the runner's secrets. A size from ``stat`` is not a bound, so every read goes
through :class:`BoundedReader`, which stops at its limit whatever the file turns out to be.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

PSEUDO_FILESYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))
"""Kernel files that look regular to ``stat`` (``/proc/self/environ``) but are not data."""

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def kind_of(mode: int) -> str:
    """What a file with this ``st_mode`` is, as a message names it."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def not_regular(path: Path, *, folder_ok: bool = False) -> str | None:
    """Why ``path`` (symbolic links followed) is not a file the gate reads, or None when it
    is one, or does not exist (the caller names a missing file in its own words)."""
    try:
        mode = os.stat(path).st_mode
        resolved = path.resolve()
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RuntimeError) as exc:  # a loop of links, a name too long
        return f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if folder_ok and stat.S_ISDIR(mode):
        return None
    if not stat.S_ISREG(mode):
        return f"is {kind_of(mode)}, not a regular file"
    for root in PSEUDO_FILESYSTEMS:
        if resolved.is_relative_to(root):
            return f"is a kernel file under {root}, not a regular file"
    return None


class LimitExceeded(OSError):
    """A read went past the reader's limit."""


class BoundedReader(io.RawIOBase):
    """A seekable binary reader that refuses to return bytes past offset ``limit``: more
    data than the limit raises :class:`LimitExceeded` instead of filling memory."""

    def __init__(self, raw: BinaryIO, limit: int, size: int = 0) -> None:
        super().__init__()
        self._raw, self._limit = raw, limit
        self.size = size
        """What ``stat`` said: the file's size for a regular file, never a bound."""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._raw.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def fileno(self) -> int:
        return self._raw.fileno()

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        room = self._limit - self._raw.tell()
        view = memoryview(buffer).cast("B")
        if room <= 0:
            if len(view) and self._raw.read(1):
                raise LimitExceeded(f"more than {self._limit:,} bytes")
            return 0
        return self._raw.readinto(view[:room])  # type: ignore[attr-defined]

    def close(self) -> None:
        self._raw.close()
        super().close()


@contextmanager
def open_regular(
    path: Path,
    limit: int,
    refuse: Callable[[str], Exception],
) -> Iterator[BoundedReader]:
    """Open ``path`` for reading when it is a regular file; ``refuse(why)`` builds the error
    otherwise (``why`` reads after the file's name). Reading past ``limit`` bytes raises
    :class:`LimitExceeded`; the reader's ``size`` is what ``stat`` says, for an early refusal.

    The check is made on the opened descriptor, so a file swapped for a FIFO after an
    earlier check still never blocks (it is opened without waiting for a writer)."""
    problem = not_regular(path)
    if problem:
        raise refuse(problem)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise refuse(f"cannot be read ({exc.strerror or exc})") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise refuse(f"is {kind_of(status.st_mode)}, not a regular file")
        os.set_blocking(descriptor, True)
        raw = os.fdopen(descriptor, "rb", buffering=0)
    except BaseException:
        os.close(descriptor)
        raise
    with BoundedReader(raw, limit, status.st_size) as reader:  # type: ignore[arg-type]
        yield reader


def read_regular(path: Path, limit: int, refuse: Callable[[str], Exception]) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (see :func:`open_regular`)."""
    with open_regular(path, limit, refuse) as reader:
        if reader.size > limit:
            raise refuse(f"is {reader.size:,} bytes, over the limit of {limit:,}")
        try:
            return reader.read()
        except LimitExceeded:
            raise refuse(f"holds more than {limit:,} bytes") from None


REPORT_MAX_BYTES = 256_000_000
"""A report.json or stage file the gate reads back (compare, merge, stages): a big suite's
report is a few MB; a file past this was not written by the gate."""


def read_json(path: Path, limit: int, refuse: Callable[[str], Exception]) -> Any:
    """A JSON document from a regular file of at most ``limit`` bytes; ``ValueError`` when it
    is not JSON, ``FileNotFoundError`` when it is missing."""
    import json

    return json.loads(read_regular(path, limit, refuse).decode("utf-8"))
