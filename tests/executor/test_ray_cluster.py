"""The Ray executor against a real Ray cluster started on this machine (tests/raycluster.py): a
head node and two worker nodes, once for the module, always taken down at its end.

What is checked: tasks run with their resources and come back; the function's own errors are
not retried while Ray's failures are, up to the cap; `nightlab run` runs a session end to end on
the cluster (setup once per node, the frozen evaluation on the node, a crashing candidate a plain
crash); a node killed mid-run re-queues its replicate on the other node as an infrastructure
retry; a harness killed with `kill -9` leaves no training process behind, and `nightlab run`
again finishes what it left; one stopped with SIGTERM exits 143 with its tasks ended on the nodes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import TOY_TOML, edit, make_workspace, nightlab
from nightlab.config import Config, parse_config
from nightlab.errors import UserError
from nightlab.executor.process import RunInterrupted
from nightlab.executor.ray_cluster import InfrastructureError, RayExecutor, RaySettings
from raycluster import LocalRayCluster, alive, free_port, kill, wait_until

ray = pytest.importorskip("ray")
# The tasks below are functions of this module, which the nodes cannot import: ship them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def cluster():
    ray_cluster = LocalRayCluster()
    try:
        ray_cluster.start(workers=2)
        yield ray_cluster
    finally:
        ray_cluster.stop()


@pytest.fixture
def executor(cluster: LocalRayCluster):
    ex = RayExecutor(RaySettings(address=cluster.address, max_infra_retries=1))
    try:
        yield ex
    finally:
        ex.close(kill=True)


# -- functions run as tasks (shipped by value, see above) ------------------------------------
def where_am_i(x: int) -> tuple[int, str]:
    return x * 2, os.environ.get("NIGHTLAB_NODE_DIR", "")


def raise_value_error(counter: str) -> None:
    with open(counter, "a") as handle:
        handle.write("x\n")
    raise ValueError("the function's own bug")


def die_once(marker: str) -> str:
    """Kills its own worker process (as a lost machine would) the first time it runs."""
    if not os.path.exists(marker):
        Path(marker).write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return "second attempt"


def sleep_long(seconds: float) -> None:
    for _ in range(int(seconds * 10)):  # short sleeps: a cancelled task notices between two
        time.sleep(0.1)


def _config(**run: object) -> Config:
    return parse_config({"target": {"editable": ["train.py"], "run": "python train.py"}, "run": run})


# -- the executor -----------------------------------------------------------------------------
def test_a_function_runs_as_a_task_and_slots_follow_the_cluster(executor: RayExecutor, cluster) -> None:
    (value, node_dir), failures = executor.call(where_am_i, 21)
    assert value == 42 and failures == []
    assert node_dir in {str(n.node_dir) for n in cluster.nodes.values() if n.name != "head"}
    assert executor.capacity() == 2  # two workers of one CPU, one CPU per replicate
    auto = _config(workers="auto")
    assert [(s.index, s.label, s.env) for s in executor.slots(auto)] == [(0, "ray", {}), (1, "ray", {})]
    assert len(executor.slots(_config(workers=3))) == 3


def test_the_function_s_own_error_is_raised_and_not_retried(executor: RayExecutor, tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    with pytest.raises(ValueError, match="the function's own bug"):
        executor.call(raise_value_error, str(counter))
    assert counter.read_text() == "x\n"


def test_a_lost_worker_is_retried_and_past_the_cap_is_an_infrastructure_error(
    executor: RayExecutor, tmp_path: Path
) -> None:
    result, failures = executor.call(die_once, str(tmp_path / "marker"))
    assert result == "second attempt"
    assert [f.error for f in failures] == ["WorkerCrashedError"]
    # With no retry allowed, the lost worker is an error that lists what happened.
    executor.settings = executor.settings.model_copy(update={"max_infra_retries": 0})
    (tmp_path / "marker").unlink()
    with pytest.raises(InfrastructureError, match=r"^infrastructure: 1 Ray failure") as caught:
        executor.call(die_once, str(tmp_path / "marker"))
    assert caught.value.failures[0].error == "WorkerCrashedError"


def test_stopping_cancels_the_task_in_flight(executor: RayExecutor) -> None:
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            executor.call(sleep_long, 60)
        except BaseException as exc:  # noqa: BLE001 - the test looks at what came out
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(1.0)
    started = time.monotonic()
    executor.stop()
    thread.join(timeout=20)
    assert not thread.is_alive() and time.monotonic() - started < 10
    assert isinstance(outcome[0], RunInterrupted)


def test_an_unreachable_address_is_one_line_naming_it() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(UserError, match=f"address '{address}': cannot reach a Ray cluster there"):
        RayExecutor(RaySettings(address=address, connect_timeout=2))
    assert time.monotonic() - started < 10


def test_resources_no_node_has_are_refused_before_anything_runs(cluster: LocalRayCluster) -> None:
    with pytest.raises(UserError, match=r"asks for CPU 1, GPU 1, but no node"):
        RayExecutor(RaySettings(address=cluster.address, num_gpus=1), probe=False)


# -- `nightlab run` on the cluster --------------------------------------------------------------
# The setup counts its runs per node in $MARKS (each test has its own).
PREPARE = """\
import os, pathlib
node = pathlib.Path(os.environ["NIGHTLAB_NODE_DIR"]).name
with open(pathlib.Path(os.environ["MARKS"]) / f"setup-{node}", "a") as f:
    f.write("setup\\n")
