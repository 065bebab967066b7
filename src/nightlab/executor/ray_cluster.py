"""The Ray executor (``[executor] kind = "ray"``): each replicate is a Ray task on an existing cluster.

The harness (ledger, agent, policy, git) stays on the machine where ``nightlab run`` started;
what a replicate needs is shipped to a node as the arguments of one task, and its result comes
back as the task's return value. This module knows nothing of replicates: :meth:`RayExecutor.call`
runs any module-level function as a task (nightlab.research.remote passes the one that runs a
replicate on a node) and tells Ray's own failures apart from the function's:

* a node that dies, a worker process that is killed, a lost object or owner, a Ray-internal
  error (:data:`INFRASTRUCTURE`) is not the candidate's fault: the task is submitted again, and
  each such failure is returned alongside the result; past ``max_infra_retries`` the call raises
  :class:`InfrastructureError` listing them all;
* anything the function itself raises comes back as that exception (Ray's ``RayTaskError``,
  which is also an instance of the original type), never retried.

Tasks run with ``max_retries=0``: Ray's own retries would hide the failures this module records.
Ray is imported when the executor is built, never at import time, so nightlab works without it
and ``kind = "ray"`` without it is one line naming ``pip install 'nightlab[ray]'``.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import Field

from nightlab.config import Config
from nightlab.errors import UserError
from nightlab.executor.process import Limits, RunInterrupted, run_process
from nightlab.executor.ray_connect import check_nodes, connect, is_infrastructure
from nightlab.executor.slots import Slot
from nightlab.plugins import Kind, Settings
from nightlab.types import RunResult, RunSpec

INSTALL_HINT = "pip install 'nightlab[ray]'"
# How long a stop waits for force-cancelled tasks to be gone before it lets the driver exit.
FORCED_WAIT = 10.0
# How long a retry waits for Ray to declare a lost node dead (its health checks take a while).
SETTLE_SECONDS = 60.0
_MESSAGE_CHARS = 400


class RaySettings(Settings):
    """``[executor.ray]``: where the cluster is and what one replicate's task asks of it."""

    # "auto" (the cluster this machine is part of), "HOST:PORT" (the head node's GCS, from a
    # machine of the cluster), or "ray://HOST:10001" (Ray Client, from anywhere).
    address: str = "auto"
    num_cpus: float = Field(default=1, ge=0)
    num_gpus: float = Field(default=0, ge=0)
    # Custom resources per replicate (``{"a100" = 1}``), as the nodes were started with.
    resources: dict[str, float] = Field(default_factory=dict)
    # Resubmissions of a replicate after Ray-level failures (a lost node) before it is a crash.
    max_infra_retries: int = Field(default=3, ge=0)
    # What a node sends back: each log whole up to this size (head and tail beyond it) ...
    log_return_mb: float = Field(default=20, gt=0)
    # ... and the other files of the run directory up to this total (the rest is listed).
    files_return_mb: float = Field(default=200, ge=0)
    # Seconds to wait for the cluster's address to answer before saying it cannot be reached.
    connect_timeout: float = Field(default=10, gt=0)
    # Seconds a stop waits for cancelled tasks to end their runs themselves before forcing them.
    stop_wait: float = Field(default=5, ge=0)


