"""The sandbox launcher's second half: it stays the program's parent and ends the run's orphans.

A training script can start a process that double-forks, calls ``setsid`` and ``execve``s with
an empty environment (attack A9, docs/SECURITY.md): it leaves the run's process group and drops
the run's tag, so nothing the harness looks for leads to it, and, re-parented to init, it
outlives the run. So the launcher (``sandbox.py``), once confined, makes itself a *child
subreaper* (``PR_SET_CHILD_SUBREAPER``): every orphaned descendant is re-parented to it instead
of init. It then forks, the child ``exec``s the program, and the launcher

* passes the signals sent to it (:data:`FORWARDED`) on to the program, except those from the
  run's keepers (the harness, named by the run's tag, and its watchdog, which carries the tag
  among its arguments): they send each signal to the run's process group and to every process
  of the run they know, the program included, and a second copy would run a handler twice;
* reaps whatever dies below it while the program runs (no zombies pile up);
* once the program has exited, SIGKILLs and reaps every process left below it, round after
  round (each one killed hands its own children to the launcher), then exits as the program
  did: the same exit code, or death by the same signal, so the harness sees what it saw when
  the launcher ``exec``ed the program.

One exception: when a keeper is ending the run (it sent SIGTERM, SIGINT, SIGHUP or SIGQUIT),
the processes it can find itself (still in the run's group, or carrying the tag) are left to
it: they have its signal and its grace period (a trainer saving a checkpoint: with ``/bin/sh -c``
as the program, the trainer is the shell's child and outlives it by that much), and the keeper
SIGKILLs them after it. The launcher waits for them, and from the keeper's signal on kills every
:data:`SWEEP` seconds each process below it that the keeper cannot find (the harness no longer
looks below the run once its main process has gone, which the group's SIGTERM ends at once).

It runs inside the launcher (``python -I -S``), so it imports the standard library only and
nothing of nightlab, and costs the run one small idle process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Sequence

_PR_SET_CHILD_SUBREAPER = 36  # include/uapi/linux/prctl.h
TAG_VARIABLE = "NIGHTLAB_PROCESS_TAG"  # the same name as proctree.TAG_VARIABLE (no imports here)
# What a user or a keeper may send a run. SIGSTOP cannot be caught: sent to the group (as
# ProcessTree.pause does) it stops the launcher with the program; SIGCONT is passed on.
FORWARDED = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGTERM,
    signal.SIGCONT,
    signal.SIGWINCH,
)
# A keeper sending one of these is ending the run (and sends SIGKILL after its grace period).
ENDING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# How long the launcher keeps killing what is left (a process stuck in the kernel is given up on).
PATIENCE = 5.0
# While a keeper ends the run: how often what it cannot find is looked for and killed.
SWEEP = 0.1


def become_subreaper() -> None:
    """Orphans below this process are re-parented to it from now on; raises OSError if refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def supervise(
    program: Sequence[str],
    prepare: Callable[[], None] | None = None,
    keeper: Callable[[signal.struct_siginfo], bool] | None = None,
) -> int:
    """Run ``program`` as a child, passing signals on, then kill what it left; its wait status.

    ``prepare`` runs in the child just before the ``exec`` (the launcher confines it there once
    more, in a Landlock domain of its own, so that the program cannot signal the launcher: kill
    it, and its orphans would go to init again); an OSError from it ends the child with 126.
    The signals are blocked before the fork and taken with ``sigwaitinfo`` (which tells who
    sent each one); the child puts back the mask and the SIGCHLD disposition it inherited, so
    the program starts as it would have from an ``exec`` of the launcher. ``keeper`` tells a
    keeper's signal from a user's (default: by its sender, :func:`keeps`; pid 1 of the run's PID
    namespace, which sees no sender's pid from outside, is given ``pidns.relayed``'s opposite).
    """
    watched = {*FORWARDED, signal.SIGCHLD}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    chld = signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # SIG_IGN would reap children for us
    child = os.fork()
    if child == 0:
        code = 126
        try:
            if prepare is not None:
                prepare()
            code = 127
            signal.signal(signal.SIGCHLD, signal.SIG_DFL if chld is None else chld)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.execvp(program[0], list(program))
        except BaseException as exc:  # a forked copy of the launcher must never go on as one
            what = "cannot confine the run" if code == 126 else f"cannot run {program[0]}"
            os.write(2, f"nightlab sandbox: {what} ({exc}); not started\n".encode(errors="replace"))
        os._exit(code)
    tag = os.environ.get(TAG_VARIABLE, "")
    if keeper is None:
        keeper = lambda info: keeps(info.si_pid, tag)  # noqa: E731
    ending = False
    while True:
        info = signal.sigtimedwait(watched, SWEEP) if ending else signal.sigwaitinfo(watched)
        if info is None:
            sweep(tag)
        elif info.si_signo == signal.SIGCHLD:
            status = _reap(child)
            if status is not None:
                kill_leftovers(tag if ending else None)
                return status
        elif keeper(info):
            if info.si_signo in ENDING and not ending:
                ending = True
                sweep(tag)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, info.si_signo)


