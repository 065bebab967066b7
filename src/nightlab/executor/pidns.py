"""A PID namespace of the training command's own, with its own ``/proc``: it sees only its processes.

Before, a sandboxed training run saw every process of the machine under ``/proc`` and, as the
same user, could write another's ``/proc/<pid>/oom_score_adj`` (Landlock leaves existing files
there writable: CUDA needs them): found from outside, a train.py set the harness's to 1000, so
that under memory pressure the OOM killer would pick nightlab, not the run; it also read every
process's command line. In a PID namespace of its own, with a fresh ``/proc`` mounted over the
machine's in a mount namespace of its own, no other process has a pid it can name: not in
``/proc``, not to ``kill``.

Loaded by its path from ``sandbox.py``'s launcher (stdlib only, nothing of nightlab), as root of
the nested user namespace ``sandbox.hide_paths`` ends in, before Landlock (which refuses mounts).
:func:`enter` forks the namespace's first process, pid 1, which goes on as the launcher
(``reaper.supervise``: it forks the program, reaps, kills what is left); the process that called
it stays outside as the *relay*: the pid the harness started and watches, it passes on the
signals a user sends it and exits as pid 1 reports the program ended. Pid 1 dies with the relay
(``PR_SET_PDEATHSIG``), and when pid 1 dies the kernel kills every process of the namespace:
nothing the run started outlives a SIGKILL of the launcher any more.

The cost: one more small process (a fork of the launcher, its pages shared) and a ``/proc`` mount.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import select
import signal
import types
from collections.abc import Callable

_CLONE_NEWNS, _CLONE_NEWPID = 0x00020000, 0x20000000
_PR_SET_PDEATHSIG = 1
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
# How a signal the relay passes on is told from one a keeper sent pid 1 itself: the relay queues it
# (``sigqueue``: si_code SI_QUEUE), a keeper's ``kill`` is SI_USER. From outside the namespace pid 1
# sees no sender's pid (0) for either, so the launcher's test of who sent it cannot work there.
SI_QUEUE = -1


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def enter(reaper: types.ModuleType, tag: str, max_tasks: int) -> tuple[int | None, int]:
    """Fork pid 1 of a new PID namespace (``reaper``: the launcher's module; ``tag``: the run's,
    which names its keepers, whose signals the relay does not pass on). In pid 1: ``(None, fd)``
    once its ``/proc`` is the namespace's; it must write the program's wait status to ``fd``
    (:func:`report`). In the relay: ``(status, -1)`` when pid 1 has ended, the program's wait
    status (or pid 1's own, killed before it could report); an exit with 126 when the namespace
    cannot be made (said on stderr). At most ``max_tasks`` processes and threads live in it at
    once (:func:`cap`)."""
    libc = _libc()
    if libc.unshare(_CLONE_NEWPID) != 0:
        problem = os.strerror(ctypes.get_errno())
        os.write(
            2, f"nightlab sandbox: cannot give the run a PID namespace ({problem}); not started\n".encode()
        )
        return 126 << 8, -1
    watched = {*reaper.FORWARDED, signal.SIGCHLD}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(reading)
        try:
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or _reader_gone(writing):
                raise OSError("the relay is gone")
            _mount_proc(libc)
            cap(max_tasks)
        except BaseException as exc:  # a forked copy of the launcher must never go on as one
            os.write(
                2, f"nightlab sandbox: cannot give the run a /proc of its own ({exc}); not started\n".encode()
            )
            os._exit(126)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return None, writing
    os.close(writing)
    status = _relay(child, watched, lambda pid: reaper.keeps(pid, tag))
    with os.fdopen(reading, "rb") as handle:
        reported = handle.read().strip()
    return (int(reported) if reported else status), -1


def _reader_gone(fd: int) -> bool:
    """Whether the pipe's other end is closed: the relay died before pid 1 asked to die with it
    (its pid cannot be named from inside the namespace, where pid 1's parent is 0)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _mount_proc(libc: ctypes.CDLL) -> None:
    """A mount namespace of pid 1's own (the relay keeps the machine's ``/proc``, where its
    keepers' pids are), and in it a fresh ``/proc`` over the machine's, checked."""
    if libc.unshare(_CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "cannot make a mount namespace")
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if libc.mount(b"proc", b"/proc", b"proc", flags, None) != 0:
        raise OSError(ctypes.get_errno(), "cannot mount /proc")
    if os.getpid() != 1 or os.readlink("/proc/self") != "1":  # checked, not assumed
        raise OSError("/proc is still the machine's")


def cap(max_tasks: int) -> None:
    """At most ``max_tasks`` processes and threads in this namespace: its own ``pid_max`` (Linux
    6.14+), a fork past it fails with EAGAIN. A fork bomb (found from outside: a train.py that forks
    without end) otherwise stops only at the machine's limits, where the harness cannot fork either.
    Older kernels refuse the write: then ``RLIMIT_NPROC``, which the kernel counts per user
    namespace, the run's alone, but which does not bind root; so the harness also kills a run that
    has too many processes (``process.py``)."""
    try:
        with open("/proc/sys/kernel/pid_max", "w") as handle:
            handle.write(str(max_tasks))
    except OSError:
        hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        limit = max_tasks if hard == resource.RLIM_INFINITY else min(max_tasks, hard)
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))


def _relay(child: int, watched: set[signal.Signals], from_keeper: Callable[[int], bool]) -> int:
    """Pass on to pid 1 the signals a user sends the relay (a keeper's reach pid 1 directly:
    they go to the run's group and tagged processes) until pid 1 ends; its wait status."""
    queue = _libc().sigqueue
    while True:
        info = signal.sigwaitinfo(watched)
        if info.si_signo == signal.SIGCHLD:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(child, os.WNOHANG)
                if pid == child:
                    return status
        elif not from_keeper(info.si_pid):
            queue(child, info.si_signo, ctypes.c_void_p(0))


def relayed(info: signal.struct_siginfo) -> bool:
    """Whether pid 1 got this signal from the relay (a user's), not from a keeper."""
    return info.si_code == SI_QUEUE


def report(fd: int, status: int) -> None:
    """Pid 1 tells the relay how the program ended (pid 1 cannot end by the program's signal:
    the kernel does not deliver a namespace's init the signals it has no handler for)."""
    with contextlib.suppress(OSError):
        os.write(fd, str(status).encode())
