"""Pause, resume and stop through the control file: what `nightlab run`'s should_stop does."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

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
