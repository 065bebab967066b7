"""Joining a Ray cluster as nightlab's driver: the address checked first, Ray kept quiet, the
nodes probed (nightlab and git there), and which of Ray's exceptions are Ray's own failures.

Part of the Ray executor (nightlab.executor.ray_cluster); nothing here imports Ray at module
level, and every problem a user can fix is one line naming the address or the node.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

from nightlab import __version__
from nightlab.errors import UserError

# Ray's failures that say nothing about the code that ran (by class name: Ray is imported late).
INFRASTRUCTURE = (
    "NodeDiedError",
    "WorkerCrashedError",
    "LocalRayletDiedError",
    "RayActorError",  # ActorDiedError, ActorUnavailableError
    "ObjectLostError",  # OwnerDiedError, ObjectReconstructionFailedError, ObjectFetchTimedOutError
    "RaySystemError",
    "RpcError",
    "ObjectStoreFullError",
    "OutOfDiskError",
    "RuntimeEnvSetupError",
)
# How long a node has to answer the start-up probe before it is left alone (a busy node).
PROBE_TIMEOUT = 60.0
# Programs a node needs beyond Python: replicates arrive as git packs (nightlab.research.remote).
NODE_PROGRAMS = ("git",)
_LOG = logging.getLogger("nightlab.executor.ray")


def is_infrastructure(exc: BaseException) -> bool:
    """Whether Ray raised ``exc`` for reasons of its own (see :data:`INFRASTRUCTURE`)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "RayTaskError" in names:  # the function raised: its own exception, whatever Ray wraps it in
        return False
    return bool(names & set(INFRASTRUCTURE))


def connect(ray: Any, address: str, timeout: float) -> None:
    """Join the cluster at ``address`` as a driver, quietly; one line naming it when it fails."""
    where = address.strip()
    if where != "auto":
        _reachable(where, timeout)
    if ray.is_initialized():
        ray.shutdown()
    try:
        with _own_signal_handlers():
            ray.init(
                address=where,
                logging_level=logging.ERROR,
                log_to_driver=False,  # the runs' output goes to their logs, not to this terminal
                namespace="nightlab",
            )
        _quiet_cluster_errors(ray)
    except Exception as exc:  # ConnectionError, a version mismatch, a malformed address
        with contextlib.suppress(Exception):
            ray.shutdown()
        detail = " ".join(str(exc).split())[:300]
        raise UserError(
            f"[executor.ray] address '{address}': cannot connect to a Ray cluster there ({detail})"
        ) from None


def _quiet_cluster_errors(ray: Any) -> None:
    """Send the cluster's error messages to a logger instead of this terminal.

    A driver prints whatever the cluster reports (a dead node's last twenty log lines, a killed
    worker's exit details) straight onto its stdout, in the middle of nightlab's own lines; what
    nightlab needs of them is in each run's ``infra.json``. Ray has no setting for it, so its
    printing function is replaced when it is where Ray 2.x keeps it; elsewhere nothing changes.
    """
    module = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(module, "print_to_stdstream", None)
    if original is None or getattr(original, "nightlab_quiet", False):
        return

    def to_logger(data: dict, *args: Any, **kwargs: Any) -> None:
        if data.get("pid") == "raylet":  # what the error listener forwards; task output is off anyway
            for line in data.get("lines", []):
                _LOG.info("%s", line)
        else:
            original(data, *args, **kwargs)

    to_logger.nightlab_quiet = True  # type: ignore[attr-defined]
    module.print_to_stdstream = to_logger


@contextlib.contextmanager
def _own_signal_handlers() -> Iterator[None]:
    """Keep the harness's SIGINT and SIGTERM handlers across ``ray.init``, which installs its own
    (a SIGTERM would then exit with 15 and a stack dump instead of nightlab's clean 143)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def _reachable(address: str, timeout: float) -> None:
    """A TCP connection to the address's host and port, so an unreachable cluster is one line
    within ``timeout`` seconds rather than minutes of Ray's own retries."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(
            f"[executor.ray] address '{address}': use auto, HOST:PORT (the head node) or ray://HOST:PORT"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"[executor.ray] address '{address}': cannot reach a Ray cluster there ({reason}); "
            "start one with `ray start --head` or fix the address"
        ) from None


def _probe() -> dict:
    """What a node offers nightlab (runs on the node, where this module imported to run it)."""
    missing = [program for program in NODE_PROGRAMS if shutil.which(program) is None]
    return {
        "nightlab": __version__,
        "python": sys.version.split()[0],
        "missing": missing,
    }


def check_nodes(ray: Any, address: str) -> None:
    """Every live node can run a replicate: the same nightlab imports there, git is installed.
    Nodes that do not answer within :data:`PROBE_TIMEOUT` (busy with other work) are left alone."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(_probe)
    refs: dict[Any, str] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ref = probe.options(num_cpus=0, max_retries=0, scheduling_strategy=strategy).remote()
        refs[ref] = f"{node.get('NodeManagerAddress', '?')} ({node['NodeID'][:12]})"
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT)
    for ref in late:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
    for ref in ready:
        where = f"[executor.ray] node {refs[ref]} of the cluster at '{address}'"
        try:
            found = ray.get(ref)
        except Exception as exc:
            if is_infrastructure(exc):
                continue  # a node going away now is the retries' business, not a setup problem
            detail = " ".join(str(getattr(exc, "cause", None) or exc).split())[:200]
            raise UserError(
                f"{where} cannot run nightlab ({detail}): install nightlab {__version__} on every node"
            ) from None
        if found["nightlab"] != __version__:
            raise UserError(
                f"{where} has nightlab {found['nightlab']}, this machine {__version__}: "
                "install the same version on every node"
            )
        if found["missing"]:
            raise UserError(
                f"{where} has no {', '.join(found['missing'])} on PATH: install it there "
                "(replicates arrive as git packs)"
            )
