"""data.exit_now: how train.py and evaluation.py end, skipping the interpreter's teardown.

Each script runs in a process of its own in the template workspace (conftest.py), as train.py
does: what it wrote must survive the quick exit (open files, atexit handlers, buffered stdout),
its exit code must be kept, and a live thread must still be waited for.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Written at teardown only: present when the interpreter freed its modules, absent when skipped.
MARKER = """
class Teardown:
    def __del__(self):
        sys.stderr.write("teardown ran\\n")
keep = Teardown()
"""


def run_script(workspace: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = workspace / "script.py"
    script.write_text("import atexit, sys, threading, time\nimport data\n" + MARKER + body)
    return subprocess.run(
        [sys.executable, str(script)], cwd=workspace, capture_output=True, text=True, timeout=60
    )


def test_exit_now_keeps_files_atexit_output_and_code_but_skips_teardown(workspace: Path) -> None:
    done = run_script(
        workspace,
        "text = open('out.txt', 'w'); text.write('kept text')\n"  # never flushed, never closed
        "raw = open('out.bin', 'wb'); raw.write(b'kept bytes')\n"
        "atexit.register(lambda: open('atexit.txt', 'w').write('handler ran'))\n"
        "print('printed', end='')\n"  # a pipe: block-buffered
        "data.exit_now(7)\n",
    )
    assert done.returncode == 7
    assert (workspace / "out.txt").read_text() == "kept text"
    assert (workspace / "out.bin").read_bytes() == b"kept bytes"
    assert (workspace / "atexit.txt").read_text() == "handler ran"
    assert done.stdout == "printed"
    assert "teardown ran" not in done.stderr  # the teardown was skipped


def test_exit_now_waits_for_a_live_thread_by_exiting_the_normal_way(workspace: Path) -> None:
    done = run_script(
        workspace,
        "def late():\n"
        "    time.sleep(0.5)\n"
        "    open('thread.txt', 'w').write('thread finished')\n"
        "threading.Thread(target=late).start()\n"
        "data.exit_now(3)\n",
    )
    assert done.returncode == 3
    assert (workspace / "thread.txt").read_text() == "thread finished"
    assert "teardown ran" in done.stderr  # the normal exit, which waits for threads


def test_exit_now_ignores_daemon_threads(workspace: Path) -> None:
    done = run_script(
        workspace,
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\ndata.exit_now(0)\n",
    )
    assert done.returncode == 0
    assert "teardown ran" not in done.stderr
