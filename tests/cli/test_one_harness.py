"""One harness per workspace, and runs that die with their harness: the real CLI, real processes,
real signals (a second ``run`` while one trains; ``kill -9`` of the harness mid-training)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest
from cli_kit import gone, slow_workspace, start, training_pid

from helpers import nightlab


def experiments(root: Path) -> list[dict]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM experiments ORDER BY id")]
    con.close()
    return rows


@pytest.mark.slow
def test_a_second_harness_on_a_busy_workspace_is_refused_and_status_keeps_working(tmp_path: Path) -> None:
    root = slow_workspace(tmp_path / "ws")
    first = start("run", str(root), "--plain", "--tag", "t", "-n", "2", slow=60)
    try:
        training_pid(root)  # the first harness is training its baseline
        (root / "train.py").write_text((root / "train.py").read_text().replace("LR = 0.1", "LR = 0.2"))
        for command in (
            ["run", "--plain", "--tag", "t"],
            ["try", "-m", "LR 0.2", "--tag", "t"],
            ["validate", "--tag", "t", "--a", "HEAD", "--b", "HEAD"],
            ["ablate", "--tag", "t"],
            ["recover", "--tag", "t", "--force"],
        ):
            res = nightlab(*command[:1], str(root), *command[1:], timeout=60)
            line = res.stderr.strip()
            assert res.returncode == 2, (command, res.stdout, res.stderr)
            assert "\n" not in line and f"pid {first.pid}" in line and "is busy" in line, (command, line)
        (root / "train.py").write_text((root / "train.py").read_text().replace("LR = 0.2", "LR = 0.1"))
        status = nightlab("status", str(root), "--json")
        assert status.returncode == 0, status.stderr
        assert [e["status"] for e in json.loads(status.stdout)["experiments"]] == ["running"]
        assert nightlab("report", str(root)).returncode == 0
        assert first.poll() is None  # the first harness never noticed
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    assert first.returncode == 143, out + err

    # The interrupted baseline runs again; nothing the refused commands did shows in the ledger.
    done = nightlab("run", str(root), "--plain", "--tag", "t", "-n", "2", env={"SLOW_SECONDS": "0"})
    assert done.returncode == 0, done.stdout + done.stderr
    rows = experiments(root)
    assert [(r["kind"], r["status"]) for r in rows] == [
        ("baseline", "ok"),
        ("candidate", "ok"),
        ("candidate", "ok"),
    ]
    assert not any("not found" in (r["reason"] or "") for r in rows)  # issue 17: "crash: metric not found"


@pytest.mark.slow
def test_kill_9_of_the_harness_takes_its_training_along_and_status_says_interrupted(tmp_path: Path) -> None:
    root = slow_workspace(tmp_path / "ws", timeout=20)
    harness = start("run", str(root), "--plain", "--tag", "t", slow=60)
    trainer = training_pid(root)
    os.kill(harness.pid, signal.SIGKILL)  # no handler runs: the kernel just ends the harness
    harness.communicate(timeout=30)
    # Without the watchdog the trainer, re-parented to init, lived to its 60 s sleep; the bound
    # here is the grace period, far inside the 20 s timeout.
    assert gone(trainer, within=8), "the training process outlived its killed harness"

    status = nightlab("status", str(root), "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert [e["status"] for e in data["experiments"]] == ["interrupted"]
    assert data["counts"] == {"interrupted": 1}
    table = nightlab("status", str(root), env={"COLUMNS": "200"})
    assert "interrupted" in table.stdout and "running" not in table.stdout

    again = nightlab("run", str(root), "--plain", "--tag", "t", "-n", "0", env={"SLOW_SECONDS": "0"})
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming experiment 1" in again.stdout
    assert [(r["kind"], r["status"], r["decision"]) for r in experiments(root)] == [
        ("baseline", "ok", "baseline")
    ]
