"""Progress points only the frozen progress evaluator can write ([target] progress_signed).

The training process can write progress.eval.jsonl as well as the evaluator: a forged curve
stored as the incumbent's would prune honest candidates later (an attack found from outside).
With progress_signed the evaluator signs each point with a key nightlab gives it alone; an
unsigned or wrongly signed point is dropped and makes the run invalid.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from helpers import edit, make_workspace, nightlab
from nightlab.config import parse_config
from nightlab.errors import UserError

TRAIN = """\
import json, os, time
LR = 0.1
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
FORGE = False
if FORGE:
    assert "NIGHTLAB_PROGRESS_KEY" not in os.environ  # the key is the evaluator's alone
    with open(os.path.join(run_dir, "progress.eval.jsonl"), "a") as f:
        f.write(json.dumps({"fraction": 0.25, "val_loss": 0.01}) + "\\n")
        f.write(json.dumps({"fraction": 0.75, "val_loss": 0.01, "sig": "0" * 64}) + "\\n")
time.sleep(0.3)
with open(os.path.join(run_dir, "result.json"), "w") as f:
    json.dump({"loss": 1.0 + (LR - 0.3) ** 2}, f)
print("training_seconds: 0.3")
"""

EVALUATE = """\
import json, os
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
with open(os.path.join(run_dir, "result.json")) as f:
    loss = json.load(f)["loss"]
with open(os.path.join(run_dir, "metrics.json"), "w") as f:
    json.dump({"val_loss": loss}, f)
"""

# A toy progress evaluator that signs one point the way the GPT template's does.
FOLLOW = """\
import hmac, json, os, time
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
point = {"fraction": 0.5, "val_loss": 1.5}
body = json.dumps(point, sort_keys=True).encode()
point["sig"] = hmac.new(os.environ["NIGHTLAB_PROGRESS_KEY"].encode(), body, "sha256").hexdigest()
with open(os.path.join(run_dir, "progress.eval.jsonl"), "a") as f:
    f.write(json.dumps(point) + "\\n")
while not os.path.exists(os.path.join(run_dir, "progress.done")):
    time.sleep(0.05)
"""

TOML = """\
[target]
editable = ["train.py"]
frozen = ["evaluate.py", "follow.py"]
run = "python train.py"
evaluate = "python evaluate.py"
progress_evaluate = "python follow.py"
progress_signed = true
[budget]
seconds = 5
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
prune = false
"""


def _first_run(root: Path) -> dict:
    nightlab("run", str(root), "--plain", "--tag", "s", "-n", "0")
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    run = dict(con.execute("select * from runs order by id").fetchone())
    con.close()
    return run


def _workspace(root: Path, forge: bool) -> Path:
    train = TRAIN.replace("FORGE = False", f"FORGE = {forge}")
    return make_workspace(
        root,
        proposals=[edit("LR = 0.1", "LR = 0.2")],
        train=train,
        toml=TOML,
        extra_files={"evaluate.py": EVALUATE, "follow.py": FOLLOW},
    )


@pytest.mark.slow
def test_the_evaluators_signed_points_are_the_curve(tmp_path: Path) -> None:
    run = _first_run(_workspace(tmp_path / "ws", forge=False))
    assert run["status"] == "ok", run["reason"]
    assert json.loads(run["progress_json"]) == [{"x": 0.5, "value": 1.5}]


@pytest.mark.slow
def test_points_the_training_process_forged_are_dropped_and_the_run_is_invalid(tmp_path: Path) -> None:
    run = _first_run(_workspace(tmp_path / "ws", forge=True))
    assert run["status"] == "invalid"
    assert run["reason"] == "2 progress point(s) the frozen evaluator did not sign (forged by the run)"
    assert json.loads(run["progress_json"]) == [{"x": 0.5, "value": 1.5}]  # never the forged 0.01


def test_signing_needs_a_progress_evaluator() -> None:
    with pytest.raises(UserError, match="progress_signed = true needs progress_evaluate"):
        parse_config({"target": {"editable": ["t.py"], "run": "python t.py", "progress_signed": True}})
