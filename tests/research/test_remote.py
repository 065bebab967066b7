"""Replicates shipped to a node (nightlab.research.remote and remote_node), without a cluster.

The node's function runs in this process through an executor that pickles what goes in and what
comes back, as Ray would; tests/executor/test_ray_cluster.py runs the same on a real cluster.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import tarfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from helpers import TOY_TOML, edit, make_workspace, nightlab
from nightlab.config import load_config
from nightlab.executor.local import LocalExecutor
from nightlab.executor.ray_cluster import InfraFailure, InfrastructureError, ReturnLimits
from nightlab.research.pruning import Pruner
from nightlab.research.remote import RemoteReplicateRunner, extract
from nightlab.research.remote_node import NODE_DIR_VARIABLE, _start_mark, pack_run_dir, trimmed_log
from nightlab.research.runner import ReplicateRunner
from nightlab.types import RunStatus
from nightlab.workspace.git import Workspace
from nightlab.workspace.integrity import FrozenCheck, frozen_paths, hash_paths


class InProcess:
    """An executor that runs the node's function here, its arguments and result pickled."""

    def __init__(self, failures: list[InfraFailure] | None = None, raises: Exception | None = None) -> None:
        self.return_limits = ReturnLimits(log_bytes=20_000_000, files_bytes=200_000_000)
        self.failures = failures or []
        self.raises = raises
        self.calls = 0

    def call(self, fn, *args):  # noqa: ANN001, ANN201 - the RemoteExecutor protocol
        self.calls += 1
        if self.raises is not None:
            raise self.raises
        shipped = pickle.loads(pickle.dumps(args))
        return pickle.loads(pickle.dumps(fn(*shipped))), list(self.failures)


class InProcesses(InProcess):
    """The node's function in a process of its own for each call (spawned, as a Ray worker is)."""

    def call(self, fn, *args):  # noqa: ANN001, ANN201 - the RemoteExecutor protocol
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(fn, *args).result(), []


class StopAtOnce(Pruner):
    """A pruner that stops the run the first time it is asked."""

    def should_stop(self, points: list) -> str | None:
        self.evidence = {"at": 0.0, "value": None, "why": "test"}
        return "stopped by the test's pruner"


def _runner(root: Path, executor: InProcess) -> RemoteReplicateRunner:
    config = load_config(root)
    workspace = Workspace(root)
    tree = workspace.worktree("run-0")
    workspace.checkout(tree, workspace.head_commit())
    frozen = FrozenCheck(hash_paths(tree, frozen_paths(config, tree)))
    return RemoteReplicateRunner(
        ReplicateRunner(config, workspace, LocalExecutor(), frozen, "run-0"), executor
    )


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "node-a"
    monkeypatch.setenv(NODE_DIR_VARIABLE, str(folder))
    return folder


def test_a_replicate_runs_in_a_scratch_folder_of_the_node_and_comes_back(tmp_path: Path, node: Path) -> None:
    root = make_workspace(tmp_path / "ws", evaluate=True)
    runner = _runner(root, InProcess())
    head = runner.workspace.head_commit()
    rep = runner.run(1, 0, head, seed=7)
    assert rep.result.status is RunStatus.OK, rep.result.reason
    assert rep.run_dir == root / ".nightlab" / "runs" / "0001" / "0"
    assert rep.metric == json.loads((rep.run_dir / "metrics.json").read_text())["val_loss"]
    assert rep.result.log_path == str(rep.run_dir / "run.log")
    assert {"run.log", "eval.log", "metrics.json", "replicate.json", "remote.json"} <= {
        p.name for p in rep.run_dir.iterdir()
    }
    record = json.loads((rep.run_dir / "replicate.json").read_text())
    assert record["metrics"]["infra_retries"] == 0 and record["seed"] == 7
    remote = json.loads((rep.run_dir / "remote.json").read_text())
    assert remote["node"]["dir"] == str(node) and set(remote["seconds"]) == {
        "checkout",
        "setup",
        "run",
        "pack",
    }
    assert list((node / "tasks").iterdir()) == []  # the scratch folder is gone
    # A second replicate of the same commit reuses the pack of its tree.
    assert runner.run(1, 1, head, seed=8).ok and len(runner._packs) == 1


PREPARE = """\
import os, pathlib, sys, time
with open(sys.argv[1], "a") as f:
    f.write("setup\\n")
time.sleep(1.0)  # long enough for the second task to arrive while this one prepares
os.makedirs("data", exist_ok=True)
pathlib.Path("data/train.bin").write_bytes(b"x" * 100)
"""