@dataclass(frozen=True)
class InfraFailure:
    """One Ray-level failure of a task: what Ray raised, its message, the node when Ray named it."""

    error: str
    message: str
    node: str | None
    at: str

    @classmethod
    def of(cls, exc: BaseException) -> InfraFailure:
        text = " ".join(str(exc).split())
        found = re.search(r"node ID: ([0-9a-f]+)", text) or re.search(r"Node IP: ([0-9.]+)", text)
        return cls(
            error=type(exc).__name__,
            message=text[:_MESSAGE_CHARS],
            node=found.group(1) if found else None,
            at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        where = f" on node {self.node[:12]}" if self.node else ""
        return f"{self.error}{where}"


class InfrastructureError(Exception):
    """A task failed for Ray-level reasons more often than ``max_infra_retries`` allows."""

    def __init__(self, failures: list[InfraFailure]) -> None:
        self.failures = list(failures)
        last = failures[-1]
        super().__init__(
            f"infrastructure: {len(failures)} Ray failure(s) in a row, the last {last.line()}: "
            f"{last.message[:200]}"
        )


@dataclass(frozen=True)
class ReturnLimits:
    """How much of a run directory a node sends back (see :class:`RaySettings`)."""

    log_bytes: int
    files_bytes: int


def import_ray() -> Any:
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise UserError(
            f'[executor] kind = "ray" needs Ray, which is not installed ({exc}): {INSTALL_HINT}'
        ) from None
    return ray


class RayExecutor:
    """Runs functions as Ray tasks on an existing cluster, with infrastructure retries.

    ``runs_remotely`` tells the session to ship replicates (nightlab.research.remote) rather
    than run them in local worktrees; :meth:`run` still runs a command here, on the harness's
    machine, for whatever the harness itself needs to run.
    """

    runs_remotely = True

    def __init__(self, settings: RaySettings, limits: Limits | None = None, *, probe: bool = True) -> None:
        self.settings = settings
        self.limits = limits or Limits()
        self._ray = import_ray()
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._in_flight: set[Any] = set()
        self._functions: dict[Callable, Any] = {}
        connect(self._ray, settings.address, settings.connect_timeout)
        try:
            self._check_feasible()
            if probe:
                check_nodes(self._ray, settings.address)
        except BaseException:
            self._ray.shutdown()
            raise

    # -- what the session and the remote runner use ------------------------------------------
    @property
    def return_limits(self) -> ReturnLimits:
        return ReturnLimits(int(self.settings.log_return_mb * 1e6), int(self.settings.files_return_mb * 1e6))

    def request(self) -> dict[str, float]:
        """The resources one task asks for (Ray's names: ``CPU``, ``GPU``, custom ones)."""
        wanted = {"CPU": self.settings.num_cpus, "GPU": self.settings.num_gpus, **self.settings.resources}
        return {name: amount for name, amount in wanted.items() if amount > 0}

    def capacity(self) -> int:
        """How many tasks the cluster's resources hold at once (at least 1)."""
        total = self._ray.cluster_resources()
        need = self.request()
        if not need:
            return 1
        return max(1, min(math.floor(total.get(name, 0.0) / amount + 1e-9) for name, amount in need.items()))

    def slots(self, config: Config) -> list[Slot]:
        """``[run] workers`` places for replicates in flight (``"auto"``: :meth:`capacity`); Ray
        places each task itself, so a slot carries no devices of its own."""
        workers = config.run.workers
        count = self.capacity() if workers == "auto" else int(workers)
        return [Slot(index, {}, "ray") for index in range(count)]

    def call(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, list[InfraFailure]]:
        """``fn(*args)`` as a Ray task with the configured resources; its result and the
        infrastructure failures it took to get it. ``fn`` must be importable on the nodes (a
        module-level function of an installed package): Ray ships it by reference."""
        task = self._task(fn)
        failures: list[InfraFailure] = []
        while True:
            if self._stop.is_set():
                raise RunInterrupted("nightlab is stopping; the Ray task was not submitted")
            try:
                return self._wait(task.remote(*args)), failures
            except Exception as exc:
                if not is_infrastructure(exc):
                    raise
                failures.append(InfraFailure.of(exc))
                if len(failures) > self.settings.max_infra_retries:
                    raise InfrastructureError(failures) from None
                self._settle(failures[-1])

    def run(self, spec: RunSpec) -> RunResult:
        """Run ``spec`` on this machine (the harness's), under the configured limits."""
        return run_process(spec, self.limits, None, None, self._stop)

    def stop(self) -> None:
        """Cancel the tasks in flight (their callers get :class:`RunInterrupted`), refuse new ones."""
        self._stop.set()
        with self._guard:
            refs = list(self._in_flight)
        cancel(self._ray, refs, self.settings.stop_wait)

    def close(self, kill: bool = False) -> None:
        """Wait for the tasks in flight (or, with ``kill``, cancel them) and disconnect."""
        if kill:
            self.stop()
        while True:
            with self._guard:
                if not self._in_flight:
                    break
            time.sleep(0.05)
        if self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(kill=exc[0] is not None)

    # -- helpers -----------------------------------------------------------------------------
    def _task(self, fn: Callable[..., Any]) -> Any:
        task = self._functions.get(fn)
        if task is None:
            gpus = self.settings.num_gpus
            task = self._ray.remote(fn).options(
                num_cpus=self.settings.num_cpus,
                num_gpus=int(gpus) if float(gpus).is_integer() else gpus,
                resources=dict(self.settings.resources) or None,
                max_retries=0,
                retry_exceptions=False,
            )
            self._functions[fn] = task
        return task

    def _wait(self, ref: Any) -> Any:
        ray = self._ray
        with self._guard:
            self._in_flight.add(ref)
        try:
            try:
                while not ray.wait([ref], timeout=0.5)[0]:
                    if self._stop.is_set():
                        raise RunInterrupted("nightlab is stopping: the Ray task was cancelled")
            except BaseException:
                # Ctrl-C, SIGTERM or a stop while the task runs: end it now rather than when Ray
                # notices that this driver is gone.
                cancel(ray, [ref], self.settings.stop_wait)
                raise
            try:
                return ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                raise RunInterrupted("nightlab is stopping: the Ray task was cancelled") from None
        finally:
            with self._guard:
                self._in_flight.discard(ref)

    def _settle(self, failure: InfraFailure) -> None:
        """Before a retry, let the cluster see what happened: a node that died is declared dead
        by Ray's health checks only after some seconds, and until then a retry could be sent to
        it again. Waits (at most :data:`SETTLE_SECONDS`) until the failed node is no longer
        listed as alive; a lost worker on a live node is retried at once."""
        if failure.error != "NodeDiedError" or not failure.node:
            return
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline and not self._stop.is_set():
            with contextlib.suppress(Exception):
                alive = {n["NodeID"] for n in self._ray.nodes() if n.get("Alive")}
                if not any(node.startswith(failure.node) for node in alive):
                    return
            time.sleep(0.5)

    def _check_feasible(self) -> None:
        """Some node must hold one task's resources, or every replicate would wait forever."""
        need = self.request()
        nodes = [n for n in self._ray.nodes() if n.get("Alive")]
        for node in nodes:
            have = node.get("Resources", {})
            if all(have.get(name, 0.0) + 1e-9 >= amount for name, amount in need.items()):
                return
        asked = ", ".join(f"{name} {amount:g}" for name, amount in need.items())
        largest = max((n.get("Resources", {}) for n in nodes), key=lambda r: r.get("CPU", 0), default={})
        shown = ", ".join(
            f"{name} {amount:g}"
            for name, amount in sorted(largest.items())
            if not name.startswith(("node:", "memory", "object"))
        )
        raise UserError(
            f"[executor.ray] each replicate asks for {asked}, but no node of the Ray cluster at "
            f"'{self.settings.address}' has that much (largest node: {shown or 'nothing'}): "
            "lower num_cpus / num_gpus / resources, or add nodes"
        )


def cancel(ray: Any, refs: list[Any], wait: float) -> None:
    """End tasks in flight and wait until they have ended (so this driver may exit after).

    First as Ctrl-C inside each task: the local executor there kills its run's process tree
    itself and the node's scratch folder is removed. Tasks still going after ``wait`` seconds
    are killed with their worker process; Ray kills the worker's direct children with it, and
    the run's watchdog, detached and so not among them, kills the rest of the training, and the
    task's own watchdog removes its scratch folder on the node."""
    passes = [(False, wait)] if wait > 0 else []  # 0: no gentle cancel, force at once
    for force, seconds in [*passes, (True, max(wait, FORCED_WAIT))]:
        if not refs:
            return
        for ref in refs:
            with contextlib.suppress(Exception):  # already finished, or the cluster is gone
                ray.cancel(ref, force=force)
        with contextlib.suppress(Exception):
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=seconds)


def _from_config(settings: Settings, config: Config) -> RayExecutor:
    """The Ray executor; ``[run]``'s limits hold for what it runs on this machine, and the nodes
    apply them to each replicate themselves (they travel with the config)."""
    assert isinstance(settings, RaySettings)
    run = config.run
    limits = Limits(
        memory_limit_mb=run.memory_limit_mb,
        log_limit_bytes=int(run.log_limit_mb * 1e6),
        run_dir_limit_bytes=int(run.run_dir_limit_mb * 1e6) if run.run_dir_limit_mb else None,
    )
    return RayExecutor(settings, limits)


KINDS = (Kind("ray", _from_config, RaySettings, "each replicate a Ray task on an existing cluster"),)
