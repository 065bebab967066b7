"""``nightlab try`` interrupted mid-training, then asked again for the same edits: the answer is the
interrupted experiment, finished, not a new one skipped as "the same code"."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest
from cli_kit import slow_workspace, start, training_pid

from helpers import nightlab


@pytest.mark.slow
def test_trying_the_same_edits_again_after_an_interrupt_reports_that_experiment(tmp_path: Path) -> None:
    root = slow_workspace(tmp_path / "ws")
    assert nightlab("run", str(root), "--plain", "--tag", "t", "-n", "0").returncode == 0  # the baseline
    known = {int(p.read_text()) for p in (root / ".nightlab" / "runs").glob("*/*/train.pid")}
    (root / "train.py").write_text((root / "train.py").read_text().replace("LR = 0.1", "LR = 0.3"))
    first = start("try", str(root), "-m", "LR 0.3", "--tag", "t", slow=60)
    try:
        training_pid(root, known)
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130
    again = nightlab("try", str(root), "-m", "LR 0.3", "--tag", "t", env={"SLOW_SECONDS": "0"})
    assert again.returncode == 0, again.stdout + again.stderr
    out = " ".join(again.stdout.split())
    assert "#2" in out and "already measured" not in out and "nothing ran" not in out, out
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    rows = con.execute("SELECT id, status FROM experiments ORDER BY id").fetchall()
    con.close()
    assert rows == [(1, "ok"), (2, "ok")]  # no third experiment for the same edits
