"""Several experiments at once (``[run] workers``), through the real CLI: real git, real
subprocesses, a real SQLite ledger; GPUs faked with ``CUDA_VISIBLE_DEVICES``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TOY_TOML, TOY_TRAIN, edit, git, make_workspace, nightlab

# The toy target, plus a sleep and a record of where and when it ran.
SLOW_TRAIN = TOY_TRAIN.replace(
    "import json, os, random\n",
    "import json, os, random, time\nSLEEP = 1.0  # seconds of 'training'\nstarted = time.time()\n",
) + (
    "time.sleep(SLEEP)\n"
    "with open(os.path.join(run_dir, 'where.json'), 'w') as f:\n"
    "    json.dump({'start': started, 'end': time.time(), 'gpu': os.environ.get('CUDA_VISIBLE_DEVICES'),\n"
    "               'pid': os.getpid()}, f)\n"
)


def workspace(tmp_path: Path, proposals: list[dict], workers: int, policy: str = "greedy") -> Path:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy=policy)
    toml += f"[run]\nworkers = {workers}\n"
    return make_workspace(tmp_path / "ws", proposals=proposals, train=SLOW_TRAIN, toml=toml)


def rows(root: Path, table: str = "experiments") -> list[dict]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    out = [dict(r) for r in con.execute(f"select * from {table} order by id")]
    con.close()
    return out


def wheres(root: Path) -> list[dict]:
    found = []
    for path in sorted((root / ".nightlab" / "runs").glob("*/*/where.json")):
        record = json.loads(path.read_text())
        record["slot"] = json.loads((path.parent / "slot.json").read_text())
        record["experiment"] = int(path.parent.parent.name)
        found.append(record)
    return found


def overlapping(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_slots_run_replicates_at_once_each_on_its_own_gpu(tmp_path: Path) -> None:
    proposals = [edit("WIDTH = 64", f"WIDTH = {40 + i}", f"worse width {i}") for i in range(5)]
    root = workspace(tmp_path, proposals, workers=3)
    started = time.monotonic()
    res = nightlab("run", str(root), "--plain", "--tag", "w", env={"CUDA_VISIBLE_DEVICES": "0,1,2"})
    elapsed = time.monotonic() - started
    assert res.returncode == 0, res.stderr + res.stdout
    runs = wheres(root)
    # 3 baseline replicates (as many as slots) + 5 candidates, one run each under greedy.
    assert len(runs) == 8
    assert {r["gpu"] for r in runs} == {"0", "1", "2"}
    assert all(r["slot"]["env"]["CUDA_VISIBLE_DEVICES"] == r["gpu"] for r in runs)
    assert all(r["slot"]["device"] == f"gpu {r['gpu']}" for r in runs)
    pairs = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :] if overlapping(a, b)]
    assert pairs, "no two replicates ran at once"
    assert all(a["gpu"] != b["gpu"] for a, b in pairs), "two runs shared a GPU"
    # 8 runs of >= 1 s in about 3 rounds, not 8 (generous: the machine is shared).
    assert elapsed < 8 * 1.0 + 25
    assert max(len([b for b in runs if overlapping(a, b)]) for a in runs) >= 3
    experiments = rows(root)
    assert [e["decision"] for e in experiments].count("baseline") == 1
    assert "3 at once: 0 (gpu 0) " in res.stdout  # the summary says where the runs ran
    assert len([r for r in rows(root, "runs")]) == 8


def test_a_winner_whose_base_moved_is_reapplied_onto_the_new_best(tmp_path: Path) -> None:
    # Both improve on the baseline on different lines; the second trains longer, so the first is
    # kept while the second still runs, and the second must land on top of it, not replace it.
    fast = edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3")
    slow = {
        "description": "WIDTH 64 -> 128, trained longer",
        "edits": [
            {"path": "train.py", "search": "WIDTH = 64", "replace": "WIDTH = 128"},
            {"path": "train.py", "search": "SLEEP = 1.0", "replace": "SLEEP = 4.0"},
        ],
    }
    root = workspace(tmp_path, [fast, slow], workers=2)
    res = nightlab("run", str(root), "--plain", "--tag", "r")
    assert res.returncode == 0, res.stderr + res.stdout
    exps = rows(root)
    by_desc = {e["description"]: e for e in exps}
    first, second = by_desc["LR 0.1 -> 0.3"], by_desc["WIDTH 64 -> 128, trained longer"]
    moved = by_desc[f"WIDTH 64 -> 128, trained longer (re-applied onto #{first['id']})"]
    assert first["decision"] == "keep"
    assert second["decision"] == "discard"
    assert f"re-applied onto it as #{moved['id']}" in second["reason"]
    assert json.loads(moved["meta_json"])["reapplied_from"] == second["id"]
    assert moved["incumbent_id"] == first["id"] and moved["base_commit"] == first["commit"]
    assert moved["decision"] == "keep"
    best = git(root, "show", "nightlab/r:train.py")
    assert "LR = 0.3" in best and "WIDTH = 128" in best  # neither kept change was lost
    assert git(root, "rev-parse", "nightlab/r") == moved["commit"]


def test_a_winner_that_conflicts_with_the_new_best_is_discarded_naming_it(tmp_path: Path) -> None:
    fast = edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3")
    slow = {
        "description": "LR 0.1 -> 0.25, trained longer",
        "edits": [
            {"path": "train.py", "search": "LR = 0.1", "replace": "LR = 0.25"},
            {"path": "train.py", "search": "SLEEP = 1.0", "replace": "SLEEP = 4.0"},
        ],
    }
    root = workspace(tmp_path, [fast, slow], workers=2)
    res = nightlab("run", str(root), "--plain", "--tag", "c")
    assert res.returncode == 0, res.stderr + res.stdout
    exps = {e["description"]: e for e in rows(root)}
    first, second = exps["LR 0.1 -> 0.3"], exps["LR 0.1 -> 0.25, trained longer"]
    assert first["decision"] == "keep"
    assert second["decision"] == "discard"
    assert f"conflicts with #{first['id']}" in second["reason"]
    assert len(exps) == 3  # nothing re-applied
    assert git(root, "rev-parse", "nightlab/c") == first["commit"]


def test_the_same_code_in_flight_twice_runs_once(tmp_path: Path) -> None:
    same = edit("LR = 0.1", "LR = 0.2", "LR 0.1 -> 0.2")
    root = workspace(tmp_path, [same, dict(same, description="LR 0.1 -> 0.2 again")], workers=2)
    res = nightlab("run", str(root), "--plain", "--tag", "d")
    assert res.returncode == 0, res.stderr + res.stdout
    again = {e["description"]: e for e in rows(root)}["LR 0.1 -> 0.2 again"]
    assert again["status"] == "skipped" and "running now" in again["reason"]


@pytest.mark.slow
def test_kill_9_with_replicates_in_flight_then_resume_is_consistent(tmp_path: Path) -> None:
    proposals = [edit("WIDTH = 64", f"WIDTH = {40 + i}", f"worse width {i}") for i in range(6)]
    root = workspace(tmp_path, proposals, workers=3)
    # Long enough that the runs seen in flight are still in flight after `status` has answered,
    # also on a loaded machine (3 s was not, with the load average at 7).
    set_sleep = (root / "train.py").read_text().replace("SLEEP = 1.0", "SLEEP = 6.0")
    (root / "train.py").write_text(set_sleep)
    git(root, "commit", "-qam", "slower")
    harness = subprocess.Popen(
        [sys.executable, "-m", "nightlab.cli", "run", str(root), "--plain", "--tag", "k"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        in_flight = _wait_for_candidates_in_flight(root, 3, harness)
        shown = nightlab("status", str(root), "--json", "--tag", "k")
        running = json.loads(shown.stdout)["running"]
        assert running, "status shows no slot at work"
        assert all(
            r["device"].startswith("cpu") and r["started_at"] and r["slot"] in (0, 1, 2) for r in running
        )
    finally:
        os.killpg(harness.pid, signal.SIGKILL)  # the harness and its whole group, -9
        harness.wait()
    assert len(in_flight) == 3
    time.sleep(2.0)  # the runs' watchdogs take them down
    assert not [p for p in _training_pids(root) if _alive(p)], "a training process outlived the harness"
    recorded = {(r["experiment_id"], r["replicate"]) for r in rows(root, "runs")}
    assert not set(in_flight) & recorded  # lost: only the replicates in flight
    res = nightlab("run", str(root), "--plain", "--tag", "k")
    assert res.returncode == 0, res.stderr + res.stdout
    exps, runs = rows(root), rows(root, "runs")
    assert all(e["status"] != "running" for e in exps)
    keys = [(r["experiment_id"], r["replicate"]) for r in runs]
    assert len(keys) == len(set(keys))  # nothing counted twice
    assert set(in_flight) <= set(keys)  # the interrupted replicates ran again
    for e in exps:
        if e["commit"]:
            assert git(root, "rev-parse", f"refs/nightlab/experiments/{e['id']:04d}") == e["commit"]
        if e["kind"] == "candidate" and e["status"] == "ok":
            assert e["n_runs"] == len([k for k in keys if k[0] == e["id"]])
    tsv = (root / ".nightlab" / "results.tsv").read_text().splitlines()[1:]
    assert len(tsv) == len([e for e in exps if e["commit"]])
    # The agent knew what was still running after the restart: nothing proposed twice.
    assert len(exps) == 1 + 6 and all(e["status"] == "ok" for e in exps)


def _wait_for_candidates_in_flight(
    root: Path, count: int, harness: subprocess.Popen
) -> list[tuple[int, int]]:
    """(experiment, replicate) of ``count`` candidate replicates training at once."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert harness.poll() is None, "the harness ended before the kill"
        runs_dir = root / ".nightlab" / "runs"
        candidates = set()
        try:
            recorded = {(r["experiment_id"], r["replicate"]) for r in rows(root, "runs")}
            kinds = {e["id"]: e["kind"] for e in rows(root)}
        except sqlite3.Error:
            time.sleep(0.1)
            continue
        for log in runs_dir.glob("*/*/run.log"):
            key = (int(log.parent.parent.name), int(log.parent.name))
            if kinds.get(key[0]) == "candidate" and key not in recorded:
                candidates.add(key)
        if len(candidates) >= count:
            return sorted(candidates)
        time.sleep(0.1)
    raise AssertionError("never saw the replicates in flight")


