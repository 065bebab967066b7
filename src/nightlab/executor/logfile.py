"""The run's log and run directory on disk: reading the end, bounding the size.

A chatty or runaway script must not fill the disk through its log. Past ``log_limit_bytes``
the middle of the log is cut out: the head (how the run started, its configuration) and the
tail (how it ended, the traceback, the summary block) are what anyone reads, so those stay,
with a note of how many bytes were dropped between them. The run is paused (SIGSTOP) during
the cut so no line is lost or misplaced, and its output keeps going to the end of the file
because the log was opened in append mode.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from nightlab.paths import walk_stats
from nightlab.safefile import new_file, open_read
from nightlab.secrets import redact

_MB = 1024 * 1024
# Beyond this multiple of the limit between two checks the log cannot be trimmed fast enough.
OVERFLOW_FACTOR = 4


class Pausable(Protocol):
    def pause(self) -> None: ...

    def resume(self) -> None: ...


def read_end(path: Path, size: int) -> str:
    """The last ``size`` bytes of a file as text (starting at a line boundary when cut); "" when
    it is not a regular file: a run may have left a symlink or FIFO under its log's name."""
    try:
        with open_read(path) as handle:
            end = handle.seek(0, os.SEEK_END)
            start = max(0, end - size)
            handle.seek(start)
            data = handle.read()
    except OSError:
        return ""
    if start > 0:
        newline = data.find(b"\n")
        if newline >= 0:
            data = data[newline + 1 :]
    return data.decode("utf-8", errors="replace")


def _blocks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """The file in blocks of about ``size`` bytes that end at a line break where there is one,
    so a secret (never spanning lines) is never split between two blocks. Raises OSError when
    ``path`` is not a regular file (never follows a link a run planted, never blocks on a FIFO)."""
    with open_read(path) as handle:
        rest = b""
        while True:
            data = handle.read(size)
            if not data:
                if rest:
                    yield rest
                return
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # one line longer than a block: pass it on whole, in pieces
                yield data
                rest = b""
                continue
            yield data[:cut]
            rest = data[cut:]


def redact_file(path: Path, secrets: list[str]) -> bool:
    """Rewrite ``path`` with every secret redacted (see :func:`~nightlab.executor.env.redact`);
    True if anything was. Works block by block, so a big log is never all in memory, and
    rewrites only when something is found. Bytes that are not UTF-8 pass through unchanged."""

    def clean(block: bytes) -> bytes:
        text = block.decode("utf-8", errors="surrogateescape")
        return redact(text, secrets).encode("utf-8", errors="surrogateescape")

    try:
        if all(clean(block) == block for block in _blocks(path)):
            return False
        tmp = path.with_name(path.name + ".redacting")
        with os.fdopen(new_file(tmp), "wb") as out:  # never through a link the run left there
            for block in _blocks(path):
                out.write(clean(block))
        os.replace(tmp, path)
    except OSError:
        return False
    return True


def read_log(path: Path) -> str:
    """The whole text of a log or metrics file the run could have written; "" when it is gone or
    not a regular file (see :mod:`nightlab.safefile`)."""
    try:
        with open_read(path) as handle:
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def read_from(path: Path, offset: int) -> str:
    """The text of ``path`` from byte ``offset`` on ("" when it is gone or not a regular file)."""
    try:
        with open_read(path) as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def directory_usage(path: Path) -> int:
    """Bytes of disk used by everything under ``path`` (allocated blocks, so a sparse file
    counts for what it really takes; symbolic links are not followed)."""
    total = 0
    for _, info in walk_stats(path):
        blocks = getattr(info, "st_blocks", None)  # absent on Windows
        total += blocks * 512 if blocks is not None else info.st_size
    return total


class LogTrimmer:
    """Keeps a growing log under a limit by cutting out its middle (see the module docstring).

    Holds its own descriptor on the log, so a script that deletes or renames its log cannot
    hide the bytes it keeps writing.
    """

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = max(int(limit), 1024)
        self.cut_bytes = 0
        self._marker_len = 0
        self._fd = os.open(path, os.O_RDWR)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def check(self, tree: Pausable) -> str | None:
        """Trim the log if it is over the limit; a reason to kill the run if it cannot be kept
        under it (it grew past ``OVERFLOW_FACTOR`` times the limit between two checks)."""
        size = self.size()
        if size <= self.limit:
            return None
        if size > OVERFLOW_FACTOR * self.limit:
            return (
                f"log grew past {OVERFLOW_FACTOR * self.limit / _MB:.3g} MB faster than it could be "
                f"trimmed (log limit {self.limit / _MB:.3g} MB), killed"
            )
        tree.pause()
        try:
            self.cut()
        finally:
            tree.resume()
        return None

    def settle(self) -> None:
        """Bring the log under the limit once the run's processes are gone (no pause needed)."""
        if self.size() > self.limit:
            self.cut()

    def cut(self) -> None:
        """Replace the middle of the log by a one-line note, keeping a quarter of the limit at
        each end (cut at line boundaries where there are any)."""
        size = self.size()
        keep = self.limit // 4
        head = os.pread(self._fd, keep, 0)
        newline = head.rfind(b"\n")
        head_end = newline + 1 if newline >= keep // 2 else len(head)
        tail_start = max(head_end, size - keep)
        tail = os.pread(self._fd, size - tail_start, tail_start)
        newline = tail.find(b"\n")
        if 0 <= newline < len(tail) // 2:
            tail = tail[newline + 1 :]
        removed = size - head_end - len(tail) - self._marker_len
        self.cut_bytes += max(removed, 0)
        marker = (
            f"\n[nightlab: {self.cut_bytes} bytes cut from the middle of this log to keep it under "
            f"{self.limit} bytes ([run] log_limit_mb)]\n"
        ).encode()
        self._marker_len = len(marker)
        os.ftruncate(self._fd, head_end)
        os.pwrite(self._fd, marker + tail, head_end)
