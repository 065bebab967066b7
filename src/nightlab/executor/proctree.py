"""Watching and killing everything a training command started, including what tried to escape.

Killing the process group is not enough: a script can ``setsid`` a helper, or daemonise a
server that outlives it (a double fork leaves a process whose parent is init). So a run is
tracked three ways, and everything found is killed at the end:

1. every process ever seen below the main process while sampling (pid and start time, so a
   reused pid is never mistaken for one of ours);
2. a per-run tag, ``NIGHTLAB_PROCESS_TAG``, in the environment the command starts with:
   descendants inherit it, so a daemon that escaped between two samples is still found by
   reading ``/proc/<pid>/environ``;
3. any process of ours still holding the run's log file open (a daemon's inherited stdout),
   or still in the run's process group.

Only processes of the same user created after the run started are considered; nightlab never
signals itself. A process that clears its environment, closes its descendants' fds and
double-forks between two samples escapes all three; under the sandbox the launcher, a child
subreaper that stays the command's parent, kills it (``reaper.py``), and the main process is
then the harness's shell above the launcher, whose exit status is the command's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

TAG_VARIABLE = "NIGHTLAB_PROCESS_TAG"
_MB = 1024 * 1024
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, ProcessLookupError)
# When more than one process of a run is this big, shared pages are accounted for (PSS).
_SHARING_MB = 50.0


@dataclass(frozen=True)
class Exit:
    """How the main process ended: its exit code (negative: killed by that signal)."""

    code: int


class MainProcess:
    """The command's own process, reaped by us, with a pidfd to wake up the moment it exits so a
    short command is not made to wait for the next poll.

    (``wait4``'s max-RSS figure is not used: it includes the harness's own memory, copied into
    the child by fork before the exec.)"""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.exit: Exit | None = None
        self._poller: select.poll | None = None
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(self.pid)
                self._poller = select.poll()
                self._poller.register(self._pidfd, select.POLLIN)
            except OSError:
                self._pidfd = None

    def wait(self, timeout: float) -> Exit | None:
        """The exit, once the process has ended, waiting at most ``timeout`` seconds for it."""
        if self.exit is not None:
            return self.exit
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                self.popen.returncode = code  # so Popen never waits for it again
                self.exit = Exit(code)
                self.close()
                return self.exit
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self._poller is not None:
                self._poller.poll(left * 1000.0)
            else:
                time.sleep(min(left, 0.01))

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
            self._poller = None


class ProcessTree:
    """Every process that belongs to one run: sampled while it runs, killed when it ends."""

    def __init__(self, main: MainProcess, tag: str, log_path: Path, started: float) -> None:
        self.main = main
        self.tag = tag
        self.log_path = str(log_path.resolve())
        self.started = started  # time.time() just before the command was started
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        # Each process's own peak resident memory since its exec (VmHWM), in MB.
        self.peaks: dict[tuple[int, float], float] = {}
        self._root: psutil.Process | None = None
        # Until it execs, the main process is a copy of the harness and so is its memory.
        self._harness_cmdline = psutil.Process().cmdline()
        self._main_execed = False
        self.count = 0
        with contextlib.suppress(*_GONE):
            self._root = psutil.Process(main.pid)
            self._remember(self._root)

    def _remember(self, proc: psutil.Process) -> None:
        with contextlib.suppress(*_GONE):
            self.seen.setdefault((proc.pid, proc.create_time()), proc)

    def sample(self) -> float:
        """Record the current descendants and return the resident memory of the tree, in MB.

        One big process (the usual training run): its RSS. Several (DataLoader workers forked
        from the trainer share its pages copy-on-write): the sum of their PSS, which splits
        shared pages among the sharers, since a plain RSS sum would count the trainer's
        libraries once per worker and trip the memory limit of a run that is well under it.
        """
        procs: list[psutil.Process] = []
        if self._root is not None and self.main.exit is None:
            with contextlib.suppress(*_GONE):
                procs = [self._root, *self._root.children(recursive=True)]
        # Escaped processes (re-parented to init) still count against the run's memory.
        known = {p.pid for p in procs}
        procs += [p for p in self.seen.values() if p.pid not in known and _alive(p)]
        self.count = len(procs)  # how many processes the run has now (a fork bomb: process.py)
        measured: list[tuple[psutil.Process, float]] = []
        for proc in procs:
            self._remember(proc)
            if proc.pid == self.main.pid and not self._has_execed(proc):
                continue
            with contextlib.suppress(*_GONE, psutil.AccessDenied, OSError):
                rss, hwm = _memory_mb(proc)
                key = (proc.pid, proc.create_time())
                self.peaks[key] = max(self.peaks.get(key, 0.0), hwm)
                measured.append((proc, rss))
        shm = _own_shm_mb(procs)
        if sum(rss > _SHARING_MB for _, rss in measured) > 1:
            return shm + sum(_pss_mb(proc, rss) for proc, rss in measured)
        return shm + sum(rss for _, rss in measured)

    def _has_execed(self, proc: psutil.Process) -> bool:
        if not self._main_execed:
            with contextlib.suppress(*_GONE, psutil.AccessDenied, OSError):
                self._main_execed = proc.cmdline() != self._harness_cmdline
        return self._main_execed

    def largest_peak_mb(self) -> float:
        """The largest peak of any one process of the run (the kernel's high-water mark, so a
        spike between two samples still counts)."""
        return max(self.peaks.values(), default=0.0)

    def alive(self) -> list[psutil.Process]:
        """Seen processes still running (zombies count as gone: they hold nothing)."""
        return [p for p in self.seen.values() if p.pid != self.main.pid and _alive(p)]

    def stragglers(self) -> list[psutil.Process]:
        """Processes of ours started since the run began that carry its tag or hold its log."""
        found = []
        me = os.getpid()
        uid = os.getuid()
        for proc in psutil.process_iter():
            # Cheapest tests first: this runs once per run over every process on the machine.
            if proc.pid in (me, self.main.pid):
                continue
            try:
                if proc.create_time() < self.started - 1.0 or proc.uids().real != uid:
                    continue
                # The harness's own children are never a run's stragglers: with several slots,
                # a child another thread is forking (git, the next run) briefly holds every
                # descriptor of the harness, this run's open log included, until it execs.
                if proc.ppid() == me:
                    continue
            except (*_GONE, psutil.AccessDenied):
                continue
            tag = self._tag_of(proc)
            if tag == self.tag:
                found.append(proc)
            elif tag is None and (self._in_group(proc) or self._holds_log(proc)):
                # (a process tagged by another run is never ours, even in a group whose
                # number the kernel has since reused for that run)
                found.append(proc)
        return found

    def _in_group(self, proc: psutil.Process) -> bool:
        try:
            return os.getpgid(proc.pid) == self.main.pid
        except OSError:
            return False

    def _tag_of(self, proc: psutil.Process) -> str | None:
        try:
            return proc.environ().get(TAG_VARIABLE)
        except (*_GONE, psutil.AccessDenied, OSError):
            return None

    def _holds_log(self, proc: psutil.Process) -> bool:
        try:
            return any(f.path == self.log_path for f in proc.open_files())
        except (*_GONE, psutil.AccessDenied, OSError):
            return False

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group (while the main process holds it) and to every
        seen process still alive."""
        if self.main.exit is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.main.pid, sig)
        for proc in self.alive():
            _send(proc, sig)

    def pause(self, timeout: float = 0.5) -> None:
        """Stop the whole run (SIGSTOP) and wait, briefly, until its processes are stopped."""
        self.signal(signal.SIGSTOP)
        procs = [p for p in self.seen.values() if _alive(p)]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_stopped(p) for p in procs):
                return
            time.sleep(0.002)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def kill_all(self, grace: float) -> int:
        """SIGTERM everything of the run, SIGKILL what is left after ``grace`` seconds, and reap
        the main process. Returns how many processes other than the main one were signalled.

        Never blocks for long: a process stuck in the kernel (state D) is given up on after a
        few seconds past the grace period rather than hanging the harness.
        """
        targets = {p.pid: p for p in self.alive()}
        targets.update((p.pid, p) for p in self.stragglers())
        if self.main.exit is None or targets:
            self.signal(signal.SIGTERM)
            for proc in targets.values():
                _send(proc, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.main.wait(min(0.05, max(deadline - time.monotonic(), 0.0)))
                if self.main.exit is not None and not any(_alive(p) for p in targets.values()):
                    break
            self.sample()  # children forked while dying
            targets.update((p.pid, p) for p in self.alive())
            targets.update((p.pid, p) for p in self.stragglers())
            self.signal(signal.SIGKILL)
            for proc in targets.values():
                _send(proc, signal.SIGKILL)
        self.main.wait(5.0)
        _wait_gone(list(targets.values()), 2.0)
        return len(targets)


def _pid_namespace() -> str:
    """The inode number of this process's pid namespace ("pid:[4026531836]" -> "4026531836")."""
    try:
        return "".join(ch for ch in os.readlink("/proc/self/ns/pid") if ch.isdigit())
    except OSError:
        return "-"


def new_tag() -> str:
    """A tag for one run that also names the harness process that started it
    (``<pid>:<start mark>:<pid namespace>:<random>``), so a run whose harness died can be
    recognised."""
    pid = os.getpid()
    return f"{pid}:{_start_mark(pid)}:{_pid_namespace()}:{uuid.uuid4().hex}"


def _start_mark(pid: int) -> str:
    """When process ``pid`` started, told apart from a later process that reuses its pid.

    On Linux, the start time in clock ticks since boot (``/proc/PID/stat``), which a change of
    the wall clock does not move. psutil's ``create_time`` adds the boot time, which the kernel
    derives from the wall clock: after a clock step (NTP), a live harness would get another
    create_time than the one in its runs' tags, and the next nightlab to start would kill those
    runs as orphans. Elsewhere, ``create_time``.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()  # the name may hold spaces
        return "t" + fields[19].decode()  # field 22, starttime
    except (OSError, IndexError, UnicodeDecodeError):
        return repr(psutil.Process(pid).create_time())


def _harness_alive(tag: str) -> bool:
    try:
        pid, started, namespace, _ = tag.split(":")
    except ValueError:
        return True  # not a tag we wrote: leave it alone
    if namespace != _pid_namespace():
        return True  # a harness in another container: its pid means nothing here
    try:
        return _start_mark(int(pid)) == started
    except (ValueError, *_GONE, psutil.AccessDenied):
        return False


def kill_orphaned_runs() -> int:
    """Kill every process of this user left by a run whose harness is gone (``kill -9`` of
    nightlab leaves its run going in its own session); returns how many were killed.

    Called when an executor starts, so a resumed ``nightlab run`` never trains next to the
    ghost of the experiment it is about to run again. A run whose watchdog still lives is left
    to it: the watchdog is already ending it, gently first (SIGTERM, then SIGKILL after its
    grace), which a SIGKILL from here would cut short.
    """
    uid = os.getuid()
    candidates: list[tuple[psutil.Process, str]] = []
    guarded: set[str] = set()
    for proc in psutil.process_iter():
        try:
            if proc.uids().real != uid or proc.pid == os.getpid():
                continue
            tag = proc.environ().get(TAG_VARIABLE)
            if not tag:
                watched = watchdog_tag(proc.cmdline())
                if watched:
                    guarded.add(watched)
                continue
        except (*_GONE, psutil.AccessDenied, OSError):
            continue
        if not _harness_alive(tag):
            candidates.append((proc, tag))
    orphans = [proc for proc, tag in candidates if tag not in guarded]
    for proc in orphans:
        _send(proc, signal.SIGKILL)
    _wait_gone(orphans, 2.0)
    return len(orphans)


def watchdog_tag(cmdline: list[str]) -> str | None:
    """The run tag a watchdog process guards (``python -I -S .../watchdog.py PID TAG GRACE``)."""
    for i, part in enumerate(cmdline[:-2]):
        if part.endswith(os.sep + "watchdog.py"):
            return cmdline[i + 2]
    return None


def _memory_mb(proc: psutil.Process) -> tuple[float, float]:
    """Current and peak resident memory of one process, in MB (peak = current off Linux)."""
    try:
        with open(f"/proc/{proc.pid}/status", "rb") as handle:
            status = handle.read()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            raise psutil.NoSuchProcess(proc.pid) from None
        rss = proc.memory_info().rss / _MB
        return rss, rss
    values = {}
    for line in status.splitlines():
        if line.startswith((b"VmRSS:", b"VmHWM:")):
            values[line[:5]] = int(line.split()[1]) / 1024.0  # kB
    rss = values.get(b"VmRSS", 0.0)
    return rss, max(rss, values.get(b"VmHWM", 0.0))


def _pss_mb(proc: psutil.Process, rss: float) -> float:
    """Proportional set size in MB (shared pages divided among their sharers), else ``rss``.

    A process that ended since its RSS was read (a DataLoader worker finishing mid-sample) has
    no PSS left to read and holds nothing: it counts 0, not its stale RSS, which on a loaded
    machine once added a whole shared copy per worker and killed a run far under its limit.
    The same holds for one caught while exiting, its memory already released but not yet a
    zombie (the kernel answers ESRCH for a process without memory): it too counts 0. Only a
    file we may not read (another user's process) falls back to the RSS.
    """
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) / 1024.0
        return 0.0  # readable but no mappings: the process has no memory left
    except OSError as exc:
        if exc.errno in (errno.ESRCH, errno.ENOENT):
            return 0.0
    return rss if _alive(proc) else 0.0


def _own_shm_mb(procs: list[psutil.Process]) -> float:
    """Memory held in the ``/dev/shm`` of the run's own (the sandbox gives a training command a
    tmpfs there, ``mounts.private_shm``): files there are memory that no process's resident size
    counts, so a run could fill it under any memory limit (found from outside: 300 MB written
    there under a 150 MB limit, not stopped). Each such tmpfs is counted once, the machine's never."""
    try:
        machine = os.stat("/dev/shm").st_dev
    except OSError:
        machine = None
    namespaces: set[str] = set()
    counted: set[int] = {machine} if machine is not None else set()
    total = 0.0
    for proc in procs:
        root = f"/proc/{proc.pid}/root/dev/shm"
        try:
            namespace = os.readlink(f"/proc/{proc.pid}/ns/mnt")
            if namespace in namespaces:
                continue
            namespaces.add(namespace)
            device = os.stat(root).st_dev
            if device in counted:
                continue
            counted.add(device)
            usage = os.statvfs(root)
        except OSError:
            continue
        total += (usage.f_blocks - usage.f_bfree) * usage.f_frsize / _MB
    return total


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except _GONE:
        return False


def _stopped(proc: psutil.Process) -> bool:
    try:
        return proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE)
    except _GONE:
        return True


def _send(proc: psutil.Process, sig: int) -> None:
    # psutil checks the start time first, so a pid reused by another process is left alone.
    with contextlib.suppress(*_GONE, psutil.AccessDenied):
        proc.send_signal(sig)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.01)
