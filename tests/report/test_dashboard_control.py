"""Pause, resume and stop through the control file: what `nightlab run`'s should_stop does."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from helpers import TOY_TRAIN, edit, make_workspace, nightlab
from nightlab.report.dashboard import control


def test_stop_is_obeyed_once(tmp_path: Path) -> None:
    with control.RunControl(tmp_path, "t", poll=0.01) as run:
        assert run.should_stop() is False
        control.request(tmp_path, "stop")
        assert run.should_stop() is True
        assert run.should_stop() is False  # consumed: the next run is not stopped by it
    assert json.loads((tmp_path / control.LOOP_FILE).read_text())["state"] == "stopped"


def test_pause_blocks_until_resumed_and_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    answers: list[bool] = []
    with control.RunControl(tmp_path, "t", notify=said.append, poll=0.01) as run:
        control.request(tmp_path, "pause")
        worker = threading.Thread(target=lambda: answers.append(run.should_stop()))
        worker.start()
        deadline = time.monotonic() + 5
        while control.loop_state(tmp_path)["state"] != "paused" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert control.loop_state(tmp_path)["state"] == "paused"
        time.sleep(0.1)
        assert worker.is_alive() and answers == []  # still waiting
        control.request(tmp_path, "resume")
        worker.join(5)
        assert answers == [False] and control.loop_state(tmp_path)["state"] == "running"
        assert said == [
            "paused from the dashboard after the current experiment: resume or stop it there",
            "resumed from the dashboard",
        ]
        control.request(tmp_path, "pause")
        worker = threading.Thread(target=lambda: answers.append(run.should_stop()))
        worker.start()
        time.sleep(0.05)
        control.request(tmp_path, "stop")  # stop while paused
        worker.join(5)
        assert answers == [False, True]


def test_a_request_left_from_an_earlier_run_is_cleared(tmp_path: Path) -> None:
    control.request(tmp_path, "stop")
    with control.RunControl(tmp_path, "t") as run:
        assert control.requested(tmp_path) is None and run.should_stop() is False


def test_loop_state_notices_a_run_that_died(tmp_path: Path) -> None:
    assert control.loop_state(tmp_path)["state"] == "not running"
    (tmp_path / control.LOOP_FILE).write_text(json.dumps({"pid": 2**22 + 12345, "state": "running"}))
    assert control.loop_state(tmp_path)["state"] == "not running"
    (tmp_path / control.LOOP_FILE).write_text(json.dumps({"pid": os.getpid(), "state": "paused"}))
    assert control.loop_state(tmp_path)["state"] == "paused"
    with pytest.raises(ValueError, match="action must be one of"):
        control.request(tmp_path, "explode")


def test_a_pause_lets_the_experiment_in_flight_finish_its_replicates_first(tmp_path: Path) -> None:
    """Asked for while the baseline's first of two replicates trains, the pause comes once the
    baseline is decided: before, the loop paused between its replicates, with it still running."""
    slow = TOY_TRAIN.replace("import json, os, random", "import json, os, random, time\ntime.sleep(1.0)")
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")], train=slow)
    state = root / ".nightlab"
    run = subprocess.Popen([sys.executable, "-m", "nightlab.cli", "run", str(root), "--plain"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (state / "runs" / "0001" / "0").is_dir() and time.monotonic() < deadline:
            time.sleep(0.02)
        control.request(state, "pause")  # the first baseline replicate trains for a second
        while control.loop_state(state)["state"] != "paused" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert control.loop_state(state)["state"] == "paused"
        with closing(sqlite3.connect(f"file:{state / 'ledger.db'}?mode=ro", uri=True)) as conn:
            rows = conn.execute("SELECT kind, status FROM experiments").fetchall()
        assert rows == [("baseline", "ok")], rows  # decided, on both its replicates
        assert (state / "runs" / "0001" / "1").is_dir() and not (state / "runs" / "0002").exists()
        control.request(state, "stop")
        out, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, out
    assert "stopped: stopped by the user" in out, out


def test_loop_json_says_what_ended_the_run(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.2", "lr up")])
    res = nightlab("run", str(root), "--plain", "--tag", "w", "-n", "1")
    assert res.returncode == 0, res.stderr + res.stdout
    said = [line[len("stopped: ") :] for line in res.stdout.splitlines() if line.startswith("stopped: ")]
    loop = json.loads((root / ".nightlab" / control.LOOP_FILE).read_text())
    assert loop["state"] == "stopped" and said and loop["why"] == said[0] != "finished"
