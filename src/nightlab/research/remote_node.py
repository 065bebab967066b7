"""A replicate on a cluster node: the part of nightlab.research.remote that runs on the node.

:func:`run_on_node` receives a :class:`NodeJob` (the experiment's tree as a git pack, the config,
the frozen hashes, the seed, the pruner) and nothing else: no filesystem is shared with the
harness. In a scratch folder of the node it builds a git repository holding exactly that tree,
runs the target's setup once per node and frozen-files version (cached, under a file lock), and
runs the replicate with the same :class:`~nightlab.research.runner.ReplicateRunner` and local
executor as on the harness's machine, so the training, the audit, the frozen evaluation in its
own process, the limits and the scrubbed environment are the ones ``kind = "local"`` has. What
comes back (:class:`NodeOutcome`) is plain data: the result, the metric, and the run directory
as a tar archive, each log whole up to a cap (its head and tail beyond it), other files up to a
total. The scratch folder is removed before the task returns.

Where a node keeps its things: ``$NIGHTLAB_NODE_DIR``, else ``~/.cache/nightlab/node-<host>``;
``setup/<version>/`` holds the setup's files for every task of that node, ``tasks/`` the
scratch folders (one left by a task whose process died is removed by the next task).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nightlab.config import Config
from nightlab.errors import UserError
from nightlab.executor.local import LocalExecutor
from nightlab.executor.process import Watchdog
from nightlab.executor.watchdog import NO_TAG, remove_folder
from nightlab.research.pruning import Pruner
from nightlab.research.runner import ReplicateRunner
from nightlab.research.setup import MANIFEST, SetupData, prepare_setup, setup_version
from nightlab.types import RunResult, RunStatus
from nightlab.workspace.git import IDENTITY, Workspace
from nightlab.workspace.gitcli import decode, run_git
from nightlab.workspace.integrity import FrozenCheck

NODE_DIR_VARIABLE = "NIGHTLAB_NODE_DIR"
OWNER_FILE = "owner"
SETUP_LOG = "setup.log"
LOG_SUFFIXES = (".log",)


@dataclass
class NodeJob:
    """Everything a node needs to run one replicate (pickled by Ray, shipped to the node)."""

    config: Config
    pack: bytes  # a git pack holding ``tree`` and everything under it
    tree: str
    commit: str  # the harness's commit of that tree, for messages
    frozen: dict[str, str]  # path -> sha256 the frozen files must have
    experiment_id: int
    replicate: int
    seed: int
    worktree: str
    extra_env: dict[str, str] = field(default_factory=dict)
    # Values on the harness of the variables ``[run] allow_env`` lets through, for a node that
    # lacks them (its own values win).
    allowed_env: dict[str, str] = field(default_factory=dict)
    pruner: Pruner | None = None
    log_bytes: int = 20_000_000
    files_bytes: int = 200_000_000


@dataclass
class NodeOutcome:
    """What a node sends back: plain data, so the harness reads it whatever the node's paths."""

    result: dict  # RunResult.to_dict()
    metric: float | None
    holdout: float | None
    archive: bytes  # the run directory, tar.gz
    run_dir: str  # its path on the node, to rewrite in messages
    node: dict  # node_id, ip, host, dir (see node_identity)
    seconds: dict[str, float]
    omitted: list[str] = field(default_factory=list)
    evidence: dict | None = None