def _training_pids(root: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if "train.py" in cmd and cwd.startswith(str(root)):
            pids.append(int(proc.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


class _SlowAgent:
    """A pipelined agent that thinks for a while before each proposal (as an LLM does)."""

    name = "slow"
    pipelined = True

    def __init__(self, proposals: list[dict]) -> None:
        from nightlab.types import Edit, Proposal

        self.queue = [
            Proposal(description=p["description"], edits=[Edit(**e) for e in p["edits"]]) for p in proposals
        ]

    def propose(self, context: object) -> object:
        time.sleep(2.0)
        return self.queue.pop(0) if self.queue else None

    def check(self, files: dict) -> None:
        return None

    def observe(self, entry: object) -> None:
        return None

    def stop_reason(self) -> None:
        return None

    def final_lessons(self) -> dict:
        return {}


def test_a_slow_agent_thinking_leaves_no_slot_idle_confirmations_run_at_once(tmp_path: Path) -> None:
    from nightlab.events import EventSink
    from nightlab.research.loop import LoopLimits
    from nightlab.research.session import build_loop, open_session

    # Better than the baseline by about the noise: the confirm policy asks for more runs.
    near = edit("LR = 0.1", "LR = 0.1005", "LR a hair up")
    root = workspace(tmp_path, [], workers=3, policy="confirm")
    (root / "train.py").write_text((root / "train.py").read_text().replace("NOISE = 0.002", "NOISE = 0.01"))
    git(root, "commit", "-qam", "noisier")
    session = open_session(root, tag="s")
    loop = build_loop(session, events=EventSink(), agent=_SlowAgent([near]))  # type: ignore[arg-type]
    loop.run(LoopLimits(max_experiments=1))
    session.close()
    runs = [r for r in wheres(root) if r["experiment"] == 2]
    assert len(runs) >= 2, "the policy asked for no confirmation: the test saw nothing"
    starts = sorted(r["start"] for r in runs)
    # The confirmation replicates started together, not one after another.
    assert starts[-1] - starts[1] < 0.9, starts


@pytest.mark.parametrize(
    ("workers", "remeasure", "decided", "reported"),
    [(2, 1, 3, 1), (3, 2, 4, 2), (1, 1, 2, 1)],  # every round full; never more than twice; one slot: as set
)
def test_the_baseline_fills_its_last_round_of_slots(
    tmp_path: Path, workers: int, remeasure: int, decided: int, reported: int
) -> None:
    root = workspace(tmp_path, [edit("LR = 0.1", "LR = 0.2")], workers=workers)
    toml = (root / "nightlab.toml").read_text().replace("remeasure = 0", f"remeasure = {remeasure}")
    (root / "nightlab.toml").write_text(toml)
    (root / "train.py").write_text((root / "train.py").read_text().replace("SLEEP = 1.0", "SLEEP = 0.2"))
    git(root, "commit", "-qam", "remeasure")
    res = nightlab("run", str(root), "--plain", "--tag", "b", "-n", "0")
    assert res.returncode == 0, res.stderr + res.stdout
    roles = [r["role"] for r in rows(root, "runs") if r["experiment_id"] == 1]
    assert (roles.count(None), roles.count("report")) == (decided, reported)


def test_bad_worker_settings_are_one_line_and_exit_2(tmp_path: Path) -> None:
    root = workspace(tmp_path, [edit("LR = 0.1", "LR = 0.2")], workers=5)
    res = nightlab("run", str(root), "--plain", env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert res.returncode == 2
    assert "runs_per_gpu" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = nightlab("run", str(root), "--plain", "--workers", "none")
    assert res.returncode == 2 and "--workers" in res.stderr and "Traceback" not in res.stderr
    (root / "nightlab.toml").write_text(
        (root / "nightlab.toml").read_text().replace("workers = 5", "workers = 0")
    )
    git(root, "commit", "-qam", "zero workers")
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 2 and "workers" in res.stderr and "Traceback" not in res.stderr


def test_the_desk_hands_results_to_the_agent_on_its_own_thread_before_the_next_proposal() -> None:
    import threading

    from nightlab.research.desk import AgentDesk

    seen: list[tuple[str, object]] = []

    class Agent:
        name, pipelined = "probe", True

        def observe(self, entry: object) -> None:
            seen.append((threading.current_thread().name, entry))

        def propose(self, context: object) -> str:
            seen.append((threading.current_thread().name, "propose"))
            return "a proposal"

    desk = AgentDesk(Agent())  # type: ignore[arg-type]
    desk.observe("result 1")  # queued: the loop's thread never enters the agent
    assert seen == []
    from types import SimpleNamespace

    assert desk.propose_now(SimpleNamespace(incumbent_commit="abc")) == "a proposal"  # type: ignore[arg-type]
    assert desk.asked_against == "abc"
    assert [what for _, what in seen] == ["result 1", "propose"]
    assert all(name.startswith("nightlab-propose") for name, _ in seen)
    desk.close()
