"""``validate --time-to-target`` cut off in its second phase (the runs to the target), then asked
again: the real CLI, real signals. The fixed-budget phase is not measured twice, the
time-to-target runs already recorded stand, and only the missing ones run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_validate import CURVE_TOML, CURVE_TRAIN, experiments, research

from helpers import edit, make_workspace, nightlab

# The curve toy, sleeping in the second seed's time-to-target runs only (those get
# NIGHTLAB_TARGET_METRIC; the first seed's are recorded before the cut) after writing its pid.
SLOW_TTT_TRAIN = CURVE_TRAIN.replace(
    'run_dir = os.environ.get("NIGHTLAB_RUN_DIR", "run")\nos.makedirs(run_dir, exist_ok=True)\n',
    'run_dir = os.environ.get("NIGHTLAB_RUN_DIR", "run")\nos.makedirs(run_dir, exist_ok=True)\n'
    'if target is not None and os.environ.get("SLOW_TTT") and os.path.basename(run_dir) == "1":\n'
    "    import time\n"
    '    with open(os.path.join(run_dir, "ttt.pid"), "w") as f:\n'
    "        f.write(str(os.getpid()))\n"
    '    time.sleep(float(os.environ["SLOW_TTT"]))\n',
)
assert SLOW_TTT_TRAIN != CURVE_TRAIN

ARGS = ("--scale", "deep", "--time-to-target", "--eval-interval", "2", "--seeds", "2", "--json")


def _runs(root: Path) -> list[tuple[int, int, int]]:
    """(experiment, replicate, row id) of every recorded run: a run measured again is a new row."""
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    rows = con.execute("SELECT experiment_id, replicate, rowid FROM runs ORDER BY rowid").fetchall()
    con.close()
    return [(int(e), int(r), int(i)) for e, r, i in rows]


def _wait_for_ttt_run(root: Path, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if list((root / ".nightlab" / "runs").glob("*/*/ttt.pid")):
            return
        time.sleep(0.05)
    raise AssertionError("no time-to-target run started")


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_time_to_target_cut_off_in_its_second_phase_goes_on_where_it_stopped(
    tmp_path: Path, how: signal.Signals
) -> None:
    root = make_workspace(
        tmp_path / "ws",
        proposals=[edit("LR = 0.01", "LR = 0.03", "LR 0.01 -> 0.03")],
        train=SLOW_TTT_TRAIN,
        toml=CURVE_TOML,
    )
    research(root)
    cut = subprocess.Popen(
        [sys.executable, "-m", "nightlab.cli", "validate", str(root), *ARGS],
        env={**os.environ, "SLOW_TTT": "60"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_ttt_run(root)
        cut.send_signal(how)
        cut.communicate(timeout=60)
    finally:
        if cut.poll() is None:
            cut.kill()
    before = [r for r in experiments(root) if r["kind"] == "validate"]
    modes = [json.loads(r["meta_json"])["mode"] for r in before]
    assert modes == ["budget", "budget", "time_to_target", "time_to_target"], modes
    assert [r["status"] for r in before[:2]] == ["ok", "ok"]
    budget_runs = {r["id"]: r["n_runs"] for r in before[:2]}
    recorded = _runs(root)
    assert [(e, i) for e, i, _ in recorded if e in (before[2]["id"], before[3]["id"])] == [
        (before[2]["id"], 0),
        (before[3]["id"], 0),
    ]  # the first seed of each side reached the target before the cut

    (cut_off,) = json.loads(nightlab("status", str(root), "--json").stdout)["studies"]
    assert cut_off["state"] == "interrupted" and cut_off["runs"] == 6, cut_off
    assert f"`nightlab validate {root} --scale deep --time-to-target` again" in cut_off["resume"]

    again = nightlab("validate", str(root), *ARGS, env={"SLOW_TTT": ""})
    assert again.returncode == 0, again.stdout + again.stderr
    data = json.loads(again.stdout)
    after = [r for r in experiments(root) if r["kind"] == "validate"]
    assert [r["id"] for r in after] == [r["id"] for r in before]  # taken up, no second study
    assert all(r["status"] == "ok" for r in after), [(r["id"], r["status"], r["reason"]) for r in after]
    assert {r["id"]: r["n_runs"] for r in after[:2]} == budget_runs  # the first phase ran nothing again
    now = _runs(root)
    assert set(recorded) <= set(now) and len(now) == len(recorded) + 2  # only the second seed ran
    ttt = data["time_to_target"]
    assert ttt is not None and len(ttt["a"]) == len(ttt["b"]) == 2 and ttt["time"]["change"] < 0
    assert all(r["reached"] for r in ttt["a"] + ttt["b"]), ttt
    assert data["experiments"]["A (time to target)"] == after[2]["id"]
    status = nightlab("status", str(root), "--json")
    assert [s["state"] for s in json.loads(status.stdout)["studies"]] == ["finished"]
