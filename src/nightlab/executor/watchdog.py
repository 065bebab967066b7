"""A run's watchdog: the run's process tree dies with the harness that started it.

The harness kills a run at its timeout, and with it on Ctrl-C or SIGTERM; but a harness killed
with ``kill -9`` (or by the OOM killer, or a crash of the interpreter) kills nothing: the run
lives on in its own session, re-parented to init, holding the GPU for as long as its script
likes. ``PR_SET_PDEATHSIG`` does not cover it (it fires when the forking *thread* ends, and
reaches only the direct child, not the trainer the shell started). So every run gets this
small process beside it:

* its stdin is a pipe whose only write end the harness holds (non-inheritable, so no training
  process can hold it open); the kernel closes it when the harness dies, however it dies;
* at end of file it looks at what it read: ``done`` means the harness finished the run itself,
  and it exits; anything else means the harness is gone, and it kills the run: SIGTERM to every
  process carrying the run's tag in its environment (``NIGHTLAB_PROCESS_TAG``, which every
  descendant inherits) and to the run's process group, then SIGKILL after the grace period.

Given folders after those arguments, it also removes them once the run is dead (a Ray node's
scratch folder of a task whose worker was killed); ``-`` as TAG guards folders only.

It runs as ``python -I -S watchdog.py PID TAG GRACE [FOLDER ...]`` in a session of its own (a
Ctrl-C at the terminal, sent to the harness's process group, does not reach it), imports only
the standard library and nothing of nightlab, and starts in a few milliseconds. It detaches at
once (a double fork: the process the harness started prints the watchdog's pid and exits), so
it is not a child of the harness: a supervisor that kills a dead worker's direct children with
it (Ray does, when a task is force-cancelled) would otherwise kill the watchdog just when it is
needed. It carries no tag itself, so neither the harness's tree-kill nor :func:`~nightlab.executor.proctree.kill_orphaned_runs`
mistakes it for part of a run.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import sys
import time

TAG_VARIABLE = "NIGHTLAB_PROCESS_TAG"  # the same name as proctree.TAG_VARIABLE (no imports here)
DONE = b"done"
NO_TAG = "-"  # folders to remove, no run to kill


def tagged(tag: str) -> list[int]:
    """Pids of this user's processes whose environment carries ``tag`` (zombies excluded)."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    me, uid = os.getpid(), os.getuid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def kill_run(main_pid: int, tag: str, grace: float) -> int:
    """SIGTERM the run (its tagged processes and its group), SIGKILL what is left after
    ``grace`` seconds; returns how many processes were signalled."""
    signalled: set[int] = set()

    def send(sig: int) -> None:
        pids = tagged(tag)
        if main_pid in pids:  # the group is still the run's: its leader carries the tag
            try:
                os.killpg(main_pid, sig)
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, sig)
                signalled.add(pid)
            except OSError:
                pass

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and tagged(tag):
        time.sleep(0.05)
    send(signal.SIGKILL)
    return len(signalled)


def detach() -> None:
    """Fork; the parent prints the child's pid on stdout and exits, the child goes on as the
    watchdog, re-parented to init (or to the nearest subreaper) once its parent is gone. Where
    fork fails this process stays the watchdog itself and says so with its own pid."""
    try:
        child = os.fork()
    except OSError:
        child = 0
        os.write(1, f"{os.getpid()}\n".encode())
    if child:
        os.write(1, f"{child}\n".encode())
        os._exit(0)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the harness reads the pid to end of file: nothing here holds it open
    os.close(devnull)


def remove_folder(path: str, patience: float) -> bool:
    """``rm -rf path``, read-only files included, retried while dying processes still write
    there; True once it is gone."""

    def writable(func, target, _exc) -> None:
        try:
            os.chmod(os.path.dirname(target), stat.S_IRWXU)
            os.chmod(target, stat.S_IRWXU)
            func(target)
        except OSError:
            pass

    deadline = time.monotonic() + patience
    while True:
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=writable)
        else:
            shutil.rmtree(path, onerror=writable)
        if not os.path.lexists(path) or time.monotonic() > deadline:
            return not os.path.lexists(path)
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    main_pid, tag, grace = int(argv[1]), argv[2], float(argv[3])
    folders = argv[4:]
    detach()
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    received = b""
    while True:
        try:
            chunk = os.read(0, 64)
        except InterruptedError:
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
    if received.startswith(DONE):
        return 0
    if tag != NO_TAG:
        kill_run(main_pid, tag, grace)
    for folder in folders:
        remove_folder(folder, patience=grace + 5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
