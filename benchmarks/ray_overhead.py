"""What running a replicate as a Ray task costs, beyond running it locally (``kind = "ray"``).

Starts a one-node Ray cluster on this machine (``ray start --head`` in a process group of its
own, taken down at the end), builds a toy workspace whose training and frozen evaluation take a
few milliseconds, and times whole replicates (checkout, training, audit, evaluation, metric,
run directory) both ways:

1. local: :class:`~nightlab.research.runner.ReplicateRunner` with the local executor, as
   ``kind = "local"`` runs them;
2. ray: :class:`~nightlab.research.remote.RemoteReplicateRunner` on the cluster, a new commit
   every replicate (so every task ships a fresh git pack), as ``kind = "ray"`` runs them.

The difference of the medians is the Ray path's overhead per replicate (the issue's goal: under
1 s). The node's own phases (unpacking the tree into a scratch repository, the replicate, packing
the run directory) come from each run's ``remote.json``; the first Ray replicate (a cold worker)
is reported apart. The cluster runs on the same machine, so no network time is included: add
the transfer of the tree and the run directory for a real cluster.

Run: ``.venv/bin/python benchmarks/ray_overhead.py [--runs 20] [--json]`` (needs the ray extra).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

TRAIN = """\
import json, os
LR = {lr}
with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "result.json"), "w") as f:
    json.dump({{"loss": 1.0 + (LR - 0.3) ** 2}}, f)
"""
EVALUATE = """\
import json, os
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
loss = json.load(open(os.path.join(run_dir, "result.json")))["loss"]
json.dump({"val_loss": loss}, open(os.path.join(run_dir, "metrics.json"), "w"))
"""
TOML = """\
[target]
editable = ["train.py"]
frozen = ["evaluate.py"]
run = "python train.py"
evaluate = "python evaluate.py"
[budget]
seconds = 5
timeout = 60
[metric]
name = "val_loss"
direction = "minimize"
[run]
sandbox = "off"
"""


def _git(root: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=b", "-c", "user.email=b@b", *args]
    return subprocess.run(command, cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def _workspace(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "train.py").write_text(TRAIN.format(lr=0.1))
    (root / "evaluate.py").write_text(EVALUATE)
    (root / "nightlab.toml").write_text(TOML)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "toy")
    return root


class OneNodeCluster:
    """``ray start --head`` with one CPU, in its own process group; :meth:`stop` kills it all."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="nlbench-", dir="/tmp"))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        ray = str(Path(sys.executable).with_name("ray"))
        command = [ray, "start", "--head", f"--port={self.port}", "--num-cpus=1", "--include-dashboard=false"]
        command += ["--node-ip-address=127.0.0.1", f"--temp-dir={self.base / 'ray'}", "--disable-usage-stats"]
        env = {**os.environ, "NIGHTLAB_NODE_DIR": str(self.base / "node"), "RAY_ADDRESS": ""}
        proc = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.group = proc.pid
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed: {err.decode()[-1000:]}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        victims = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(proc.pid) == self.group:
                    victims.append(proc)
                    if proc.name() == "raylet":
                        victims += proc.children()
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


def measure(runs: int) -> dict:
    from nightlab.config import load_config
    from nightlab.executor.local import LocalExecutor
    from nightlab.executor.ray_cluster import RayExecutor, RaySettings
    from nightlab.research.remote import RemoteReplicateRunner
    from nightlab.research.runner import ReplicateRunner
    from nightlab.workspace.git import Workspace
    from nightlab.workspace.integrity import FrozenCheck, frozen_paths, hash_paths

    cluster = OneNodeCluster()
    scratch = Path(tempfile.mkdtemp(prefix="nlbench-ws-"))
    try:
        root = _workspace(scratch / "ws")
        config, workspace = load_config(root), Workspace(root)
        head = workspace.head_commit()
        tree = workspace.worktree("run-0")
        workspace.checkout(tree, head)
        frozen = FrozenCheck(hash_paths(tree, frozen_paths(config, tree)))
        local = ReplicateRunner(config, workspace, LocalExecutor(), frozen, "run-0")
        commits = [
            workspace.commit_files(head, {"train.py": TRAIN.format(lr=0.1 + i / 1000)}, f"lr {i}")
            for i in range(runs + 1)
        ]

        def timed(runner, experiment: int, commit: str) -> float:
            started = time.perf_counter()
            rep = runner.run(experiment, 0, commit, seed=experiment)
            assert rep.ok, rep.result.reason
            return time.perf_counter() - started

        local_walls = [timed(local, i + 1, c) for i, c in enumerate(commits)][1:]  # first: warm-up
        started = time.perf_counter()
        executor = RayExecutor(RaySettings(address=cluster.address))
        connect = time.perf_counter() - started
        remote = RemoteReplicateRunner(local, executor)
        ray_walls = [timed(remote, 1000 + i, c) for i, c in enumerate(commits)]
        phases: dict[str, list[float]] = {}
        for i in range(1, len(commits)):
            record = json.loads((remote.run_dir(1000 + i, 0) / "remote.json").read_text())
            for name, seconds in record["seconds"].items():
                phases.setdefault(name, []).append(seconds)
        executor.close()
    finally:
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    local_median, ray_median = statistics.median(local_walls), statistics.median(ray_walls[1:])
    return {
        "runs": runs,
        "connect_and_probe_s": round(connect, 3),
        "local_median_s": round(local_median, 4),
        "ray_first_s": round(ray_walls[0], 4),
        "ray_median_s": round(ray_median, 4),
        "ray_p90_s": round(sorted(ray_walls[1:])[int(0.9 * (len(ray_walls) - 2))], 4),
        "overhead_median_s": round(ray_median - local_median, 4),
        "node_phases_median_s": {name: round(statistics.median(v), 4) for name, v in phases.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    found = measure(args.runs)
    if args.json:
        print(json.dumps(found, indent=1))
        return
    print(
        f"replicates per way: {found['runs']} (a new commit each), toy target, one-node cluster on this machine"
    )
    print(f"connect + node probe:      {found['connect_and_probe_s']:.3f} s (once per `nightlab run`)")
    print(f"local replicate, median:   {found['local_median_s']:.3f} s")
    print(f"ray replicate, first:      {found['ray_first_s']:.3f} s (a cold worker)")
    print(f"ray replicate, median/p90: {found['ray_median_s']:.3f} / {found['ray_p90_s']:.3f} s")
    print(f"overhead per replicate:    {found['overhead_median_s']:.3f} s (median ray - median local)")
    phases = ", ".join(f"{k} {v:.3f} s" for k, v in found["node_phases_median_s"].items())
    print(f"on the node, median:       {phases}")


if __name__ == "__main__":
    main()
