"""A real Ray cluster on this machine for the tests: a head node and worker nodes, each started
by ``ray start`` in a process group of its own, so a test can kill one node (its Ray processes,
as a crashed machine would lose them) and the fixture can always take the whole cluster down.

Each worker node gets its own ``NIGHTLAB_NODE_DIR``, so setup caches and scratch folders are per
node as on separate machines. Health checks are tightened so a killed node is declared dead in
about a second rather than Ray's default of tens of seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Node:
    name: str
    group: int  # the process group of its `ray start` and every daemon it left
    node_dir: Path  # its NIGHTLAB_NODE_DIR


@dataclass
class LocalRayCluster:
    """``start()`` the head, ``add_node()`` workers, ``kill_node()`` one, ``stop()`` all."""

    # Short: Ray's socket paths live under it and must stay under the 107 bytes a socket allows.
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nlray-", dir="/tmp")))
    port: int = field(default_factory=free_port)
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, workers: int = 2, cpus: int = 1) -> LocalRayCluster:
        """A head that runs no tasks (so a test can kill the node a task landed on) and workers
        of ``cpus`` CPUs each (as Ray counts them: tasks at once), started at once."""
        head = self._spawn(
            "head", ["--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false"]
        )
        self._wait("head", head)
        started = [
            (f"w{i}", self._spawn(f"w{i}", [f"--address={self.address}", f"--num-cpus={cpus}"]))
            for i in range(1, workers + 1)
        ]
        for name, proc in started:
            self._wait(name, proc)
        return self

    def add_node(self, name: str) -> Node:
        self._wait(name, self._spawn(name, [f"--address={self.address}", "--num-cpus=1"]))
        return self.nodes[name]

    def node_of(self, path: Path | str) -> Node:
        """The worker node whose NIGHTLAB_NODE_DIR holds ``path``."""
        for node in self.nodes.values():
            if str(path).startswith(str(node.node_dir)):
                return node
        raise LookupError(f"{path} is in no node's folder")

    def kill_node(self, name: str) -> None:
        """SIGKILL every Ray process of node ``name``: its daemons and its worker processes
        (those run in process groups of their own, as children of its raylet). What the workers
        started in sessions of their own (training runs, their watchdogs) is left alone."""
        node = self.nodes.pop(name)
        victims = _group(node.group)
        for proc in list(victims):
            with contextlib.suppress(psutil.Error):
                if proc.name() == "raylet":
                    victims += [c for c in proc.children() if _session(c) == _session(proc)]
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def stop(self) -> None:
        for name in list(self.nodes):
            self.kill_node(name)
        shutil.rmtree(self.base, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        node_dir = self.base / f"{name}-nightlab"
        node_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **FAST_HEALTH_CHECKS, "NIGHTLAB_NODE_DIR": str(node_dir), "RAY_ADDRESS": ""}
        command = [
            RAY,
            "start",
            *args,
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.base / name}",
            "--object-store-memory=80000000",
            "--disable-usage-stats",
        ]
        proc = subprocess.Popen(
            command,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.nodes[name] = Node(name, proc.pid, node_dir)
        return proc

    def _wait(self, name: str, proc: subprocess.Popen) -> None:
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError(f"`ray start` of {name} took over 120 s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"`ray start` of {name} failed: {err[-2000:]}")


def _group(pgid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def _session(proc: psutil.Process) -> int:
    return os.getsid(proc.pid)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a parent that never reaps it counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_until(condition, timeout: float, interval: float = 0.1) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