def run_on_node(job: NodeJob) -> NodeOutcome:
    """Run one replicate here (see the module docstring); never raises for what the candidate does."""
    clock = _Clock()
    home = node_dir()
    tasks = home / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    _remove_stale(tasks)
    scratch = Path(tempfile.mkdtemp(prefix="task-", dir=tasks))
    (scratch / OWNER_FILE).write_text(f"{os.getpid()} {_start_mark(os.getpid())}")
    run_dir = scratch / "run"
    environ = {**job.allowed_env, **os.environ}
    executor = LocalExecutor(
        memory_limit_mb=job.config.run.memory_limit_mb,
        log_limit_bytes=int(job.config.run.log_limit_mb * 1e6),
        run_dir_limit_bytes=int(job.config.run.run_dir_limit_mb * 1e6)
        if job.config.run.run_dir_limit_mb
        else None,
        environ=environ,
    )
    # Removes the scratch folder if this worker is killed (a forced cancel): by then the run's
    # own watchdog is killing the training that used it.
    janitor = Watchdog(0, NO_TAG, executor.limits.grace_seconds, remove=[scratch])
    try:
        workspace, commit = unpack_tree(job, scratch / "repo")
        clock.lap("checkout")
        try:
            setup = node_setup(job, workspace, commit, executor, home)
        except UserError as exc:
            clock.lap("setup")
            return _setup_failed(job, exc, run_dir, home, clock)
        clock.lap("setup")
        runner = ReplicateRunner(
            job.config, workspace, executor, FrozenCheck(dict(job.frozen)), job.worktree, job.extra_env, setup
        )
        rep = runner.run(
            job.experiment_id, job.replicate, commit, job.seed, run_dir=run_dir, pruner=job.pruner
        )
        clock.lap("run")
        archive, omitted = pack_run_dir(run_dir, job.log_bytes, job.files_bytes)
        clock.lap("pack")
        return NodeOutcome(
            result=rep.result.to_dict(),
            metric=rep.metric,
            holdout=rep.holdout,
            archive=archive,
            run_dir=str(run_dir),
            node=node_identity(),
            seconds=clock.laps,
            omitted=omitted,
            evidence=job.pruner.evidence if job.pruner is not None else None,
        )
    finally:
        executor.close(kill=True)
        remove_tree(scratch)
        janitor.release()


