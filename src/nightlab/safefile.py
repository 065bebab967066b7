"""Opening files a run could have planted: never through a symbolic link, never a FIFO or device.

The harness runs unsandboxed, but the training process may write in its run directory and its
worktree. A path there may therefore be a symlink to a private file (a data cache's key, the
harness's ``/proc/self/environ``), a FIFO that blocks the first ``open`` or ``read`` forever, or a
link to ``/dev/zero`` that never ends (docs/SECURITY.md: planted files). Every read or write of
such a path by name goes through here: the last component is opened with ``O_NOFOLLOW`` and
``O_NONBLOCK`` (a FIFO opens at once instead of waiting for a writer), and the descriptor must be
a regular file before a byte is read. :func:`special_entries` finds what a run left that is not
a regular file or a folder (or is a hard link), so the run can be made invalid.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from nightlab.paths import walk_stats

# Entries of a run directory looked at, at most: a run that leaves more is flagged for that.
WALK_CAP = 20_000


class NotRegularFile(OSError):
    """The path is a symlink, FIFO, socket or device where a regular file was expected."""


def _kind(mode: int) -> str:
    """What an entry is, in a word a reason can hold."""
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def open_regular(path: Path | str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """A descriptor on ``path``, which must be a regular file (not a link to one).

    Raises :class:`NotRegularFile` for anything else and OSError (FileNotFoundError...) as
    ``os.open`` does. The descriptor is blocking again once it is known to be a regular file.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symbolic link
            raise NotRegularFile(exc.errno, "a symlink, not a regular file", str(path)) from exc
        if exc.errno == errno.ENXIO:  # a FIFO opened for writing without a reader
            raise NotRegularFile(exc.errno, "a FIFO, not a regular file", str(path)) from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(errno.EINVAL, f"a {_kind(info.st_mode)}, not a regular file", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def open_read(path: Path | str) -> Iterator[BinaryIO]:
    """``open(path, "rb")`` for a regular file only (see :func:`open_regular`)."""
    with os.fdopen(open_regular(path), "rb") as handle:
        yield handle


def read_bytes(path: Path | str, limit: int | None = None) -> bytes:
    """The bytes of regular file ``path`` (at most ``limit``); raises as :func:`open_regular`."""
    with open_read(path) as handle:
        return handle.read() if limit is None else handle.read(limit)


def read_text(path: Path | str, limit: int | None = None) -> str:
    """The text of regular file ``path`` (undecodable bytes replaced); raises as :func:`open_regular`."""
    return read_bytes(path, limit).decode("utf-8", errors="replace")


def is_regular(path: Path | str) -> bool:
    """``path`` itself (not what a link points to) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def new_file(path: Path | str, mode: int = 0o644) -> int:
    """A write descriptor on a new, empty ``path``, whatever was there removed first: where a run
    may have planted a symlink, ``open(path, "w")`` or ``touch`` would write or create its target."""
    try:
        os.unlink(path)  # a link itself goes, never what it points to
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def create_new(path: Path | str) -> None:
    """Create ``path`` empty (a marker file), as :func:`new_file`."""
    os.close(new_file(path))


def special_entries(root: Path | str, cap: int = WALK_CAP) -> tuple[list[tuple[str, str]], bool]:
    """Entries under ``root`` that are neither regular files nor folders, as (relative path,
    description), and whether the walk stopped at ``cap`` entries. Links are never followed."""
    found: list[tuple[str, str]] = []
    for seen, (path, info) in enumerate(walk_stats(root), start=1):
        if seen > cap:
            return found, True
        if not stat.S_ISDIR(info.st_mode) and (not stat.S_ISREG(info.st_mode) or info.st_nlink > 1):
            # A hard link is a regular file that is also another file (a private one?).
            rel = os.path.relpath(path, root)
            found.append((rel, _describe(rel, path, info.st_mode, info.st_nlink)))
    return found, False


def _describe(rel: str, path: str, mode: int, links: int = 1) -> str:
    """``symlink run.log -> /target`` or ``FIFO sub/pipe``: what a reason names."""
    if stat.S_ISREG(mode):
        return f"hard link {rel} ({links} names)"
    if stat.S_ISLNK(mode):
        try:
            return f"symlink {rel} -> {os.readlink(path)}"
        except OSError:
            pass
    return f"{_kind(mode)} {rel}"
