"""The run's watchdog with real processes: a harness killed with ``kill -9`` takes its run along
(escaped descendants included), and a harness that finishes its run leaves no watchdog behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from nightlab.executor.process import Limits, Watchdog, run_process

from .test_local import dead, read_pids, spec, write_script

HARNESS = """
from pathlib import Path
from nightlab.executor.process import Limits, Watchdog, run_process
from nightlab.types import RunSpec
root = Path({root!r})
run_process(
    RunSpec(command={command!r}, cwd=root, run_dir=root / "run", seed=0, timeout=60),
    Limits(poll_interval=0.05, grace_seconds=1.0),
)
"""


WAIT_FOR_TERM = """
import os, signal, sys
name, folder = sys.argv[1], sys.argv[2]
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
with open(os.path.join(folder, "pids"), "a") as f:
    f.write(f"{os.getpid()}\\n")
info = signal.sigwaitinfo({signal.SIGTERM})  # who sent it: the watchdog, or someone else
with open(os.path.join(folder, "sender-" + name), "w") as f:
    f.write(str(info.si_pid))
"""


def _starter_pid(child: psutil.Process) -> int | None:
    """``child``'s pid if it is the short-lived process that starts a watchdog (or already gone)."""
    try:
        return child.pid if any(p.endswith("watchdog.py") for p in child.cmdline()) else None
    except psutil.NoSuchProcess:
        return child.pid


def _run_shell_of(harness: psutil.Process) -> list[psutil.Process]:
    """The harness's children but the watchdog's starter. Right after its fork the starter still
    shows the harness's own command line (until it execs), so on a loaded machine it can look
    like a second child for a while: wait until one child is left."""
    deadline = time.monotonic() + 10
    while True:
        found = [c for c in harness.children() if c.pid != _starter_pid(c)]
        if len(found) == 1 or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def _watchdog_of(harness: psutil.Process, run_pid: int) -> psutil.Process:
    """The detached watchdog guarding the run whose main process is ``run_pid``, once the
    process that started it (briefly the harness's child, with the same command line) is gone."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline", "ppid"]):
            cmdline = proc.info["cmdline"] or []
            is_watchdog = any(part.endswith("watchdog.py") for part in cmdline)
            if is_watchdog and str(run_pid) in cmdline and proc.info["ppid"] != harness.pid:
                return proc
        time.sleep(0.02)
    raise AssertionError(f"no watchdog guards run {run_pid}")


@pytest.mark.parametrize("children_too", [False, True], ids=["harness", "harness-and-its-children"])
def test_kill_9_of_the_harness_kills_the_run_and_what_escaped_from_it(
    tmp_path: Path, children_too: bool
) -> None:
    """``children_too``: the harness dies with its direct children, as a Ray worker does when its
    task is force-cancelled (the raylet kills the worker's children): the detached watchdog is
    not among them and still takes the run down."""
    pids = tmp_path / "pids"
    waiter = write_script(tmp_path, WAIT_FOR_TERM, "wait_for_term.py")
    # The run's own process, and one that left its process group and session (setsid): both
    # carry the run's tag; neither is a child of the harness.
    py = f"{sys.executable} {waiter}"
    command = f"setsid {py} escaped {tmp_path} & {py} main {tmp_path} & wait"
    harness = write_script(
        tmp_path, textwrap.dedent(HARNESS.format(root=str(tmp_path), command=command)), "h.py"
    )
    proc = psutil.Popen([sys.executable, str(harness)])
    try:
        run_pids = read_pids(pids, 2, within=20)
        (shell,) = _run_shell_of(proc)
        watchdog = _watchdog_of(proc, shell.pid)  # not a child of the harness
        assert watchdog not in proc.children()
        proc.kill()  # kill -9: nothing in the harness runs any more
        if children_too:
            shell.kill()
        proc.wait(10)
        assert all(dead(pid, within=5) for pid in run_pids), [p for p in run_pids if psutil.pid_exists(p)]
        # Killed by the harness's watchdog (not by chance, nor by another nightlab's orphan sweep).
        for name in ("main", "escaped"):
            assert (tmp_path / f"sender-{name}").read_text() == str(watchdog.pid), name
    finally:
        if proc.is_running():
            proc.kill()


def test_a_released_watchdog_exits_and_leaves_its_run_alone(tmp_path: Path) -> None:
    run = psutil.Popen(["sleep", "30"])
    try:
        guard = Watchdog(run.pid, "t-released", grace=1.0)
        assert guard.pid is not None
        watchdog = psutil.Process(guard.pid)
        assert watchdog.is_running() and watchdog.ppid() != os.getpid()
        guard.release()
        watchdog.wait(5)  # raises TimeoutExpired if it lingers
        assert run.is_running() and run.status() != psutil.STATUS_ZOMBIE
    finally:
        run.kill()
        run.wait()


def test_a_run_that_ends_normally_keeps_its_result(tmp_path: Path) -> None:
    script = write_script(tmp_path, "print('---')\nprint('val_loss: 1.25')\n")
    result = run_process(spec(tmp_path, f"{sys.executable} {script}"), Limits(poll_interval=0.02))
    assert result.status.value == "ok" and result.metrics["val_loss"] == 1.25


def test_the_watchdog_finds_a_run_by_its_tag(tmp_path: Path) -> None:
    from nightlab.executor.watchdog import kill_run, tagged

    pids = tmp_path / "pids"
    child = psutil.Popen(
        ["sh", "-c", f"sleep 30 & echo $! > {pids}; wait"],
        env={"NIGHTLAB_PROCESS_TAG": "t-1", "PATH": "/usr/bin:/bin"},
    )
    (grandchild,) = read_pids(pids, 1)
    assert set(tagged("t-1")) >= {child.pid, grandchild}
    assert tagged("t-2") == []
    assert kill_run(child.pid, "t-1", grace=1.0) >= 2
    child.wait(5)
    assert dead(grandchild)


def test_a_watchdog_removes_its_folders_once_its_harness_is_gone(tmp_path: Path) -> None:
    """The guard of a Ray task's scratch folder: no run (tag ``-``), a folder (read-only files
    too) to delete when the process holding the pipe dies without releasing it."""
    scratch = tmp_path / "task-1"
    (scratch / "run").mkdir(parents=True)
    (scratch / "run" / "frozen.txt").write_text("x")
    (scratch / "run" / "frozen.txt").chmod(0o400)
    (scratch / "run").chmod(0o500)
    holder = write_script(
        tmp_path,
        f"""
import sys, time
sys.path[:0] = {sys.path!r}
from nightlab.executor.process import Watchdog
guard = Watchdog(0, "-", 1.0, remove=[{str(scratch)!r}])
print(guard.pid, flush=True)
time.sleep(60)
""",
        "holder.py",
    )
    proc = psutil.Popen([sys.executable, str(holder)], stdout=subprocess.PIPE, text=True)
    try:
        watchdog = psutil.Process(int(proc.stdout.readline()))
        assert scratch.exists()
        proc.kill()
        watchdog.wait(15)
        assert not scratch.exists()
    finally:
        proc.kill()
        proc.wait()