os.makedirs("data", exist_ok=True)
pathlib.Path("data/train.bin").write_bytes(b"x" * 1000)
"""

# The toy target, plus: a line per start in $MARKS/attempts; a run that finds $MARKS/hold takes
# it (only one run does), says where it runs and stays in flight for a minute.
TRAIN = """\
import json, os, pathlib, random, time
marks = pathlib.Path(os.environ["MARKS"])
with open(marks / "attempts", "a") as f:
    f.write("start\\n")
try:
    os.rename(marks / "hold", marks / "held")
    (marks / f"pid-{os.getpid()}").write_text(os.environ.get("NIGHTLAB_NODE_DIR", ""))
    time.sleep(60)
except FileNotFoundError:
    pass
LR = 0.1
data = pathlib.Path("data/train.bin").read_bytes()  # made by the setup command on the node
seed = int(os.environ["NIGHTLAB_SEED"])
loss = 1.0 + 10 * (LR - 0.3) ** 2 + len(data) * 1e-9 + random.Random(seed).gauss(0, 0.002)
print("---")
print(f"training_seconds:  0.01")
with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "result.json"), "w") as f:
    json.dump({"loss": loss}, f)
"""

EVALUATE = """\
import json, os
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
with open(os.path.join(run_dir, "result.json")) as f:
    loss = json.load(f)["loss"]
with open(os.path.join(run_dir, "metrics.json"), "w") as f:
    json.dump({"val_loss": loss}, f)