def node_dir() -> Path:
    """Where this node keeps setup data and scratch folders (see the module docstring)."""
    configured = os.environ.get(NODE_DIR_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    # Not under /tmp, which the sandbox lets every run write; the host in the name keeps nodes
    # that share a home directory (NFS) apart.
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "nightlab" / f"node-{socket.gethostname()}"


def node_identity() -> dict:
    """This node as Ray names it (when the task runs under Ray), its host name and :func:`node_dir`."""
    found = {"host": socket.gethostname(), "node_id": None, "ip": None, "dir": str(node_dir())}
    try:
        import ray

        if ray.is_initialized():
            found["node_id"] = ray.get_runtime_context().get_node_id()
            found["ip"] = ray.util.get_node_ip_address()
    except Exception:  # not under Ray (a test calling run_on_node), or an older Ray
        pass
    return found


def unpack_tree(job: NodeJob, root: Path) -> tuple[Workspace, str]:
    """A fresh repository at ``root`` whose one commit holds the job's tree; (workspace, commit)."""
    root.mkdir(parents=True)
    run_git(["init", "-q"], root)
    run_git(["index-pack", "--stdin"], root, input=job.pack)
    message = f"nightlab: experiment {job.experiment_id} ({job.commit[:12]} on the harness)\n"
    commit = decode(
        run_git(["commit-tree", job.tree], root, input=message.encode(), env=IDENTITY).stdout
    ).strip()
    run_git(["update-ref", "HEAD", commit], root)
    return Workspace(root), commit


def node_setup(
    job: NodeJob, workspace: Workspace, commit: str, executor: LocalExecutor, home: Path
) -> SetupData | None:
    """The setup's files for this frozen-files version on this node: made by the first task that
    needs them, under a lock, and shared by every later task through a link from the scratch
    workspace's state folder."""
    command = job.config.target.setup
    if not command:
        return None
    version = setup_version(command, job.frozen)
    shared = home / "setup"
    shared.mkdir(parents=True, exist_ok=True)
    (workspace.state_dir / "setup").symlink_to(shared, target_is_directory=True)
    with file_lock(shared / f"{version}.lock"):
        folder = shared / version
        if folder.exists() and not (folder / MANIFEST).is_file():
            remove_tree(folder)  # a setup that died half-way: start it again
        return prepare_setup(
            workspace,
            executor,
            command,
            commit,
            version,
            env=dict(job.config.target.env),
            allow_env=list(job.config.run.allow_env),
            seed=job.config.run.seed,
        )


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (released by the kernel if this process dies)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pack_run_dir(run_dir: Path, log_bytes: int, files_bytes: int) -> tuple[bytes, list[str]]:
    """The run directory as tar.gz: logs whole up to ``log_bytes`` (head and tail beyond it),
    other files while their total stays under ``files_bytes``; the paths left out, with why."""
    buffer = io.BytesIO()
    omitted: list[str] = []
    total = 0
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for path in sorted(run_dir.rglob("*")) if run_dir.is_dir() else []:
            rel = path.relative_to(run_dir).as_posix()
            info = path.lstat()
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                omitted.append(f"{rel} (not a regular file)")
            elif rel.endswith(LOG_SUFFIXES):
                _add_bytes(tar, rel, trimmed_log(path, log_bytes))
            elif total + info.st_size > files_bytes:
                omitted.append(f"{rel} ({info.st_size / 1e6:.1f} MB: over files_return_mb)")
            else:
                total += info.st_size
                tar.add(path, arcname=rel, recursive=False)
    return buffer.getvalue(), omitted


def trimmed_log(path: Path, limit: int) -> bytes:
    """The log whole when it fits ``limit``, else its first quarter and last three quarters of
    ``limit`` with a line saying how much was left on the node."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size <= limit:
            return handle.read()
        head = handle.read(limit // 4)
        handle.seek(size - (limit - limit // 4))
        tail = handle.read()
    cut = size - len(head) - len(tail)
    note = f"\n[nightlab: {cut} bytes of this log were left on the node (log_return_mb)]\n".encode()
    return head + note + tail


def remove_tree(path: Path) -> None:
    """``rm -rf`` that also removes files a run made read-only (the watchdog's own removal)."""
    remove_folder(str(path), patience=0)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _setup_failed(job: NodeJob, exc: UserError, run_dir: Path, home: Path, clock: _Clock) -> NodeOutcome:
    """A setup command that fails on the node: the replicate is a crash, the setup log comes back."""
    run_dir.mkdir(parents=True, exist_ok=True)
    version = setup_version(job.config.target.setup or "", job.frozen)
    log = home / "setup" / version / "log" / SETUP_LOG
    if log.is_file():
        shutil.copyfile(log, run_dir / SETUP_LOG)
    host = socket.gethostname()
    result = RunResult(status=RunStatus.CRASH, seed=job.seed, reason=f"setup on node {host}: {exc}")
    archive, omitted = pack_run_dir(run_dir, job.log_bytes, job.files_bytes)
    return NodeOutcome(
        result.to_dict(), None, None, archive, str(run_dir), node_identity(), clock.laps, omitted
    )


def _remove_stale(tasks: Path) -> None:
    """Scratch folders whose task's process is gone (a worker killed with its node)."""
    for folder in tasks.iterdir():
        try:
            pid, mark = (folder / OWNER_FILE).read_text().split()
        except (OSError, ValueError):
            try:
                if time.time() - folder.stat().st_mtime < 60:  # being created right now
                    continue
            except OSError:  # removed by another task meanwhile
                continue
            pid, mark = "0", ""
        if _start_mark(int(pid)) != mark:
            remove_tree(folder)


def _start_mark(pid: int) -> str:
    """When process ``pid`` started (from /proc), so a reused pid is not taken for its owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "gone" if pid else ""


class _Clock:
    """Seconds spent in each phase of a task (what the harness reports as the Ray overhead)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = round(now - self._last, 4)
        self._last = now