TRAIN_WITH_DATA = """\
import json, os, pathlib
data = pathlib.Path("data/train.bin").read_bytes()
with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "metrics.json"), "w") as f:
    json.dump({"val_loss": 1.0 + len(data) / 1000}, f)
"""


def _setup_workspace(root: Path, counter: Path, prepare: str = PREPARE) -> Path:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    toml = toml.replace(
        'run = "python train.py"', f'run = "python train.py"\nsetup = "python prepare.py {counter}"'
    )
    toml = toml.replace('frozen = ["evaluate.py"]', 'frozen = ["evaluate.py", "prepare.py"]')
    return make_workspace(
        root,
        train=TRAIN_WITH_DATA,
        toml=toml,
        extra_files={"prepare.py": prepare, ".gitignore": "data/\n"},
    )


def test_the_setup_runs_once_per_node_even_for_tasks_arriving_at_once(
    tmp_path: Path, node: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = tmp_path / "setup-count"
    root = _setup_workspace(tmp_path / "ws", counter)
    # Two tasks of one node in two processes, as two Ray workers of a node are.
    runner = _runner(root, InProcesses())
    head = runner.workspace.head_commit()
    reps: list = [None, None]

    def run(i: int) -> None:
        reps[i] = runner.run(1, i, head, seed=i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.ok for r in reps), [r.result.reason for r in reps]
    assert reps[0].metric == pytest.approx(1.1)
    assert counter.read_text() == "setup\n"
    assert runner.run(1, 2, head, seed=2).ok
    assert counter.read_text() == "setup\n"
    # Another node prepares its own.
    monkeypatch.setenv(NODE_DIR_VARIABLE, str(tmp_path / "node-b"))
    assert runner.run(1, 3, head, seed=3).ok
    assert counter.read_text() == "setup\nsetup\n"


def test_a_setup_that_fails_on_the_node_is_a_crash_with_its_log(tmp_path: Path, node: Path) -> None:
    counter = tmp_path / "setup-count"
    root = _setup_workspace(
        tmp_path / "ws", counter, prepare="import sys\nprint('no data here')\nsys.exit(3)\n"
    )
    rep = _runner(root, InProcess()).run(1, 0, Workspace(root).head_commit(), seed=0)
    assert rep.result.status is RunStatus.CRASH
    assert rep.result.reason.startswith("setup on node ") and "failed" in rep.result.reason
    assert "no data here" in (rep.run_dir / "setup.log").read_text()


def _failure(error: str = "NodeDiedError") -> InfraFailure:
    return InfraFailure(
        error, "Task failed because the node it was running on is dead", "abc123", "2026-01-01T00:00:00"
    )


def test_infrastructure_retries_are_recorded_beside_the_run(tmp_path: Path, node: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    rep = _runner(root, InProcess(failures=[_failure()])).run(1, 0, Workspace(root).head_commit(), seed=0)
    assert rep.ok and rep.result.metrics["infra_retries"] == 1
    assert json.loads((rep.run_dir / "infra.json").read_text())[0]["error"] == "NodeDiedError"


def test_infrastructure_failures_past_the_cap_end_the_replicate_as_a_crash_saying_so(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    failures = [_failure(), _failure("WorkerCrashedError")]
    runner = _runner(root, InProcess(raises=InfrastructureError(failures)))
    rep = runner.run(1, 0, Workspace(root).head_commit(), seed=0)
    assert rep.result.status is RunStatus.CRASH and rep.metric is None
    assert rep.result.reason.startswith(
        "infrastructure: 2 Ray failure(s) in a row, the last WorkerCrashedError"
    )
    assert rep.result.metrics["infra_retries"] == 2
    assert [f["error"] for f in json.loads((rep.run_dir / "infra.json").read_text())] == [
        "NodeDiedError",
        "WorkerCrashedError",
    ]
    assert json.loads((rep.run_dir / "replicate.json").read_text())["status"] == "crash"


def test_an_error_of_nightlab_on_the_node_is_a_crash_not_a_traceback(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    rep = _runner(root, InProcess(raises=OSError("No space left on device"))).run(
        1, 0, Workspace(root).head_commit(), seed=0
    )
    assert rep.result.status is RunStatus.CRASH
    assert rep.result.reason == "on the node: OSError: No space left on device"


# Writes the metric, and nothing else.
TOY_TRAINING = "import json, os\nopen(os.path.join(os.environ['NIGHTLAB_RUN_DIR'], 'metrics.json'), 'w').write('{\"val_loss\": 1}')\n"


def test_a_pruned_run_brings_its_evidence_back_to_the_caller_s_pruner(tmp_path: Path, node: Path) -> None:
    slow = "import time\ntime.sleep(3)\n" + TOY_TRAINING
    root = make_workspace(tmp_path / "ws", train=slow)
    pruner = StopAtOnce()
    started = time.monotonic()
    rep = _runner(root, InProcess()).run(1, 0, Workspace(root).head_commit(), seed=0, pruner=pruner)
    assert rep.result.status is RunStatus.PRUNED and time.monotonic() - started < 3
    assert pruner.evidence == {"at": 0.0, "value": None, "why": "test"}


def test_logs_come_back_whole_under_the_cap_and_as_head_and_tail_over_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "outputs").mkdir(parents=True)
    (run_dir / "run.log").write_bytes(b"".join(b"line %06d\n" % i for i in range(10_000)))  # 110 kB
    (run_dir / "eval.log").write_text("small\n")
    (run_dir / "outputs" / "ckpt.pt").write_bytes(b"w" * 5000)
    (run_dir / "outputs" / "big.bin").write_bytes(b"b" * 50_000)
    (run_dir / "link").symlink_to("/etc/hostname")
    archive, omitted = pack_run_dir(run_dir, log_bytes=10_000, files_bytes=20_000)
    back = tmp_path / "back"
    extract(archive, back)
    log = (back / "run.log").read_bytes()
    assert log.startswith(b"line 000000\n") and log.endswith(b"line 009999\n")
    assert b"bytes of this log were left on the node" in log and len(log) < 10_200
    assert (back / "eval.log").read_text() == "small\n"
    assert (back / "outputs" / "ckpt.pt").read_bytes() == b"w" * 5000
    assert not (back / "outputs" / "big.bin").exists() and not (back / "link").exists()
    assert sorted(omitted) == ["link (not a regular file)", "outputs/big.bin (0.1 MB: over files_return_mb)"]
    assert trimmed_log(run_dir / "eval.log", 10) == b"small\n"


def test_an_archive_cannot_write_outside_the_run_dir(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("../escaped", "/tmp/absolute-escape", "fine.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
        link = tarfile.TarInfo("evil-link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc"
        tar.addfile(link)
    extract(buffer.getvalue(), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["fine.txt"]
    assert not (tmp_path / "escaped").exists()


def test_kind_ray_without_ray_installed_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray (a test hides it)')\n")
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    toml += '[executor]\nkind = "ray"\n[executor.ray]\naddress = "127.0.0.1:1"\n'
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")], toml=toml)
    result = nightlab("run", str(root), "--plain", env={"PYTHONPATH": str(fake.parent)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'nightlab[ray]'" in lines[0], result.stderr


def test_an_unreachable_cluster_is_one_line_naming_its_address(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    toml += '[executor]\nkind = "ray"\naddress = "127.0.0.1:9"\n'  # a flat key of the ray kind counts too
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")], toml=toml)
    result = nightlab("run", str(root), "--plain")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "address '127.0.0.1:9': cannot reach a Ray cluster there" in lines[0], (
        result.stderr
    )


def test_ray_settings_are_checked_like_the_rest_of_the_file(tmp_path: Path) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    toml += '[executor]\nkind = "ray"\n[executor.ray]\nnum_gpus = -1\n'
    root = make_workspace(tmp_path / "ws", toml=toml)
    result = nightlab("run", str(root), "--plain")
    assert result.returncode == 2
    assert "executor.ray" in result.stderr and "num_gpus" in result.stderr


class OutOfMemoryError(Exception):
    """Named as Ray's: its memory monitor killed the task."""


def test_a_task_killed_by_ray_s_memory_monitor_is_an_oom(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    runner = _runner(
        root, InProcess(raises=OutOfMemoryError("Task was killed due to the node running low on memory"))
    )
    rep = runner.run(1, 0, Workspace(root).head_commit(), seed=0)
    assert rep.result.status is RunStatus.OOM
    assert rep.result.reason.startswith("killed by Ray's memory monitor: Task was killed")


def test_a_scratch_folder_left_by_a_dead_task_goes_with_the_next_task(tmp_path: Path, node: Path) -> None:
    stale, live = node / "tasks" / "task-dead", node / "tasks" / "task-live"
    for folder in (stale, live):
        (folder / "repo").mkdir(parents=True)
    (stale / "owner").write_text("999999999 123")  # no such process
    (live / "owner").write_text(f"{os.getpid()} {_start_mark(os.getpid())}")  # this test: alive
    root = make_workspace(tmp_path / "ws")
    assert _runner(root, InProcess()).run(1, 0, Workspace(root).head_commit(), seed=0).ok
    assert sorted(p.name for p in (node / "tasks").iterdir()) == ["task-live"]
