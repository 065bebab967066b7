"""A progress evaluator that ends while the run still trains (``ProgressEvaluator.failure``).

Found from outside (session 18): a train.py appended a line nested 100,000 deep to its
progress.jsonl; the GPT template's evaluator thread died of the RecursionError, the evaluator
exited 0, and the run trained on unscored, without a curve (so never pruned), and was recorded
``ok``. Now such a run is stopped at once and recorded ``invalid``, the evaluator's end named.
End to end through the real CLI on a toy target whose frozen evaluator dies the same way; the
unit tests pin when an evaluator's end counts (checkpoints asked for, before it was told).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from helpers import make_workspace, nightlab
from nightlab.research.progress import ProgressEvaluator
from nightlab.types import RunSpec

# Trains 30 steps of 0.1 s, a checkpoint line at each share NIGHTLAB_PROGRESS_EVERY asks for;
# ATTACK (set by the proposal) appends the poison line after step 5.
TRAIN = """\
import json, os, time
LR = 0.1
ATTACK = False
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
every = float(os.environ.get("NIGHTLAB_PROGRESS_EVERY") or 0)
next_point = every
for step in range(1, 31):
    time.sleep(0.1)
    fraction = step / 30
    print(f"step {step}", flush=True)
    with open(os.path.join(run_dir, "progress.jsonl"), "a") as f:
        if every and fraction >= next_point - 1e-9:
            f.write(json.dumps({"fraction": fraction, "step": step, "loss": 2.0 - fraction}) + "\\n")
            next_point += every
        if ATTACK and step == 5:
            f.write("[" * 100000 + "\\n")
with open(os.path.join(run_dir, "metrics.json"), "w") as f:
    json.dump({"val_loss": 1.0 + (LR - 0.3) ** 2}, f)
"""

# The frozen evaluator: scores each line, until progress.done; a line it cannot parse is skipped,
# but a RecursionError is no ValueError: it ends the evaluator, as it ended the template's thread.
FOLLOW = """\
import json, os, time
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
scores = os.environ.get("NIGHTLAB_SCORES_DIR") or run_dir
done, seen = False, 0
while not done:
    done = os.path.exists(os.path.join(run_dir, "progress.done"))
    path = os.path.join(run_dir, "progress.jsonl")
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    for line in lines[seen:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        with open(os.path.join(scores, "progress.eval.jsonl"), "a") as f:
            f.write(json.dumps({"fraction": record["fraction"], "step": record["step"], "val_loss": record["loss"]}) + "\\n")
    seen = len(lines)
    time.sleep(0.05)
"""

TOML = """\
[target]
editable = ["train.py"]
frozen = ["follow.py"]
run = "python train.py"
progress_evaluate = "python follow.py"
[budget]
seconds = 3
timeout = 30
[metric]
name = "val_loss"
direction = "minimize"
source = "json"
[agent]
kind = "replay"
file = "proposals.jsonl"
[policy]
kind = "greedy"
baseline_runs = 1
remeasure = 0
prune = true
prune_at = [0.25, 0.5, 0.75]
[run]
sandbox = "auto"
"""


@pytest.mark.slow
def test_a_run_that_kills_its_progress_evaluator_is_stopped_and_invalid(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    edits = [{"path": "train.py", "search": "ATTACK = False", "replace": "ATTACK = True"}]
    make_workspace(
        root,
        proposals=[{"description": "poison the evaluator", "edits": edits}],
        train=TRAIN,
        toml=TOML,
        extra_files={"follow.py": FOLLOW},
    )
    res = nightlab("run", str(root), "--plain", "--tag", "p")
    assert res.returncode == 0, res.stdout + res.stderr
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    baseline, attack = [dict(r) for r in con.execute("select * from runs order by id")]
    con.close()
    assert baseline["status"] == "ok", baseline["reason"]
    assert len(json.loads(baseline["progress_json"])) == 4  # its curve: the evaluator scored it all
    assert attack["status"] == "invalid", attack["reason"]
    assert attack["reason"].startswith("progress evaluator failed (crash: RecursionError"), attack["reason"]
    assert "could not be scored" in attack["reason"]
    log = (Path(attack["run_dir"]) / "run.log").read_text()
    assert "step 30" not in log, "the run trained on to its end, unscored"


def _evaluator(tmp_path: Path, command: str, env: dict[str, str]) -> ProgressEvaluator:
    spec = RunSpec(command=command, cwd=tmp_path, run_dir=tmp_path / "scores", seed=0, timeout=30, env=env)
    return ProgressEvaluator(spec, run_dir=tmp_path)


def _ended(evaluator: ProgressEvaluator) -> None:
    deadline = time.monotonic() + 20
    while evaluator.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not evaluator.running


def test_an_evaluator_that_exits_while_checkpoints_are_asked_for_is_a_failure(tmp_path: Path) -> None:
    """Exit 0 too (the template's, its scoring thread dead): nothing scores the checkpoints."""
    evaluator = _evaluator(tmp_path, "exit 0", {"NIGHTLAB_PROGRESS_EVERY": "0.25"})
    _ended(evaluator)
    assert evaluator.failure() == (
        "progress evaluator exited (code 0) while the run trained: its checkpoints could not be "
        "scored (no curve to prune it on); see progress_eval.log"
    )


def test_an_evaluator_with_no_checkpoints_to_score_may_end_at_once(tmp_path: Path) -> None:
    evaluator = _evaluator(tmp_path, "exit 0", {})
    _ended(evaluator)
    assert evaluator.failure() is None


def test_an_evaluator_told_that_training_has_ended_has_not_failed(tmp_path: Path) -> None:
    command = f"{sys.executable} -c 'import os, time\nwhile not os.path.exists(\"progress.done\"): time.sleep(0.02)'"
    evaluator = _evaluator(tmp_path, command, {"NIGHTLAB_PROGRESS_EVERY": "0.25"})
    time.sleep(0.3)
    assert evaluator.running and evaluator.failure() is None
    result = evaluator.finish(10)
    assert result is not None and result.exit_code == 0
    assert evaluator.failure() is None


def test_a_line_nested_past_pythons_stack_is_skipped_by_every_reader_of_progress(tmp_path: Path) -> None:
    """json.loads raises RecursionError, no ValueError, on it: it ended `nightlab run` with a
    traceback (the report's curve reader), and one under 64 KB reached the live reader too."""
    from nightlab.config import load_config
    from nightlab.metrics import read_curve_points
    from nightlab.research.progress import ProgressReader

    (tmp_path / "nightlab.toml").write_text(TOML)
    config = load_config(tmp_path)
    good = json.dumps({"fraction": 0.5, "step": 1, "val_loss": 1.5})
    (tmp_path / "progress.jsonl").write_text("[" * 60000 + "\n" + good + "\n")
    assert read_curve_points(tmp_path, "val_loss") == [{"value": 1.5, "step": 1.0, "fraction": 0.5}]
    reader = ProgressReader(tmp_path, config)
    assert [(p.x, p.value) for p in reader.points()] == [(0.5, 1.5)]
