"""The local executor: training commands as subprocesses on this machine, one per slot.

Each run goes through :func:`~nightlab.executor.process.run_process` (limits, process tree,
result); this class adds the slots. Slots are how several experiments run at once: each slot is
a dict of environment variables (``{"CUDA_VISIBLE_DEVICES": "0"}``) and holds one run at a time::

    with LocalExecutor(slots=[{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]) as ex:
        futures = [ex.submit(spec) for spec in specs]
        results = [f.result() for f in futures]
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from nightlab.config import Config
from nightlab.executor.process import Limits, RunInterrupted, run_process
from nightlab.executor.proctree import kill_orphaned_runs
from nightlab.executor.slots import slots_for
from nightlab.plugins import Kind, Settings
from nightlab.types import RunResult, RunSpec


class LocalExecutor:
    """Runs :class:`RunSpec` commands as local subprocesses, one per slot at a time.

    - ``slots``: one dict of environment variables per concurrent run (default: one empty slot).
    - ``poll_interval``: seconds between samples of the process tree (memory, limits).
    - ``grace_seconds``: between SIGTERM and SIGKILL when a run is stopped.
    - ``memory_limit_mb``: resident memory of the whole tree; over it the run is killed as oom.
      Enforced by sampling, not RLIMIT_AS (which breaks CUDA and torch's allocators).
    - ``log_limit_bytes``: past it the middle of the log is cut out, keeping its head and its
      tail (with a note of how much was cut), and the run goes on; a log growing past four times
      the limit between two samples (faster than it can be trimmed) kills the run as a crash.
    - ``run_dir_limit_bytes``: disk used by the run directory; over it the run is killed as a
      crash, "run directory exceeded N MB".
    - ``file_size_limit_bytes``: RLIMIT_FSIZE for the run, the largest file it may write
      anywhere (a write past it kills the process with SIGXFSZ, recorded as a crash).
    - ``environ``: the parent environment to scrub (default ``os.environ``), for tests.
    - ``kill_orphans``: on creation, kill what runs of a dead harness left running (see
      :func:`~nightlab.executor.proctree.kill_orphaned_runs`); ``orphans_killed`` says how many.
    """

    def __init__(
        self,
        slots: list[dict[str, str]] | None = None,
        poll_interval: float = 0.1,
        grace_seconds: float = 5.0,
        memory_limit_mb: float | None = None,
        log_limit_bytes: int = 50_000_000,
        run_dir_limit_bytes: int | None = None,
        file_size_limit_bytes: int | None = None,
        environ: Mapping[str, str] | None = None,
        kill_orphans: bool = True,
    ) -> None:
        self.slots = [dict(s) for s in (slots or [{}])]
        self.limits = Limits(
            poll_interval=poll_interval,
            grace_seconds=grace_seconds,
            memory_limit_mb=memory_limit_mb,
            log_limit_bytes=log_limit_bytes,
            run_dir_limit_bytes=run_dir_limit_bytes,
            file_size_limit_bytes=file_size_limit_bytes,
        )
        self.environ = environ
        self._free: queue.Queue[dict[str, str]] = queue.Queue()
        for slot in self.slots:
            self._free.put(slot)
        self._pool = ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="nightlab-run")
        self._stop = threading.Event()
        self.orphans_killed = kill_orphaned_runs() if kill_orphans else 0

    def run(self, spec: RunSpec) -> RunResult:
        """Run ``spec`` in the next free slot and return how it went (blocks until then)."""
        slot = self._take_slot()
        try:
            return run_process(spec, self.limits, slot, self.environ, self._stop)
        finally:
            self._free.put(slot)

    def submit(self, spec: RunSpec) -> Future[RunResult]:
        """Start ``spec`` as soon as a slot is free; the future holds its :class:`RunResult`."""
        return self._pool.submit(self.run, spec)

    def stop(self) -> None:
        """Kill the runs in flight (their futures raise :class:`RunInterrupted`) and refuse new ones."""
        self._stop.set()

    def close(self, kill: bool = False) -> None:
        """Wait for the runs in flight (or, with ``kill``, stop them first) and release the slots."""
        if kill:
            self.stop()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(kill=exc[0] is not None)

    def _take_slot(self) -> dict[str, str]:
        while True:
            if self._stop.is_set():
                raise RunInterrupted("nightlab is stopping; the run was not started")
            with contextlib.suppress(queue.Empty):
                return self._free.get(timeout=0.1)


def _from_config(settings: Settings, config: Config) -> LocalExecutor:
    """The local executor with the resource limits of ``[run]``."""
    limits = config.run
    return LocalExecutor(
        # Room for every slot's run at once; which devices and cores each uses is in its RunSpec.
        slots=[{} for _ in slots_for(config)],
        memory_limit_mb=limits.memory_limit_mb,
        log_limit_bytes=int(limits.log_limit_mb * 1e6),
        run_dir_limit_bytes=int(limits.run_dir_limit_mb * 1e6) if limits.run_dir_limit_mb else None,
    )


KINDS = (Kind("local", _from_config, Settings, "subprocesses on this machine"),)
