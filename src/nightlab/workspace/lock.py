"""One harness per workspace: the lock that ``run``, ``try``, ``validate``, ``ablate``, ``mcp``
and ``recover`` hold while they work.

Two harnesses on one workspace share a worktree, a ledger and a research branch: the second
"resumes" the first one's experiment in the same folder while it trains, and both records come
out wrong. So a harness takes an exclusive ``flock`` on ``.nightlab/harness.lock`` before it
touches anything, and a second one gets one line naming the holder and exit code 2.

Why ``flock``: the kernel releases it when the holder's last descriptor closes, so any exit
(an exception, ``kill -9``, the OOM killer, a power cut) frees the workspace with nothing to
clean up; the descriptor is not inherited by the training processes (Python opens files
non-inheritable), so an orphaned run cannot keep the workspace locked either.

The holder writes who it is (pid, its start time, the command) into the file. :func:`holder`
reads that back without taking the lock, so ``status`` and ``report`` never stand in the way of
a harness starting; a record whose process is gone (or whose pid now belongs to another
process) is a harness that died, and its unfinished experiment is shown as interrupted.

Within one process the lock is shared: opening the same workspace twice (a test, a study after
a session) reuses the held lock rather than locking itself out; it is released when the last
holder object is dropped, or by :meth:`WorkspaceLock.release`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from nightlab.errors import UserError

LOCK_NAME = "harness.lock"
_HELD: weakref.WeakValueDictionary[str, WorkspaceLock] = weakref.WeakValueDictionary()


class WorkspaceBusy(UserError):
    """Another live harness holds the workspace."""


@dataclass(frozen=True)
class Holder:
    """The harness holding a workspace, as it recorded itself."""

    pid: int
    command: str
    since: str

    def describe(self) -> str:
        """``pid 1234 (`nightlab run lab`, since 2025-11-22 01:42:31)``: how the busy message names it."""
        return f"pid {self.pid} (`{self.command}`, since {self.since})"


class WorkspaceLock:
    """The held lock of one workspace's state folder; see the module docstring."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Empty the record and unlock (also done when the object is dropped, or the process ends)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.pop(str(self.path), None)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # while still held: nobody reads a record of a harness that left
        os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


def acquire(state_dir: Path, command: str | None = None) -> WorkspaceLock:
    """Lock the workspace whose state folder is ``state_dir``, or raise :class:`WorkspaceBusy`.

    Never waits: a busy workspace is a mistake to report at once, not a queue. Keep the returned
    object for as long as the workspace must stay locked.
    """
    path = (Path(state_dir) / LOCK_NAME).resolve()
    held = _HELD.get(str(path))
    if held is not None and held.held:
        return held
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        found = _read_record(path)
        who = found[0] if found is not None else None
        named = f"nightlab {who.describe()}" if who is not None else "another nightlab"
        stop = f", or stop it with `kill {who.pid}`" if who is not None else ""
        raise WorkspaceBusy(
            f"workspace {path.parent.parent} is busy: {named} is working in it; "
            f"wait for it to finish{stop} (`nightlab status` works meanwhile)"
        ) from None
    record = {
        "pid": os.getpid(),
        "start": _start_mark(os.getpid()),
        "command": (command or _this_command())[:200],
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    lock = WorkspaceLock(path, fd)
    _HELD[str(path)] = lock
    return lock


def holder(state_dir: Path) -> Holder | None:
    """The live harness holding the workspace, or None; reads the record, never the lock.

    A record whose process has ended, or whose pid a later process has taken (its start time
    differs), belongs to a harness that died without releasing: None.
    """
    found = _read_record(Path(state_dir) / LOCK_NAME)
    if found is None:
        return None
    who, start = found
    return who if _alive(who.pid, start) else None


def _read_record(path: Path) -> tuple[Holder, str | None] | None:
    """The holder a lock file names and its recorded start mark; None for an empty file."""
    try:
        data = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return None
    who = Holder(int(data["pid"]), str(data.get("command", "")), str(data.get("since", "")))
    return who, (str(data["start"]) if data.get("start") else None)


def _alive(pid: int, start: str | None) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    mark = _start_mark(pid)
    return start is None or mark is None or mark == start


def _start_mark(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot (Linux): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()  # the name may hold spaces
        return fields[19].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def _this_command() -> str:
    """``nightlab run lab --plain`` for the command line that started this process."""
    args = sys.argv[1:]
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("__main__.py", "-m", "-c") or program.startswith("python"):
        program = "nightlab"
    return shlex.join([program, *args])
