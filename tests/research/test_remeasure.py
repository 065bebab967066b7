"""A kept change is valued on fresh runs that did not select it ([policy] remeasure)."""

from __future__ import annotations

import sqlite3
import statistics
from pathlib import Path

from helpers import TOY_TOML, edit, make_workspace, nightlab


def _rows(root: Path, sql: str, *args: object) -> list[sqlite3.Row]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = con.execute(sql, args).fetchall()
    con.close()
    return rows


def _workspace(tmp_path: Path, remeasure: int) -> Path:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    toml = toml.replace("remeasure = 0\n", f"remeasure = {remeasure}\n")
    return make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3", "LR up")], toml=toml)


def test_a_kept_change_rests_on_fresh_runs_and_says_so(tmp_path: Path) -> None:
    root = _workspace(tmp_path, remeasure=3)
    res = nightlab("run", str(root), "--plain", "--tag", "h")
    assert res.returncode == 0, res.stderr + res.stdout
    (kept,) = _rows(root, "select * from experiments where decision = 'keep'")
    runs = _rows(root, "select * from runs where experiment_id = ? order by replicate", kept["id"])
    selecting = [r for r in runs if r["role"] is None]
    compare = [r for r in runs if r["role"] == "compare"]
    report = [r for r in runs if r["role"] == "report"]
    # Greedy selects on one run; then 3 fresh runs to compare later candidates with, and 3 that
    # no decision sees, for the value reported.
    assert len(selecting) == 1 and len(compare) == 3 and len(report) == 3
    assert len({r["seed"] for r in runs}) == 7
    assert kept["metric_mean"] == statistics.mean(r["metric"] for r in report)
    assert kept["estimate_runs"] == 3 and kept["n_runs"] == 7
    assert "3 fresh runs no decision saw" in kept["reason"]
    baseline = _rows(root, "select * from experiments where decision = 'baseline'")[0]
    base_runs = _rows(root, "select * from runs where experiment_id = ?", baseline["id"])
    assert [r["role"] for r in base_runs].count("report") == 3 and baseline["estimate_runs"] == 3
    assert baseline["metric_mean"] == statistics.mean(r["metric"] for r in base_runs if r["role"] == "report")
    assert kept["delta"] == baseline["metric_mean"] - kept["metric_mean"]  # improvement, minimised metric
    assert "3 runs no decision saw, of 7" in res.stdout
    assert (
        "3 runs no decision saw, of 5" in res.stdout
    )  # the baseline's line too  # the summary says what the headline rests on


def test_remeasure_0_keeps_the_selecting_runs_and_warns_in_the_summary(tmp_path: Path) -> None:
    root = _workspace(tmp_path, remeasure=0)
    res = nightlab("run", str(root), "--plain", "--tag", "h0")
    assert res.returncode == 0, res.stderr + res.stdout
    (kept,) = _rows(root, "select * from experiments where decision = 'keep'")
    assert _rows(root, "select count(*) from runs where role = 'estimate'")[0][0] == 0
    assert kept["estimate_runs"] is None
    assert "that selected it: the value carries their luck" in res.stdout