def keeps(pid: int, tag: str) -> bool:
    """Whether ``pid`` keeps the run tagged ``tag``: its harness (the pid at the head of the tag)
    or its watchdog (a process with the tag among its arguments). An untagged run has none."""
    if not tag or pid <= 0:
        return False
    if tag.split(":", 1)[0] == str(pid):
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return tag.encode() in handle.read().split(b"\0")
    except OSError:
        return False


def _reap(child: int) -> int | None:
    """Reap every child that has ended; the wait status of ``child`` if it is among them."""
    found = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == child:
            found = status


def kill_leftovers(spare_tag: str | None = None, patience: float = PATIENCE) -> int:
    """SIGKILL and reap every process below this one, until none is left or ``patience`` seconds
    have passed; returns how many were killed. With ``spare_tag`` (a keeper is ending the run),
    those :func:`sweep` spares are waited for, however long."""
    deadline = time.monotonic() + patience
    killed: set[int] = set()
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return len(killed)  # no child left, living or zombie
        if spare_tag is None and time.monotonic() > deadline:
            return len(killed)
        killed.update(sweep(spare_tag))
        # SIGCHLD is blocked in this process: a death below wakes us at once.
        signal.sigtimedwait({signal.SIGCHLD}, 0.05 if spare_tag is None else SWEEP)


def sweep(spare_tag: str | None = None) -> list[int]:
    """SIGKILL every process below this one, except, with ``spare_tag``, those the run's keeper
    finds itself (in this process's group, or carrying that tag); the pids signalled.

    A process is killed only if its start time is still the one read with its parent's pid, so
    a pid reused in between is left alone (one of our own children cannot be reused at all
    before we have waited for it).
    """
    group = os.getpgid(0)
    killed = []
    for pid, pgid, start in below():
        if spare_tag is not None and (pgid == group or _tagged(pid, spare_tag)):
            continue
        now = _stat(pid)
        if now is not None and now[2:] == (pgid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def below() -> list[tuple[int, int, int]]:
    """Every process below this one, parents first: (pid, process group, start time)."""
    parents: dict[int, list[int]] = {}
    facts: dict[int, tuple[int, int, int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                facts[stat[0]] = stat[0], stat[2], stat[3]
                parents.setdefault(stat[1], []).append(stat[0])
    found = []
    todo = list(parents.get(os.getpid(), ()))
    while todo:
        pid = todo.pop(0)
        found.append(facts[pid])
        todo += parents.get(pid, ())
    return found


def _stat(pid: int) -> tuple[int, int, int, int] | None:
    """(pid, parent, process group, start time in clock ticks) from ``/proc/PID/stat``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()  # the name may hold spaces
        return pid, int(fields[1]), int(fields[2]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _tagged(pid: int, tag: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return f"{TAG_VARIABLE}={tag}".encode() in handle.read().split(b"\0")
    except OSError:
        return False


def exit_like(status: int) -> int:
    """End this process as the program ended: by the same signal (its default action restored,
    so it ends the launcher too), else with the same exit code, which is returned."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {number})
        os.kill(os.getpid(), number)
        return 128 + number  # only if the signal did not end us: the shell's convention
    return os.waitstatus_to_exitcode(status)
