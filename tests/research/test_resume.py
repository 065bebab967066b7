"""``kill -9`` of the harness in the middle of an experiment: the next run continues, and
nothing is lost or counted twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from helpers import TOY_TRAIN, edit, git, make_workspace, nightlab

SLOW_TRAIN = TOY_TRAIN.replace("import json, os, random", "import json, os, random, time\ntime.sleep(0.6)")


def experiments(root: Path) -> list[sqlite3.Row]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = list(con.execute("select * from experiments order by id"))
    con.close()
    return rows


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_kill_9_mid_experiment_then_resume(tmp_path: Path) -> None:
    proposals = [
        edit("LR = 0.1", "LR = 0.2", "LR 0.2"),
        edit("WIDTH = 64", "WIDTH = 100", "WIDTH 100"),
        edit("WIDTH = 64", "WIDTH = 32", "WIDTH 32"),
        edit("LR = 0.1", "LR = 0.05", "LR 0.05"),
    ]
    root = make_workspace(tmp_path / "ws", proposals=proposals, train=SLOW_TRAIN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nightlab.cli", "run", str(root), "--plain", "--tag", "k"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Experiment 3 (the second candidate) has started training: kill the harness now.
        wait_for(lambda: (root / ".nightlab" / "runs" / "0003" / "0" / "run.log").exists())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = experiments(root)
    assert before[-1]["status"] == "running"

    res = nightlab("run", str(root), "--plain", "--tag", "k")
    assert res.returncode == 0, res.stderr
    rows = experiments(root)
    assert [r["description"] for r in rows] == ["baseline", "LR 0.2", "WIDTH 100", "WIDTH 32", "LR 0.05"]
    assert all(r["status"] != "running" for r in rows)
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    dupes = con.execute(
        "select experiment_id, replicate, count(*) from runs group by 1, 2 having count(*) > 1"
    ).fetchall()
    assert dupes == []
    # Refs, ledger and branch agree.
    refs = git(root, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/nightlab/experiments/")
    ref_commits = {line.split()[1] for line in refs.splitlines()}
    assert {r["commit"] for r in rows if r["commit"]} == ref_commits
    kept = [r for r in rows if r["decision"] in ("keep", "baseline")]
    assert git(root, "rev-parse", "nightlab/k") == kept[-1]["commit"]
    tsv = (root / ".nightlab" / "results.tsv").read_text().strip().splitlines()
    assert len(tsv) == 1 + len(rows)
    # The killed training process did not survive its harness for long.
    assert not any("train.py" in " ".join(p) for p in _processes_under(root)), (
        "a training process outlived the resumed session"
    )


def _processes_under(root: Path) -> list[list[str]]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cwd.startswith(str(root)):
            found.append([c.decode(errors="replace") for c in cmd])
    return found
