"""Faults: ``kill -9`` of the harness at random moments, a full disk, a corrupt or missing ledger.

After any of them the record must be whole: every experiment once, the ledger, results.tsv
and the git refs in agreement, the research branch on the best kept commit, nothing already
recorded damaged.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TOY_TOML, TOY_TRAIN, edit, git, make_workspace, nightlab

KILLS = 12


def _proposals(n: int) -> list[dict]:
    """A night's worth of toy proposals (some real gains, some losses) that all still apply after
    any of them is kept: each inserts its own LR override after the NOISE line."""
    rng = random.Random(7)
    anchor = "NOISE = 0.002  # run-to-run noise (seed-driven)"
    out = []
    for i in range(n):
        lr = round(rng.uniform(0.05, 0.5), 3)
        out.append(
            {
                "description": f"p{i:02d} LR {lr}",
                "edits": [
                    {"path": "train.py", "search": anchor, "replace": f"{anchor}\nLR = {lr}  # p{i:02d}"}
                ],
            }
        )
    return out


def _start(root: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nightlab.cli", "run", str(root), "--plain", "--tag", "t"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _ledger_rows(root: Path, sql: str) -> list[tuple]:
    path = root / ".nightlab" / "ledger.db"
    if not path.exists():
        return []
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:  # killed before the schema was written
        return []
    finally:
        con.close()


def _running(root: Path) -> int:
    return len(_ledger_rows(root, "select id from experiments where status = 'running'"))


def _finished(root: Path) -> list[tuple]:
    return _ledger_rows(root, "select id from experiments where status != 'running'")


def _processes_in(root: Path) -> list[int]:
    """Processes whose working directory is inside ``root`` (a run left behind by a killed harness)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd.startswith(str(root)):
                found.append(int(entry.name))
    return found


def _check_consistent(root: Path, proposals: list[dict]) -> None:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    exps = [dict(r) for r in con.execute("select * from experiments where tag = 't' order by id")]
    runs = [dict(r) for r in con.execute("select * from runs order by experiment_id, replicate")]
    con.close()
    assert all(e["status"] != "running" for e in exps), "an interrupted experiment was never finished"
    # Every proposal exactly once, in order: none lost, none counted twice.
    candidates = [e["description"] for e in exps if e["kind"] == "candidate"]
    assert candidates == [p["description"] for p in proposals]
    assert sum(1 for e in exps if e["kind"] == "baseline") == 1
    # Replicates are 0..n-1 per experiment and n_runs counts them.
    for e in exps:
        reps = [r["replicate"] for r in runs if r["experiment_id"] == e["id"]]
        assert reps == list(range(len(reps))), (e["id"], reps)
        assert (e["n_runs"] or 0) == len(reps), (e["id"], e["n_runs"], reps)
    # Git refs: one per committed experiment, at its commit; nothing else.
    refs = git(root, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/nightlab/experiments/")
    by_ref = {int(line.split()[0].rsplit("/", 1)[1]): line.split()[1] for line in refs.splitlines()}
    assert by_ref == {e["id"]: e["commit"] for e in exps if e["commit"]}
    # results.tsv agrees with the ledger.
    tsv = (root / ".nightlab" / "results.tsv").read_text().splitlines()[1:]
    shown = [e for e in exps if e["status"] != "skipped"]
    assert [line.split("\t")[0] for line in tsv] == [(e["commit"] or "")[:7] or "-------" for e in shown]
    assert [line.split("\t")[4] for line in tsv] == [e["description"] for e in shown]
    # The research branch is the best kept commit (greedy: each keep beats the one before).
    kept = [e for e in exps if e["decision"] in ("keep", "baseline")]
    best = min(kept, key=lambda e: e["metric_mean"])
    assert best["id"] == kept[-1]["id"]
    assert git(root, "rev-parse", "nightlab/t") == best["commit"]
    assert git(root, "status", "--porcelain") == ""


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    # Enough proposals that the night outlasts the kills on a fast machine too (a kill trial gets
    # through about two experiments), and 0.3 s of "training" per run so the kills land inside
    # experiments as well as between them.
    proposals = _proposals(48)
    slow = TOY_TRAIN.replace("import json, os, random", "import json, os, random, time\ntime.sleep(0.3)")
    root = make_workspace(tmp_path / "ws", proposals=proposals, train=slow)
    rng = random.Random(20261122)
    kills = trials = interrupted = 0
    started = time.monotonic()
    while kills < KILLS and trials < 3 * KILLS:
        trials += 1
        proc = _start(root)
        time.sleep(rng.uniform(0.8, 3.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        interrupted += _running(root)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        if proc.returncode == 0:
            break  # the night ran to its end between kills: nothing left to interrupt
    assert kills >= KILLS, f"only {kills} kills landed in {trials} trials"
    # The kills hit the loop at work, not only its start-up: experiments were cut mid-run.
    done_before = len(_finished(root))
    print(
        f"{kills} kills in {trials} trials, {interrupted} mid-experiment, {done_before} finished before the last run"
    )
    assert interrupted >= 3 and done_before >= 3, (interrupted, done_before)
    final = nightlab("run", str(root), "--plain", "--tag", "t", timeout=180)
    assert final.returncode == 0, final.stdout + final.stderr
    assert "nothing left to propose" in final.stdout
    _check_consistent(root, proposals)
    assert _processes_in(root) == [], "a run of a killed harness is still running"
    assert time.monotonic() - started < 240


@pytest.mark.slow
def test_consecutive_crashes_pause_the_run(tmp_path: Path) -> None:
    crash = [edit("NOISE = 0.002", f"NOISE = 0.002\nraise SystemExit({i})", f"crash {i}") for i in (3, 4, 5)]
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    root = make_workspace(
        tmp_path / "ws",
        proposals=[*crash, edit("LR = 0.1", "LR = 0.3")],
        toml=toml + "[run]\nmax_consecutive_crashes = 2\n",
    )
    res = nightlab("run", str(root), "--plain", "--tag", "t")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "paused: the last 2 experiments all failed" in res.stdout
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    decisions = [
        d for (d,) in con.execute("select decision from experiments where kind = 'candidate' order by id")
    ]
    con.close()
    assert decisions == ["crash", "crash"], "the third crash and the good proposal wait for the user"
