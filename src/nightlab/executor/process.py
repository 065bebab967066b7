"""One command run to its end under limits: the process handling every executor shares.

A run is a shell command in its working directory, in its own session, with its output in a
log file and an environment scrubbed of secrets. While it runs, its process tree is sampled
(memory, escaped descendants) and the limits are enforced: timeout, memory, log size,
run-directory size. Whatever happens, it ends with every process of the run dead and a
:class:`~nightlab.types.RunResult` saying how it went; it never leaves the caller hanging.

The local executor runs training and evaluation through :func:`run_process`; the session hands
the same function to a coding agent (:class:`~nightlab.agents.base.AgentTools`), which thus
gets the same timeout and tree-kill without importing an executor.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nightlab.errors import UserError
from nightlab.executor import scratch
from nightlab.executor.logfile import LogTrimmer, directory_usage, read_end, redact_file
from nightlab.executor.outcome import Kill, classify
from nightlab.executor.proctree import TAG_VARIABLE, MainProcess, ProcessTree, new_tag
from nightlab.executor.slots import pin
from nightlab.executor.summary import log_tail, parse_summary
from nightlab.secrets import redact, scrub_env, secret_values
from nightlab.types import RunResult, RunSpec, RunStatus

_MB = 1024 * 1024
# How much of the end of the log is read to classify the run and find its summary block.
_TAIL_BYTES = 256 * 1024
# The first samples come quickly so short commands and early memory spikes are seen; later
# ones settle at ``poll_interval``.
_FIRST_POLL = 0.005
# Run directories are walked at most this often: a directory of checkpoints is slow to stat.
_DISK_CHECK_SECONDS = 1.0
# The kernel's OOM killer should pick a runaway training process before the harness.
_OOM_SCORE_ADJ = "500"
# More processes than this at once is a fork bomb, not training: killed as soon as a sample sees
# it. Half of what a sandboxed run's PID namespace holds (sandbox.MAX_TASKS, threads included),
# so that the count is seen before forks start to fail; without that namespace, the one limit.
PROCESS_LIMIT = 4096


@dataclass(frozen=True)
class Limits:
    """What a run may use (see :class:`~nightlab.executor.local.LocalExecutor` for each)."""

    poll_interval: float = 0.1
    grace_seconds: float = 5.0
    memory_limit_mb: float | None = None
    log_limit_bytes: int = 50_000_000
    run_dir_limit_bytes: int | None = None
    file_size_limit_bytes: int | None = None


def run_process(
    spec: RunSpec,
    limits: Limits | None = None,
    slot_env: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """Run ``spec`` to its end, its timeout or a limit, and say how it went.

    ``slot_env`` is added last to the environment (a slot's devices); ``environ`` is the parent
    environment to scrub (default ``os.environ``); setting ``stop`` kills the run, which then
    raises :class:`RunInterrupted` instead of returning a result.
    """
    return _Run(spec, limits or Limits(), slot_env, environ, stop or threading.Event()).execute()


class RunInterrupted(Exception):
    """The run was stopped because nightlab itself is stopping (:meth:`LocalExecutor.stop`);
    it has no result to record and should be run again on resume."""


_WATCHDOG = Path(__file__).with_name("watchdog.py")


class Watchdog:
    """The watchdog process of one run (:mod:`nightlab.executor.watchdog`): it kills the run's
    tree when this process ends without calling :meth:`release`. It is detached (not a child of
    this process), so whatever kills this process's children with it spares the watchdog. Best
    effort: where it cannot start, the run goes on without it (the next executor still kills
    orphans at its start)."""

    def __init__(self, main_pid: int, tag: str, grace: float, remove: Sequence[Path] = ()) -> None:
        """``remove``: folders the watchdog deletes after killing the run (``tag`` ``"-"``:
        no run, only folders)."""
        self._write: int | None = None
        self.pid: int | None = None
        read, write = os.pipe()  # non-inheritable: only this process holds the write end
        argv = [str(_WATCHDOG), str(main_pid), tag, f"{grace:g}", *(str(Path(p).resolve()) for p in remove)]
        try:
            starter = subprocess.Popen(
                [sys.executable, "-I", "-S", *argv],
                stdin=read,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env={"PATH": os.environ.get("PATH", os.defpath)},
            )
        except OSError:
            os.close(write)
        else:
            self._write = write
            try:  # the watchdog's pid; the starter exits as soon as it has forked
                out, _ = starter.communicate(timeout=10)
                self.pid = int(out.split()[0])
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                starter.kill()
                starter.wait()
        finally:
            os.close(read)

    def release(self) -> None:
        """The run is over and killed by the harness itself: the watchdog leaves it be and exits."""
        write, self._write = self._write, None
        if write is None:
            return
        with contextlib.suppress(OSError):
            os.write(write, b"done")
        os.close(write)


def build_env(
    spec: RunSpec, slot_env: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment a run starts with, each layer overriding the one before:

    the parent's environment with secrets removed (``spec.allow_env`` kept), ``PYTHONUNBUFFERED=1``
    unless set (so a killed run's log still has its last lines), ``NIGHTLAB_SEED``,
    ``NIGHTLAB_RUN_DIR``, ``spec.env``, ``spec.slot_env``, then the executor slot's variables.
    The directory of the harness's interpreter goes first on ``PATH``, so ``python`` in a run
    command is the interpreter nightlab runs under even when its venv is not activated.
    """
    env = scrub_env(os.environ if environ is None else environ, spec.allow_env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    exe_dir = os.path.dirname(sys.executable)
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != exe_dir]
    env["PATH"] = os.pathsep.join([exe_dir, *rest])
    env["NIGHTLAB_SEED"] = str(spec.seed)
    env["NIGHTLAB_RUN_DIR"] = str(Path(spec.run_dir).resolve())
    env.update(spec.env)
    env.update(spec.slot_env)
    env.update(slot_env or {})
    return env


class _Run:
    """One run from start to result. Lives for one call of :func:`run_process`."""

    def __init__(
        self,
        spec: RunSpec,
        limits: Limits,
        slot_env: Mapping[str, str] | None,
        environ: Mapping[str, str] | None,
        stop: threading.Event,
    ) -> None:
        self.ex = limits
        self.stop = stop
        self.spec = spec
        self.run_dir = Path(spec.run_dir)
        self.log_path = self.run_dir / spec.log_name
        self.env = build_env(spec, slot_env, environ)
        self.env[TAG_VARIABLE] = new_tag()
        self.secrets = secret_values(os.environ if environ is None else environ)
        self.kill: Kill | None = None
        self.interrupted = False
        self.peak_rss_mb = 0.0

    def execute(self) -> RunResult:
        cwd = Path(self.spec.cwd)
        if not cwd.is_dir():
            raise UserError(f"working directory of the run does not exist: {cwd} (RunSpec.cwd)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        wall_started = time.time()
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        # Opened before the start, so a script that deletes its log cannot hide what it writes.
        trimmer = LogTrimmer(self.log_path, self.ex.log_limit_bytes)
        try:
            try:
                popen = subprocess.Popen(
                    self._shell_command(),
                    shell=True,
                    cwd=cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:  # no /bin/sh, a cwd we may not enter: nothing ran
                raise UserError(f"cannot start `{self.spec.command}` in {cwd}: {exc}") from exc
            finally:
                os.close(log_fd)
            pin(popen.pid, self.env)  # a slot's own cores, before the shell starts the script
            self._prefer_as_oom_victim(popen.pid)
            # Kills the run if this process dies without finishing it (kill -9): watchdog.py.
            guard = Watchdog(popen.pid, self.env[TAG_VARIABLE], self.ex.grace_seconds)
            main = MainProcess(popen)
            tree = ProcessTree(main, self.env[TAG_VARIABLE], self.log_path, wall_started)
            try:
                self._poll(main, tree, trimmer, started + self.spec.timeout, started)
            except BaseException:
                # Ctrl-C or a bug in the watcher: the run must not outlive the harness's attention.
                tree.kill_all(min(self.ex.grace_seconds, 2.0))
                main.close()
                guard.release()
                raise
            self.peak_rss_mb = max(self.peak_rss_mb, tree.sample())
            # Normal exit or not, whatever the run left behind goes with it.
            tree.kill_all(self.ex.grace_seconds)
            guard.release()
            main.close()
            scratch.discard(self.run_dir)  # the run's own /tmp, before anyone scans the run directory
            # Nothing writes to the log any more: a flood killed between two checks (or output
            # after the last one) is cut to the limit now, so no run leaves a log over it.
            trimmer.settle()
        finally:
            trimmer.close()
        total = time.monotonic() - started
        if self.interrupted:
            raise RunInterrupted(f"run stopped because nightlab is stopping: {self.spec.command}")
        self.peak_rss_mb = max(self.peak_rss_mb, tree.largest_peak_mb())
        # No exit after SIGKILL means a process stuck in the kernel; report it rather than wait.
        return self._result(main.exit.code if main.exit else None, total)

    def _shell_command(self) -> str:
        """The command with its resource limits set first, by the shell that runs it.

        Limits are set inside the child, before the user's command starts: setting them from
        the harness after the start races with a command that writes at once, and
        ``preexec_fn`` is not safe in a threaded harness. Core dumps are off (they fill disks);
        RLIMIT_FSIZE is set when asked for (POSIX ``ulimit -f`` counts 512-byte blocks).
        RLIMIT_AS is deliberately not used: CUDA and torch's allocators reserve far more
        address space than they use, so it breaks them; memory is limited by sampling instead.
        """
        # The OOM killer's preference, set before the command starts: set from the harness after
        # the start (_prefer_as_oom_victim) it came too late for what the shell had forked already
        # (found from outside: a sandboxed training process read 0 there, on a busy machine).
        prefix = f"ulimit -c 0 2>/dev/null; echo {_OOM_SCORE_ADJ} > /proc/self/oom_score_adj 2>/dev/null; "
        if self.ex.file_size_limit_bytes is not None:
            blocks = max(1, int(self.ex.file_size_limit_bytes) // 512)
            prefix += f"ulimit -f {blocks} || exit 126; "
        return prefix + self.spec.command

    def _prefer_as_oom_victim(self, pid: int) -> None:
        """Let the kernel's OOM killer pick the training run before the harness (inherited by
        the run's children; raising one's own child's score needs no privilege)."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/oom_score_adj").write_text(_OOM_SCORE_ADJ)

    def _poll(
        self, main: MainProcess, tree: ProcessTree, trimmer: LogTrimmer, deadline: float, started: float
    ) -> None:
        """Sample and enforce limits until the main process exits or the run has to be killed."""
        ex = self.ex
        next_disk_check = started
        interval = _FIRST_POLL
        while main.wait(min(interval, max(deadline - time.monotonic(), 0.0))) is None:
            interval = min(interval * 2, ex.poll_interval)
            now = time.monotonic()
            if self.stop.is_set():
                self.interrupted = True
                self.kill = Kill(RunStatus.CRASH, "interrupted: nightlab is stopping")
            elif now >= deadline:
                self.kill = Kill(RunStatus.TIMEOUT, f"killed after {self.spec.timeout:g} s timeout")
            else:
                self.kill = self._check_limits(tree, trimmer, now >= next_disk_check)
                if now >= next_disk_check:
                    next_disk_check = now + _DISK_CHECK_SECONDS
            if self.kill is None and self.spec.stop_when is not None:
                why = self.spec.stop_when()  # the pruner: is the curve so far hopeless?
                if why:
                    self.kill = Kill(RunStatus.PRUNED, why)
            if self.kill is not None:
                tree.kill_all(ex.grace_seconds)
                return

    def _check_limits(self, tree: ProcessTree, trimmer: LogTrimmer, check_disk: bool) -> Kill | None:
        ex = self.ex
        rss = tree.sample()
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        if ex.memory_limit_mb is not None and rss > ex.memory_limit_mb:
            return Kill(
                RunStatus.OOM,
                f"memory limit exceeded: {rss:.0f} MB resident > {ex.memory_limit_mb:g} MB, killed",
            )
        if tree.count > PROCESS_LIMIT:
            return Kill(
                RunStatus.CRASH,
                f"too many processes: {tree.count} at once (a fork bomb?), more than {PROCESS_LIMIT}; killed",
            )
        overflow = trimmer.check(tree)
        if overflow:
            return Kill(RunStatus.CRASH, overflow)
        if check_disk and ex.run_dir_limit_bytes is not None:
            used = directory_usage(self.run_dir)
            if used > ex.run_dir_limit_bytes:
                return Kill(
                    RunStatus.CRASH,
                    f"run directory exceeded {ex.run_dir_limit_bytes / _MB:g} MB "
                    f"({used / _MB:.1f} MB used), killed",
                )
        return None

    def _result(self, exit_code: int | None, total: float) -> RunResult:
        # The raw log is an output too: a key the script printed must not stay in it.
        redact_file(self.log_path, self.secrets)
        text = read_end(self.log_path, _TAIL_BYTES)
        status, reason = classify(exit_code, text, self.kill)
        metrics = parse_summary(text)
        rss = round(self.peak_rss_mb, 1) if self.peak_rss_mb > 0 else None  # None: never sampled
        if rss is not None:
            metrics["peak_rss_mb"] = rss
        peak = metrics.get("peak_vram_mb", metrics.get("peak_memory_mb", rss))
        return RunResult(
            status=status,
            metrics=metrics,
            training_seconds=metrics.get("training_seconds"),
            total_seconds=total,
            peak_memory_mb=peak,
            log_tail=redact(log_tail(text), self.secrets),
            seed=self.spec.seed,
            exit_code=exit_code,
            reason=redact(reason, self.secrets),
            log_path=str(self.log_path),
        )
