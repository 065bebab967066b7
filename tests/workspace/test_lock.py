"""One harness per workspace: the lock itself, between real processes (the commands that take it
are tested through the CLI in tests/cli/test_harness.py)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nightlab.workspace.lock import LOCK_NAME, WorkspaceBusy, acquire, holder

HOLD = """
import sys, time
from pathlib import Path
from nightlab.workspace.lock import acquire
lock = acquire(Path(sys.argv[1]), command="nightlab run lab")
print("held", flush=True)
time.sleep(60)
"""

TRY = """
import sys
from pathlib import Path
from nightlab.errors import UserError
from nightlab.workspace.lock import acquire
try:
    acquire(Path(sys.argv[1]))
except UserError as exc:
    print(exc)
    sys.exit(2)
print("acquired")
"""


def hold_in_another_process(state: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD), str(state)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def try_from_another_process(state: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TRY), str(state)], capture_output=True, text=True, timeout=60
    )


def test_a_second_process_is_refused_with_one_line_naming_the_holder(tmp_path: Path) -> None:
    state = tmp_path / ".nightlab"
    lock = acquire(state, command="nightlab run lab --plain")
    refused = try_from_another_process(state)
    assert refused.returncode == 2, refused.stderr
    line = refused.stdout.strip()
    assert "\n" not in line and f"pid {os.getpid()}" in line and "nightlab run lab --plain" in line
    assert f"kill {os.getpid()}" in line and "is busy" in line
    who = holder(state)
    assert who is not None and who.pid == os.getpid()
    lock.release()
    assert holder(state) is None  # a released lock leaves no record behind
    assert try_from_another_process(state).stdout.strip() == "acquired"


def test_kill_9_of_the_holder_frees_the_workspace(tmp_path: Path) -> None:
    state = tmp_path / ".nightlab"
    proc = hold_in_another_process(state)
    try:
        who = holder(state)
        assert who is not None and who.pid == proc.pid and who.command == "nightlab run lab"
        with pytest.raises(WorkspaceBusy, match=f"pid {proc.pid}"):
            acquire(state)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        # The record is still in the file, but its process is gone: nobody holds the workspace.
        assert (state / LOCK_NAME).read_text().strip()
        assert holder(state) is None
        lock = acquire(state)
        assert lock.held
        lock.release()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_one_process_shares_its_lock_and_releases_it_with_the_last_holder(tmp_path: Path) -> None:
    state = tmp_path / ".nightlab"
    first = acquire(state)
    second = acquire(state)  # a study after a session, in the same process: not a conflict
    assert second is first
    del first, second
    gc.collect()
    assert try_from_another_process(state).stdout.strip() == "acquired"


def test_a_recorded_pid_taken_by_another_process_is_not_a_holder(tmp_path: Path) -> None:
    state = tmp_path / ".nightlab"
    state.mkdir()
    # A record of this very pid with another start time: a harness that died, its pid reused.
    (state / LOCK_NAME).write_text(f'{{"pid": {os.getppid()}, "start": "1", "command": "x", "since": "t"}}\n')
    assert holder(state) is None


def test_the_lock_is_not_inherited_by_child_processes(tmp_path: Path) -> None:
    state = tmp_path / ".nightlab"
    lock = acquire(state)
    # A training run started without closing descriptors still does not get the lock's.
    child = subprocess.Popen(["sleep", "30"], close_fds=False)
    try:
        lock.release()
        # With the child still running, the workspace is free: the child never held the lock.
        assert try_from_another_process(state).stdout.strip() == "acquired"
    finally:
        child.kill()
        child.wait()
