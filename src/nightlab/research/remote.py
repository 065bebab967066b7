"""Replicates on a cluster: the harness's side of ``[executor] kind = "ray"``.

:class:`RemoteReplicateRunner` has the interface of :class:`~nightlab.research.runner.ReplicateRunner`
(the loop, ``nightlab check`` and the studies use either without knowing), but instead of a
local worktree it packs a :class:`~nightlab.research.remote_node.NodeJob` (the commit's tree as
a git pack, the config, the frozen hashes, the seed, the pruner) and hands
:func:`~nightlab.research.remote_node.run_on_node` to the executor, which runs it as a task on
some node. What comes back is unpacked into the replicate's run directory here, as if the run
had happened locally, plus:

* ``remote.json``: the node (id, host, ip), the seconds each phase took there, files left there;
* ``infra.json`` when Ray-level failures made the executor run the task again: one entry each
  (error type, message, node when Ray named it); ``metrics["infra_retries"]`` counts them.

A replicate whose infrastructure retries ran out ends as ``crash`` with a reason that starts
``infrastructure:``; one whose code crashed is a crash as it would be locally, never retried.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

from nightlab.config import Config
from nightlab.executor.process import RunInterrupted
from nightlab.executor.ray_cluster import InfraFailure, InfrastructureError, ReturnLimits
from nightlab.executor.slots import Slot
from nightlab.research.pruning import Pruner
from nightlab.research.remote_node import NodeJob, NodeOutcome, run_on_node
from nightlab.research.runner import Replicate, ReplicateRunner, fresh_run_dir
from nightlab.store.backup import save_replicate
from nightlab.types import RunResult, RunStatus
from nightlab.workspace.git import Workspace
from nightlab.workspace.gitcli import decode, run_git
from nightlab.workspace.integrity import FrozenCheck

INFRA_FILE = "infra.json"
REMOTE_FILE = "remote.json"
# Packs of recent trees, kept for the next replicates of the same experiment.
_PACKS_KEPT = 4


class RemoteExecutor(Protocol):
    """What a cluster executor offers the remote runner (nightlab.executor.ray_cluster)."""

    return_limits: ReturnLimits

    def call(self, fn: Any, *args: Any) -> tuple[Any, list[InfraFailure]]: ...


class RemoteReplicateRunner:
    """Runs replicates as tasks of a cluster executor; ``local`` holds the config, the workspace,
    the frozen check and the worktree name (it never trains here)."""

    def __init__(self, local: ReplicateRunner, executor: RemoteExecutor) -> None:
        self.local = local
        self.executor = executor
        self._packs: OrderedDict[str, bytes] = OrderedDict()
        self._packs_lock = threading.Lock()

    # The parts of ReplicateRunner that callers read.
    @property
    def config(self) -> Config:
        return self.local.config

    @property
    def workspace(self) -> Workspace:
        return self.local.workspace

    @property
    def frozen(self) -> FrozenCheck:
        return self.local.frozen

    @property
    def worktree(self) -> str:
        return self.local.worktree

    def with_config(self, config: Config, extra_env: dict[str, str] | None = None) -> RemoteReplicateRunner:
        """The same workspace, frozen check and executor with another budget or extra environment."""
        return RemoteReplicateRunner(self.local.with_config(config, extra_env), self.executor)

    def run_dir(self, experiment_id: int, replicate: int) -> Path:
        return self.local.run_dir(experiment_id, replicate)

    def run(
        self,
        experiment_id: int,
        replicate: int,
        commit: str,
        seed: int,
        run_dir: Path | None = None,
        pruner: Pruner | None = None,
        slot: Slot | None = None,
    ) -> Replicate:
        """Train and evaluate ``commit`` once on a node; never raises for anything the script does
        (:class:`RunInterrupted` when nightlab is stopping, as locally)."""
        run_dir = fresh_run_dir(run_dir or self.run_dir(experiment_id, replicate), slot)
        job = self._job(experiment_id, replicate, commit, seed, pruner)
        failures: list[InfraFailure] = []
        try:
            outcome, failures = self.executor.call(run_on_node, job)
        except RunInterrupted:
            raise
        except InfrastructureError as exc:
            failures = exc.failures
            result = RunResult(status=RunStatus.CRASH, seed=seed, reason=str(exc))
            return self._finish(run_dir, result, None, None, failures)
        except Exception as exc:
            return self._finish(run_dir, _failed_on_node(exc, seed), None, None, [])
        result = self._unpack(outcome, run_dir)
        if pruner is not None and outcome.evidence is not None:
            pruner.evidence = outcome.evidence  # the loop records why the run was stopped
        return self._finish(run_dir, result, outcome.metric, outcome.holdout, failures)

    # -- helpers -----------------------------------------------------------------------------
    def _job(
        self, experiment_id: int, replicate: int, commit: str, seed: int, pruner: Pruner | None
    ) -> NodeJob:
        config = self.local.config
        tree, pack = self._pack(commit)
        limits = self.executor.return_limits
        allowed = {name: os.environ[name] for name in config.run.allow_env if name in os.environ}
        return NodeJob(
            config=config,
            pack=pack,
            tree=tree,
            commit=commit,
            frozen=dict(self.local.frozen.expected),
            experiment_id=experiment_id,
            replicate=replicate,
            seed=seed,
            worktree=self.local.worktree,
            extra_env=dict(self.local.extra_env),
            allowed_env=allowed,
            pruner=pruner,
            log_bytes=limits.log_bytes,
            files_bytes=limits.files_bytes,
        )

    def _pack(self, commit: str) -> tuple[str, bytes]:
        """(tree id, a git pack of the tree and everything in it); the last few are kept."""
        root = self.local.workspace.root
        tree = decode(run_git(["rev-parse", "--verify", f"{commit}^{{tree}}"], root).stdout).strip()
        with self._packs_lock:
            pack = self._packs.get(tree)
            if pack is not None:
                self._packs.move_to_end(tree)
                return tree, pack
        objects = run_git(["rev-list", "--objects", tree], root).stdout
        pack = run_git(["pack-objects", "--stdout", "-q"], root, input=objects).stdout
        with self._packs_lock:
            self._packs[tree] = pack
            while len(self._packs) > _PACKS_KEPT:
                self._packs.popitem(last=False)
        return tree, pack

    def _unpack(self, outcome: NodeOutcome, run_dir: Path) -> RunResult:
        """The node's run directory into ``run_dir``; its result with the node's paths made local."""
        extract(outcome.archive, run_dir)
        result = RunResult.from_dict(outcome.result)
        there = outcome.run_dir
        result.reason = result.reason.replace(there, str(run_dir))
        if result.log_path:
            result.log_path = result.log_path.replace(there, str(run_dir))
        record = {"node": outcome.node, "seconds": outcome.seconds, "omitted": outcome.omitted}
        (run_dir / REMOTE_FILE).write_text(json.dumps(record, indent=1))
        return result

    def _finish(
        self,
        run_dir: Path,
        result: RunResult,
        metric: float | None,
        holdout: float | None,
        failures: list[InfraFailure],
    ) -> Replicate:
        result.metrics["infra_retries"] = len(failures)
        if failures:
            (run_dir / INFRA_FILE).write_text(json.dumps([f.to_dict() for f in failures], indent=1))
        save_replicate(run_dir, result, metric, holdout)  # local paths, the retries counted
        return Replicate(result, metric, holdout, run_dir)


def _failed_on_node(exc: Exception, seed: int) -> RunResult:
    """A task that ended in an error of its own: nightlab failing on the node (git missing, a
    full disk) is a crash; Ray's memory monitor killing the task is the run's memory, an oom."""
    cause = getattr(exc, "cause", None) or exc
    detail = " ".join(str(cause).split())[:300]
    if "OutOfMemoryError" in {cls.__name__ for cls in type(exc).__mro__}:
        return RunResult(status=RunStatus.OOM, seed=seed, reason=f"killed by Ray's memory monitor: {detail}")
    return RunResult(
        status=RunStatus.CRASH, seed=seed, reason=f"on the node: {type(cause).__name__}: {detail}"
    )


def extract(archive: bytes, destination: Path) -> None:
    """Regular files and folders of a tar archive under ``destination``; anything else (links,
    devices) and any path leading outside it is skipped."""
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar:
            target = (root / member.name).resolve()
            if not target.is_relative_to(root) or target == root:
                continue
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                source = tar.extractfile(member)
                if source is None:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as handle:
                    shutil.copyfileobj(source, handle)
