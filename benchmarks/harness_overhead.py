"""The harness's own cost per experiment: wall time outside the training and evaluation processes.

Runs N experiments of a target that does almost nothing (a Python script that writes a metric),
through the real loop: replay agent, git commits and refs, worktree checkout, the executor, the
frozen-file audit, the policy and the SQLite ledger, results.tsv after each experiment. The
overhead is the loop's wall time minus the time the executor measured for the runs themselves
(process start to exit), divided by the number of experiments.

    .venv/bin/python benchmarks/harness_overhead.py --experiments 40
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import TOY_TRAIN, make_workspace  # noqa: E402
from nightlab.events import EventSink  # noqa: E402
from nightlab.research.loop import LoopLimits  # noqa: E402
from nightlab.research.session import build_loop, open_session  # noqa: E402


def run(experiments: int, evaluate: bool) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="nl-overhead-"))
    # Every candidate makes the toy metric worse (WIDTH further from its optimum), so each is
    # run and discarded and the next one still applies to the unchanged incumbent.
    proposals = [
        {
            "description": f"WIDTH {32 - i}",
            "edits": [{"path": "train.py", "search": "WIDTH = 64", "replace": f"WIDTH = {32 - i}"}],
        }
        for i in range(experiments)
    ]
    root = make_workspace(tmp / "ws", proposals=proposals, train=TOY_TRAIN, evaluate=evaluate)
    session = open_session(root, tag="bench")
    loop = build_loop(session, events=EventSink())
    loop.prepare()  # the baseline is not part of the per-experiment cost
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    before = con.execute("select count(*) from runs").fetchone()[0]
    t0 = time.perf_counter()
    loop.run(LoopLimits(max_experiments=experiments))
    wall = time.perf_counter() - t0
    rows = con.execute("select total_seconds from runs").fetchall()[before:]
    process = sum(r[0] or 0.0 for r in rows)
    n = con.execute("select count(*) from experiments where kind = 'candidate'").fetchone()[0]
    con.close()
    return {
        "experiments": n,
        "runs": len(rows),
        "evaluate_step": evaluate,
        "wall_s": round(wall, 3),
        "in_processes_s": round(process, 3),
        "overhead_per_experiment_s": round((wall - process) / max(n, 1), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load = subprocess.run(["cat", "/proc/loadavg"], capture_output=True, text=True).stdout.split()[:3]
    results = []
    for evaluate in (False, True):
        samples = [run(args.experiments, evaluate) for _ in range(args.repeats)]
        per = [s["overhead_per_experiment_s"] for s in samples]
        results.append({**samples[-1], "overhead_median_s": statistics.median(per), "overhead_all_s": per})
    print(json.dumps({"loadavg": load, "results": results}, indent=2))


if __name__ == "__main__":
    main()
