"""Many experiments at once: how throughput scales with slots, and where the harness saturates.

Three measurements (issue "Many experiments at once"), each printed as JSON:

``slots``: the real loop on a target whose run is a fixed sleep (a shell command, no Python
start-up), at 1, 2, 4, 8 and 16 local slots (or on a Ray cluster: ``--ray ADDRESS``, or
``--local-ray`` to start one on this machine, a head and one worker node taking 16 tasks).
Experiments per hour over the candidates, from the first candidate's start to the last one's
decision, against N times the one-slot figure (goal: at least 0.9 x N up to 16 slots)::

    .venv/bin/python benchmarks/parallel_scaling.py slots --sleep 3 --rounds 4

``coordinator``: the harness alone at internet scale. Replicates "run" in a no-op runner that
sleeps a fixed time on a thread (no process), with 64, 256 and 1,024 slots and the search agent
proposing; how many experiments per hour the loop dispatches, decides and records, against the
ideal slots / run time, and where its own time goes (cProfile, top functions)::

    .venv/bin/python benchmarks/parallel_scaling.py coordinator --slots 64 256 1024 --seconds 60

``cpu``: the cpu template with a token budget, 2 slots of 1 thread against 1 slot of 2 threads:
replicates per hour and the run-to-run sd of the metric, over the baseline's replicates::

    .venv/bin/python benchmarks/parallel_scaling.py cpu --replicates 6
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import TOY_TRAIN, make_workspace  # noqa: E402
from nightlab.events import EventSink  # noqa: E402
from nightlab.executor.slots import Slot  # noqa: E402
from nightlab.research.loop import LoopLimits  # noqa: E402
from nightlab.research.runner import Replicate  # noqa: E402
from nightlab.research.session import build_loop, open_session  # noqa: E402
from nightlab.types import RunResult, RunStatus  # noqa: E402

SLEEP_TOML = """\
[target]
editable = ["value.txt"]
run = "sleep {sleep}; echo val_loss: $(cat value.txt)"
[budget]
timeout = 120
[metric]
name = "val_loss"
direction = "minimize"
source = "regex"
pattern = '^val_loss:\\s*([0-9.]+)'
[agent]
kind = "replay"
file = "proposals.jsonl"
[policy]
kind = "greedy"
baseline_runs = 1
[run]
workers = {workers}
{executor}
"""


def slots_run(workers: int, sleep: float, rounds: int, ray: str | None) -> dict:
    """``rounds`` x ``workers`` candidates, each a worse value (all discarded, no re-applies)."""
    count = rounds * workers
    proposals = [
        {"description": f"value {i}", "edits": [{"path": "value.txt", "replace": f"{2 + i / 1000:.4f}\n"}]}
        for i in range(count)
    ]
    executor = f'[executor]\nkind = "ray"\n[executor.ray]\naddress = "{ray}"\n' if ray else ""
    toml = SLEEP_TOML.format(sleep=sleep, workers=workers, executor=executor)
    tmp = Path(tempfile.mkdtemp(prefix="nl-scale-"))
    root = make_workspace(tmp / "ws", proposals=proposals, toml=toml, extra_files={"value.txt": "1.0\n"})
    session = open_session(root, tag="scale")
    marks: list[float] = []  # when each candidate was proposed, and decided
    events = EventSink()
    events.subscribe(
        lambda e: marks.append(time.perf_counter()) if e.kind in ("proposal", "decision") else None
    )
    loop = build_loop(session, events=events)
    loop.prepare()  # the baseline: not part of the candidates' throughput
    marks.clear()
    loop.run(LoopLimits(max_experiments=count))
    decided = session.ledger.candidate_count("scale")
    session.close()
    span = marks[-1] - marks[0]
    return {
        "workers": workers,
        "candidates": decided,
        "seconds": round(span, 2),
        "experiments_per_hour": round(3600 * decided / span, 1),
        "ideal_per_hour": round(3600 * workers / sleep, 1),
    }


class NoOpRunner:
    """Stands in for the replicate runner: sleeps ``seconds`` on the slot's thread and returns a
    metric from the seed, so the loop sees N replicates in flight without N processes."""

    def __init__(self, seconds: float, base: object) -> None:
        self.seconds = seconds
        self.executor = None
        self._base = base
        self._lock = threading.Lock()

    def run(self, experiment_id: int, replicate: int, commit: str, seed: int, **_: object) -> Replicate:
        time.sleep(self.seconds)
        value = 1.0 + ((seed * 2654435761) % 1000) / 1e5
        result = RunResult(
            status=RunStatus.OK, seed=seed, training_seconds=self.seconds, total_seconds=self.seconds
        )
        return Replicate(result, value, None, Path("/nonexistent"))

    def run_dir(self, experiment_id: int, replicate: int) -> Path:
        return Path("/nonexistent")


def coordinator_run(slots: int, seconds: float, run_seconds: float) -> dict:
    """The search agent, the confirm policy and a no-op runner with ``slots`` slots, for ``seconds``
    after the baseline. The profile covers the loop's thread (the one that records); the agent
    thinks on its own thread, timed separately."""
    tmp = Path(tempfile.mkdtemp(prefix="nl-coord-"))
    root = make_workspace(tmp / "ws", proposals=[], train=TOY_TRAIN)
    toml = (
        (root / "nightlab.toml")
        .read_text()
        .replace('kind = "replay"\nfile = "proposals.jsonl"', 'kind = "search"')
    )
    (root / "nightlab.toml").write_text(toml.replace('kind = "greedy"', 'kind = "confirm"'))
    from helpers import git

    git(root, "commit", "-qam", "search agent")
    session = open_session(root, tag="coord")
    seen: list[tuple[float, str]] = []  # (when, event kind): the steady-state rates come from these
    events = EventSink()
    events.subscribe(lambda e: seen.append((time.perf_counter(), e.kind)))
    loop = build_loop(session, events=events)
    loop.runner = NoOpRunner(run_seconds, loop.runner)  # type: ignore[assignment]
    loop.slots = [Slot(i, {}, "no-op") for i in range(slots)]
    loop.prepare()  # the baseline, before the clock starts
    thinking = [0.0, 0]  # seconds in the agent's propose(), proposals
    propose = loop.agent.propose

    def timed(context: object) -> object:
        t = time.perf_counter()
        try:
            return propose(context)  # type: ignore[arg-type]
        finally:
            thinking[0] += time.perf_counter() - t
            thinking[1] += 1

    loop.agent.propose = timed  # type: ignore[method-assign]
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    before = con.execute("select count(*) from runs").fetchone()[0]
    con.close()
    profile = cProfile.Profile()
    profile.enable()
    t0 = time.perf_counter()
    seen.clear()
    loop.run(LoopLimits(hours=seconds / 3600))
    wall = time.perf_counter() - t0
    profile.disable()
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    decided = con.execute(
        "select count(*) from experiments where kind = 'candidate' and status != 'running'"
    ).fetchone()[0]
    runs = con.execute("select count(*) from runs").fetchone()[0] - before
    con.close()
    session.close()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(12)
    top = [line.strip() for line in text.getvalue().splitlines() if line.strip()[:1].isdigit()][:12]
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(
        r"src/nightlab/(research|store|workspace)", 16
    )
    ours = [line.strip() for line in text.getvalue().splitlines() if line.strip()[:1].isdigit()][1:16]
    # The steady state: from a third of the window (all slots busy) to its end (then it drains).
    start, end = t0 + seconds / 3, t0 + seconds
    window = end - start
    decided_steady = sum(1 for t, k in seen if k == "decision" and start <= t <= end)
    runs_steady = sum(1 for t, k in seen if k == "run_done" and start <= t <= end)
    return {
        "slots": slots,
        "steady_experiments_per_hour": round(3600 * decided_steady / window),
        "steady_runs_per_hour": round(3600 * runs_steady / window),
        "wall_seconds": round(wall, 1),
        "experiments_decided": decided,
        "runs": runs,
        "experiments_per_hour": round(3600 * decided / wall),
        "ideal_runs_per_hour": round(3600 * slots / run_seconds),
        "runs_per_hour": round(3600 * runs / wall),
        "agent_proposals": thinking[1],
        "agent_seconds": round(thinking[0], 1),
        "agent_ms_per_proposal": round(1000 * thinking[0] / max(thinking[1], 1), 1),
        "top_functions_by_own_time": top,
        "nightlab_functions_by_cumulative_time": ours,
    }


def cpu_run(workers: int, threads: int, replicates: int, tokens: int) -> dict:
    """The cpu template's baseline replicated ``replicates`` times under one slot layout."""
    from nightlab.workspace.init import init_workspace

    tmp = Path(tempfile.mkdtemp(prefix="nl-cpu-"))
    root = tmp / "ws"
    init_workspace(root, template="gpt", size="cpu")
    toml = (root / "nightlab.toml").read_text()
    toml += f"\n[run]\nworkers = {workers}\nthreads_per_run = {threads}\n"
    (root / "nightlab.toml").write_text(toml)
    from helpers import git

    git(root, "commit", "-qam", "slots")
    session = open_session(root, tag="cpu")
    session.config.policy.baseline_runs = replicates
    session.config.budget.tokens = tokens
    session.config.budget.seconds = session.config.budget.flops = None
    loop = build_loop(session, events=EventSink())
    t0 = time.perf_counter()
    loop.prepare()
    wall = time.perf_counter() - t0
    values = session.ledger.ok_metrics(session.ledger.incumbent("cpu").id)  # type: ignore[union-attr]
    session.close()
    return {
        "layout": f"{workers} slot(s) x {threads} thread(s)",
        "replicates": len(values),
        "wall_seconds": round(wall, 1),
        "replicates_per_hour": round(3600 * len(values) / wall, 1),
        "metric_mean": round(statistics.mean(values), 5),
        "metric_sd": round(statistics.stdev(values), 5) if len(values) > 1 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("slots")
    s.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    s.add_argument("--sleep", type=float, default=3.0)
    s.add_argument("--rounds", type=int, default=4)
    s.add_argument("--ray", default=None, help="a Ray cluster address: run the slots there")
    s.add_argument("--local-ray", action="store_true", help="start a Ray cluster on this machine for it")
    c = sub.add_parser("coordinator")
    c.add_argument("--slots", type=int, nargs="+", default=[64, 256, 1024])
    c.add_argument("--seconds", type=float, default=60.0)
    c.add_argument("--run-seconds", type=float, default=10.0)
    p = sub.add_parser("cpu")
    p.add_argument("--replicates", type=int, default=6)
    p.add_argument("--tokens", type=int, default=131072)
    args = parser.parse_args()
    if args.mode == "slots":
        cluster = None
        if args.local_ray:  # a head and one worker node on this machine, a task per slot at once
            from raycluster import LocalRayCluster

            cluster = LocalRayCluster().start(workers=1, cpus=max(args.workers))
            args.ray = cluster.address
        try:
            results = [slots_run(n, args.sleep, args.rounds, args.ray) for n in args.workers]
        finally:
            if cluster is not None:
                cluster.stop()
        one = results[0]["experiments_per_hour"] / results[0]["workers"]
        for r in results:
            r["vs_n_times_one_slot"] = round(r["experiments_per_hour"] / (one * r["workers"]), 3)
            print(json.dumps(r), flush=True)
    elif args.mode == "coordinator":
        for n in args.slots:
            print(json.dumps(coordinator_run(n, args.seconds, args.run_seconds)), flush=True)
    else:
        for workers, threads in ((2, 1), (1, 2)):
            print(json.dumps(cpu_run(workers, threads, args.replicates, args.tokens)), flush=True)


if __name__ == "__main__":
    main()
