"""A validate study whose harness was killed with ``kill -9``: no handler ran, so its experiments
stayed ``running`` in the ledger, and ``status``, ``report`` and report.html said so for ever.
Now they say it was interrupted and what takes it up, and the same command takes it up."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest
from cli_kit import gone, slow_workspace, start, training_pid

from helpers import nightlab


def _validate_rows(root: Path) -> list[tuple[int, str]]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    rows = con.execute("SELECT id, status FROM experiments WHERE kind = 'validate' ORDER BY id").fetchall()
    con.close()
    return [(int(i), str(s)) for i, s in rows]


def _page_data(root: Path) -> dict:
    page = (root / ".nightlab" / "report.html").read_text()
    return json.loads(page.split('<script id="data" type="application/json">')[1].split("</script>")[0])


def _studies(root: Path) -> list[dict]:
    res = nightlab("status", str(root), "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["studies"]


@pytest.mark.slow
def test_a_study_killed_with_its_harness_reads_interrupted_and_is_taken_up(tmp_path: Path) -> None:
    root = slow_workspace(tmp_path / "ws", timeout=30)
    night = nightlab("run", str(root), "--plain", "--tag", "t", "-n", "1", env={"SLOW_SECONDS": "0"})
    assert night.returncode == 0, night.stdout + night.stderr

    study = start("validate", str(root), "--tag", "t", "--seeds", "2", slow=60)
    trainer = training_pid(root)
    running = _studies(root)  # while its harness lives, it runs
    assert [s["state"] for s in running] == ["running"] and "resume" not in running[0]
    os.kill(study.pid, signal.SIGKILL)
    study.communicate(timeout=30)
    assert gone(trainer, within=8)
    assert [s for _, s in _validate_rows(root)] == ["running", "running"]  # what the ledger holds

    (found,) = _studies(root)
    assert found["kind"] == "validate" and found["state"] == "interrupted", found
    assert f"`nightlab validate {root}` again" in found["resume"]
    table = nightlab("status", str(root), env={"COLUMNS": "250"})
    assert f"validate {found['study']}: interrupted, 0 runs recorded" in table.stdout, table.stdout

    report = nightlab("report", str(root), env={"COLUMNS": "250"})
    assert report.returncode == 0, report.stderr
    assert f"validate {found['study']}: interrupted" in report.stdout, report.stdout
    overview = _page_data(root)["snapshot"]["overview"]
    (shown,) = overview["studies"]
    assert shown["state"] == "interrupted" and [a["status"] for a in shown["arms"]] == ["interrupted"] * 2
    assert any("was interrupted" in line for line in overview["morning"]["look_at"])

    # Another harness holding the workspace (a night) runs no study: still interrupted, and the
    # night's own experiment it was training (the replay's second proposal), killed with it, reads
    # interrupted in report.html.
    other = start("run", str(root), "--plain", "--tag", "t", "-n", "2", slow=60)
    other_trainer = training_pid(root)
    assert [s["state"] for s in _studies(root)] == ["interrupted"]
    os.kill(other.pid, signal.SIGKILL)
    other.communicate(timeout=30)
    assert gone(other_trainer, within=8)
    assert nightlab("report", str(root)).returncode == 0
    outcomes = [e["outcome"] for e in _page_data(root)["snapshot"]["experiments"]]
    assert outcomes[-1] == "interrupted" and "running" not in outcomes, outcomes

    again = nightlab("validate", str(root), "--tag", "t", "--seeds", "2", env={"SLOW_SECONDS": "0"})
    assert again.returncode == 0, again.stdout + again.stderr
    assert [s for _, s in _validate_rows(root)] == ["ok", "ok"]  # the same two experiments, taken up
    assert [s["state"] for s in _studies(root)] == ["finished"]