print("evaluated in", os.getcwd())
"""


BETTER = edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3")


def _workspace(
    root: Path,
    address: str,
    proposals: list[dict],
    baseline_runs: int = 2,
    workers: str = "1",
    run: str = "python train.py",
    ray_settings: str = "",
) -> tuple[Path, Path]:
    marks = root.parent / f"{root.name}-marks"
    marks.mkdir(parents=True)
    toml = TOY_TOML.format(
        evaluate='evaluate = "python evaluate.py"', source="json", pattern="", policy="greedy"
    )
    toml = toml.replace('frozen = ["evaluate.py"]', 'frozen = ["evaluate.py", "prepare.py"]')
    toml = toml.replace(
        'run = "python train.py"',
        f'run = "{run}"\nsetup = "python prepare.py"\nenv = {{MARKS = "{marks}"}}',
    )
    toml = toml.replace("baseline_runs = 2", f"baseline_runs = {baseline_runs}")
    toml += f'[run]\nsandbox = "off"\nworkers = {workers}\n[executor]\nkind = "ray"\n[executor.ray]\naddress = "{address}"\n{ray_settings}'
    make_workspace(
        root,
        proposals=proposals,
        train=TRAIN,
        toml=toml,
        extra_files={"prepare.py": PREPARE, "evaluate.py": EVALUATE, ".gitignore": "data/\n"},
    )
    return root, marks


def _runs(root: Path) -> list[dict]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY experiment_id, replicate")]
    con.close()
    return rows


def _experiments(root: Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    rows = con.execute("SELECT decision, status FROM experiments ORDER BY id").fetchall()
    con.close()
    return [tuple(r) for r in rows]


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / ".nightlab" / "runs").glob("*/*/replicate.json"))


def test_nightlab_run_on_the_cluster_end_to_end(cluster: LocalRayCluster, tmp_path: Path) -> None:
    crash = edit("LR = 0.1", "LR = 1 / 0", "a candidate that crashes")
    # Replicates in flight at once, as many as the cluster holds (two nodes of one CPU).
    root, marks = _workspace(tmp_path / "ws", cluster.address, [crash, BETTER], workers='"auto"')
    result = nightlab("run", str(root), "--plain", "--tag", "t", timeout=150)
    assert result.returncode == 0, result.stderr + result.stdout
    assert _experiments(root)[:3] == [("baseline", "ok"), ("crash", "crash"), ("keep", "ok")]
    runs = _runs(root)
    # Every training start is a recorded run: a candidate's own crash is never run again.
    assert (marks / "attempts").read_text().count("start") == len(runs)
    assert [r["status"] for r in runs if r["experiment_id"] == 2] == ["crash"]
    assert all(r["status"] == "ok" for r in runs if r["experiment_id"] != 2)
    used: set[str] = set()
    slots = {json.loads((d / "slot.json").read_text())["slot"] for d in _run_dirs(root)}
    assert slots == {0, 1}
    for run_dir in _run_dirs(root):
        remote = json.loads((run_dir / "remote.json").read_text())
        used.add(remote["node"]["dir"])
        assert json.loads((run_dir / "replicate.json").read_text())["metrics"]["infra_retries"] == 0
        assert not (run_dir / "infra.json").exists()
        assert (run_dir / "run.log").is_file()
    crashed = root / ".nightlab" / "runs" / "0002" / "0"
    assert "ZeroDivisionError" in (crashed / "run.log").read_text()
    # The frozen evaluation ran on the node, in a scratch folder there.
    kept = root / ".nightlab" / "runs" / "0003" / "0"
    evaluated_in = (kept / "eval.log").read_text().split("evaluated in ", 1)[1].strip()
    assert cluster.node_of(evaluated_in).name in {"w1", "w2"}
    assert json.loads((kept / "metrics.json").read_text())["val_loss"] < 1.01
    # The setup ran once on each node that ran a replicate, and every scratch folder is gone.
    for node_dir in used:
        assert (marks / f"setup-{Path(node_dir).name}").read_text() == "setup\n"
        assert list((Path(node_dir) / "tasks").iterdir()) == []
    assert (
        subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
        == ""
    )


def _start_harness(root: Path, tag: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nightlab.cli", "run", str(root), "--plain", "--tag", tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _held_run(marks: Path, harness: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    """(pid, node dir) of the run that took the hold, once it runs."""
    if not wait_until(lambda: any(marks.glob("pid-*")) or harness.poll() is not None, timeout):
        harness.kill()
    assert any(marks.glob("pid-*")), f"no run started: {harness.communicate()[0]}"
    found = next(marks.glob("pid-*"))
    return int(found.name.split("-", 1)[1]), found.read_text()


def test_a_harness_killed_with_kill_9_leaves_no_training_process(
    cluster: LocalRayCluster, tmp_path: Path
) -> None:
    root, marks = _workspace(tmp_path / "ws", cluster.address, [BETTER], baseline_runs=1)
    (marks / "hold").write_text("")
    harness = _start_harness(root, "k")
    try:
        pid, _ = _held_run(marks, harness)
        assert alive(pid)
        harness.kill()  # SIGKILL: no handler of the harness runs
        harness.wait(timeout=10)
        # Ray ends a dead driver's workers; the run's watchdog then kills the training tree.
        assert wait_until(lambda: not alive(pid), 30), f"training process {pid} outlived its harness"
    finally:
        harness.kill()
        harness.wait(timeout=10)
    # `nightlab run` again re-runs the replicate the killed harness had in flight.
    again = nightlab("run", str(root), "--plain", "--tag", "k", timeout=120)
    assert again.returncode == 0, again.stderr + again.stdout
    assert _experiments(root)[:2] == [("baseline", "ok"), ("keep", "ok")]
    assert {r["status"] for r in _runs(root)} == {"ok"}


def _sigterm_a_held_run(root: Path, marks: Path, tag: str) -> str:
    """SIGTERM the harness while a run holds; checks the training and the node's scratch folder
    are gone and the harness exited 143; returns what it printed."""
    (marks / "hold").write_text("")
    harness = _start_harness(root, tag)
    try:
        pid, node_dir = _held_run(marks, harness)
        harness.send_signal(signal.SIGTERM)
        assert wait_until(lambda: not alive(pid), 30), f"training process {pid} outlived the stop"
        out, _ = harness.communicate(timeout=30)
    finally:
        harness.kill()
        harness.wait(timeout=10)
    assert harness.returncode == 143, out
    tasks = Path(node_dir) / "tasks"
    assert wait_until(lambda: not list(tasks.iterdir()), 20), list(tasks.iterdir())
    return out


def test_a_harness_stopped_with_sigterm_ends_its_tasks_on_the_nodes(
    cluster: LocalRayCluster, tmp_path: Path
) -> None:
    """The tasks are cancelled as a Ctrl-C inside them: the node's executor kills the training
    and removes its scratch folder (were the cancel forced, the watchdogs would)."""
    root, marks = _workspace(tmp_path / "ws", cluster.address, [BETTER], baseline_runs=1)
    assert "interrupted (SIGTERM)" in _sigterm_a_held_run(root, marks, "s")


def test_a_stop_that_must_force_its_tasks_still_ends_the_training(
    cluster: LocalRayCluster, tmp_path: Path
) -> None:
    """``stop_wait = 0``: the stop force-cancels at once. Ray kills the task's worker and the
    worker's direct children (here the run's shell: ``; true`` keeps it from exec'ing the
    trainer); the trainer, a grandchild, is ended by the run's detached watchdog, and the
    task's scratch folder on the node by the task's own."""
    root, marks = _workspace(
        tmp_path / "ws",
        cluster.address,
        [BETTER],
        baseline_runs=1,
        run="python train.py; true",
        ray_settings="stop_wait = 0\n",
    )
    _sigterm_a_held_run(root, marks, "f")


def test_a_node_killed_mid_run_requeues_the_replicate_as_an_infrastructure_retry(
    cluster: LocalRayCluster, tmp_path: Path
) -> None:
    root, marks = _workspace(tmp_path / "ws", cluster.address, [BETTER], baseline_runs=2)
    (marks / "hold").write_text("")
    harness = _start_harness(root, "n")
    try:
        pid, node_dir = _held_run(marks, harness)
        victim = cluster.node_of(node_dir)
        cluster.kill_node(victim.name)
        out, _ = harness.communicate(timeout=120)
    finally:
        harness.kill()
        harness.wait(timeout=10)
        for name in ("w1", "w2"):
            if name not in cluster.nodes:
                cluster.add_node(name)  # the cluster as the next test expects it
    assert harness.returncode == 0, out
    assert "re-run after 1 infrastructure failure(s)" in out
    assert "(raylet)" not in out  # Ray's own report of the dead node stays off the terminal
    assert wait_until(lambda: not alive(pid), 15), "the killed node's training process lives on"
    kill(pid)
    assert _experiments(root)[:2] == [("baseline", "ok"), ("keep", "ok")]
    assert {r["status"] for r in _runs(root)} == {"ok"}
    retried = [d for d in _run_dirs(root) if (d / "infra.json").exists()]
    assert len(retried) == 1
    failures = json.loads((retried[0] / "infra.json").read_text())
    assert [f["error"] for f in failures] in (["NodeDiedError"], ["WorkerCrashedError"])
    record = json.loads((retried[0] / "replicate.json").read_text())
    assert record["status"] == "ok" and record["metrics"]["infra_retries"] == 1
    # Re-queued on the node that still stood.
    rerun_on = json.loads((retried[0] / "remote.json").read_text())["node"]["dir"]
    assert rerun_on != node_dir
