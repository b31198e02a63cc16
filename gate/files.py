"""Opening the files a policy, a command line or a model names.

Only regular files are read (after following symbolic links): a FIFO blocks a reader
forever, ``/dev/zero`` never ends, and ``/proc`` files say they hold 0 bytes and then
produce the runner's secrets. A size from ``stat`` is not a bound, so every read goes
through :class:`BoundedReader`, which stops at its limit whatever the file turns out to be.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

PSEUDO_FILESYSTEMS = (Path("/proc"), Path("/sys"))
"""Kernel files that look regular to ``stat`` (``/proc/self/environ``) but are not data;
recognised by their device too, wherever they are mounted."""


def _pseudo(status: os.stat_result, resolved: Path | None = None) -> Path | None:
    """The kernel filesystem a file lives on (by its path, or its device), or None."""
    for root in PSEUDO_FILESYSTEMS:
        if resolved is not None and resolved.is_relative_to(root):
            return root
        try:
            if status.st_dev == os.stat(root).st_dev:
                return root
        except OSError:  # not Linux, or not mounted
            continue
    return None


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


def not_regular(path: Path) -> str | None:
    """Why ``path`` (symbolic links followed) is not a file the gate reads, or None when it
    is one, or does not exist (the caller names a missing file in its own words)."""
    try:
        status = os.stat(path)
        resolved = path.resolve()
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RuntimeError) as exc:  # a loop of links, a name too long
        return f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    return _problem(status, resolved)


def _problem(status: os.stat_result, resolved: Path | None = None) -> str | None:
    if not stat.S_ISREG(status.st_mode):
        return f"is {kind_of(status.st_mode)}, not a regular file"
    root = _pseudo(status, resolved)
    if root is not None:
        return f"is a kernel file under {root}, not a regular file"
    return None


class LimitExceeded(OSError):
    """A read went past the reader's limit."""


class BoundedReader(io.RawIOBase):
    """A seekable binary reader that refuses to return bytes past offset ``limit``: more
    data than the limit raises :class:`LimitExceeded` instead of filling memory."""

    def __init__(self, raw: BinaryIO, limit: int, status: os.stat_result) -> None:
        super().__init__()
        self._raw, self._limit = raw, limit
        self.status = status
        """``fstat`` of the opened file (no ``fileno``: nothing may read around the limit)."""
        self.size = status.st_size
        """What ``stat`` said: the file's size for a regular file, never a bound."""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._raw.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readall(self) -> bytes:
        # One read of the expected size: RawIOBase's chunked readall would hold the file
        # twice at its peak (a 2 GB model: 4 GB).
        expected = max(0, min(self.size, self._limit) - self._raw.tell())
        data = self._raw.read(expected) if expected else b""
        rest = self.read(1 << 16)
        if not rest:
            return data
        chunks = [data, rest]  # longer than stat said (still growing): the limit holds
        while rest:
            rest = self.read(1 << 16)
            chunks.append(rest)
        return b"".join(chunks)

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
        problem = _problem(status)  # again on what was opened: a swap since is caught
        if problem:
            raise refuse(problem)
        os.set_blocking(descriptor, True)
        raw = os.fdopen(descriptor, "rb", buffering=0)
    except BaseException:
        os.close(descriptor)
        raise
    with BoundedReader(raw, limit, status) as reader:  # type: ignore[arg-type]
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


def umask() -> int:
    """The process's umask, read without changing it where Linux says it."""
    try:  # os.umask would change it, for a moment, in every thread
        status = Path("/proc/self/status").read_text(encoding="ascii")
        return int(re.search(r"^Umask:\s*([0-7]+)", status, re.MULTILINE).group(1), 8)  # type: ignore[union-attr]
    except (OSError, AttributeError, ValueError):
        current = os.umask(0o022)
        os.umask(current)
        return current


def temp_beside(destination: Path, suffix: str = ".tmp") -> Path:
    """A new empty file beside ``destination``, under a fresh name created exclusively, for
    a write that is then renamed into place. A fixed temporary name in an output folder a
    pull request can fill would follow a committed symbolic link out of it (and overwrite
    what it points at) or block on a FIFO."""
    handle, name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=suffix, dir=destination.parent
    )
    os.close(handle)
    os.chmod(name, 0o666 & ~umask())  # mkstemp's 0600 would hide artifacts from the group
    return Path(name)


def within(folder: Path, name: object) -> Path | None:
    """``folder / name`` for a relative name a report or stage file gives (``models/a``,
    ``model.onnx``), or None when it is absolute or climbs out with ``..``: a report read
    back may come from another job, and must not point the gate at the machine's files."""
    if not isinstance(name, str) or not name:
        return None
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        return None
    return folder / relative


COPY_MAX_BYTES = 1 << 42
"""A file copied between the gate's own folders (stage bundles, merged shards): 4 TB."""


def copy_regular(source: Path, target: Path) -> None:
    """Copy one regular file (``OSError`` for anything else), written beside ``target``
    under a fresh name and renamed into place."""
    temp = temp_beside(target)
    try:
        with open_regular(source, COPY_MAX_BYTES, OSError) as reader, temp.open("wb") as out:
            shutil.copyfileobj(reader, out, 1 << 20)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def copy_folder(source: Path, target: Path, skip: Container[str] = ()) -> None:
    """Copy a folder the gate wrote (a stage bundle, a shard's model folder) holding only
    folders and regular files; a symbolic link, FIFO, socket or device in it is refused
    with ``OSError`` naming it, never followed or read. ``skip``: names left out at the top."""
    target.mkdir(parents=True, exist_ok=True)
    with os.scandir(source) as entries:
        for entry in entries:
            if entry.name in skip:
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                raise OSError(f"{path} is a symbolic link; the gate writes none there")
            if entry.is_dir(follow_symlinks=False):
                copy_folder(path, target / entry.name)
            else:
                copy_regular(path, target / entry.name)


SECRET_NAME = re.compile(
    r"(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|PRIVATE_KEY|API_?KEY|ACCESS_KEY|"
    r"SECRET_KEY|AUTH_TOKEN)(?:$|_)",
    re.IGNORECASE,
)
"""Environment variables whose values never appear in a report: GITHUB_TOKEN,
CI_JOB_TOKEN, AWS_SECRET_ACCESS_KEY, ONNX_GATE_API_TOKEN, HF_TOKEN, ..."""
SECRET_MIN_LENGTH = 12
"""Shorter values (``CACHE_KEY=999999``) would mask ordinary text and numbers."""


def _secrets() -> list[str]:
    values = {
        value
        for name, value in os.environ.items()
        if SECRET_NAME.search(name)
        and len(value) >= SECRET_MIN_LENGTH
        and not value.replace(".", "").replace("-", "").isdigit()
    }
    # Also as JSON writes them (a quote or backslash inside is escaped there).
    values |= {json.dumps(value)[1:-1] for value in values}
    return sorted(values, key=len, reverse=True)


def scrub(text: str) -> str:
    """Mask secret environment values and write the home folder as ``~``: reports are CI
    artifacts anyone who can read the pipeline can download."""
    for value in _secrets():
        text = text.replace(value, "***")
    home = os.path.expanduser("~")
    if len(home) > 1 and home != os.sep:
        text = text.replace(home.rstrip(os.sep) + os.sep, "~" + os.sep)
    return text


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a crash never leaves half a file; secrets and
    the home folder are scrubbed on the way (see :func:`scrub`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temp, 0o666 & ~umask())  # mkstemp's 0600 would hide reports from the group
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(scrub(text))
            stream.flush()
            os.fsync(stream.fileno())  # on disk before the name points at it
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
