"""What the progress evaluator's checkpoints may not do: look ahead, or tell training its scores.

End to end through the real CLI on a toy target whose progress evaluator speaks the GPT
template's protocol (evaluation.py --follow, tested on real models in
tests/template/test_progress.py): a checkpoint it refuses (a model that looks ahead) is a signed
``{"invalid": ...}`` line, which makes the run invalid at once; and the points it scores, with
its log, are written in the folder nightlab names in NIGHTLAB_SCORES_DIR, beside the run
directory, which the sandbox hides from the training process (a val oracle otherwise), while the
stop file (time to target) and the warm final evaluation still work. Each attack is a proposal
that edits train.py.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from helpers import make_workspace, nightlab
from nightlab.executor import sandbox

sandboxed = pytest.mark.skipif(
    not sandbox.detect().complete, reason="needs the sandbox (Landlock and a network namespace)"
)

# A checkpoint is a line of progress.jsonl naming a file that says whether the model looks ahead.
TRAIN = """\
import json, os, time
LR = 0.1
PEEK = False
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
with open(os.path.join(run_dir, "ckpt-1.json"), "w") as f:
    json.dump({"peek": PEEK, "loss": 1.5}, f)
with open(os.path.join(run_dir, "progress.jsonl"), "a") as f:
    f.write(json.dumps({"fraction": 0.5, "step": 1, "export": "ckpt-1.json"}) + "\\n")
SEEN = ""
ATTACK = ""
if ATTACK:
    exec(ATTACK)
time.sleep(1.5)
with open(os.path.join(run_dir, "result.json"), "w") as f:
    json.dump({"loss": 1.0 + (LR - 0.3) ** 2, "seen": SEEN}, f)
print("training_seconds: 1.5")
"""

EVALUATE = """\
import json, os
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
with open(os.path.join(run_dir, "result.json")) as f:
    loss = json.load(f)["loss"]
with open(os.path.join(run_dir, "metrics.json"), "w") as f:
    json.dump({"val_loss": loss, "warm": float(os.environ.get("TOY_WARM", "0"))}, f)
"""

# The frozen progress evaluator: refuses a checkpoint that looks ahead (as the template's causality
# check does), scores the others, creates the stop file at its target, and does the final
# evaluation when asked; its scores go where NIGHTLAB_SCORES_DIR says, else into the run dir.
FOLLOW = """\
import hmac, json, os, runpy, time
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
scores = os.environ.get("NIGHTLAB_SCORES_DIR") or run_dir

def write(point):
    body = json.dumps(point, sort_keys=True).encode()
    point["sig"] = hmac.new(os.environ["NIGHTLAB_PROGRESS_KEY"].encode(), body, "sha256").hexdigest()
    with open(os.path.join(scores, "progress.eval.jsonl"), "a") as f:
        f.write(json.dumps(point) + "\\n")

done, seen = False, 0
while not done:
    done = os.path.exists(os.path.join(run_dir, "progress.done"))
    path = os.path.join(run_dir, "progress.jsonl")
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    for line in lines[seen:]:
        record = json.loads(line)
        with open(os.path.join(run_dir, record["export"])) as f:
            ckpt = json.load(f)
        point = {"fraction": record["fraction"], "step": record["step"]}
        if ckpt["peek"]:
            write({**point, "invalid": f"checkpoint {record['export']} (step 1): model is not causal"})
            print("refused", record["export"], flush=True)
        else:
            write({**point, "val_loss": ckpt["loss"]})
            print("scored", record["export"], "val_loss", ckpt["loss"], flush=True)
            open(os.path.join(run_dir, "stop"), "w").close()  # its target: one bit, by design
    seen = len(lines)
    time.sleep(0.05)
if os.path.exists(os.path.join(run_dir, "progress.final")):
    os.environ["TOY_WARM"] = "1"
    runpy.run_path("evaluate.py")
"""

TOML = """\
[target]
editable = ["train.py"]
frozen = ["evaluate.py", "follow.py"]
run = "python train.py"
evaluate = "python evaluate.py"
progress_evaluate = "python follow.py"
progress_signed = true
warm_evaluate = true
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
[run]
sandbox = "auto"
"""

# Training reads every place the scores could be while it trains, once the evaluator has scored
# its checkpoint (the stop file says so), and keeps what it read.
ORACLE = """
for _ in range(200):
    if os.path.exists(os.path.join(run_dir, "stop")):
        break
    time.sleep(0.05)
SEEN = "stop " if os.path.exists(os.path.join(run_dir, "stop")) else ""
for folder in (run_dir, run_dir + ".scores"):
    for name in ("progress.eval.jsonl", "progress_eval.log"):
        try:
            SEEN += open(os.path.join(folder, name)).read()
        except OSError:
            pass
"""


def _night(root: Path, description: str, edits: list[dict]) -> tuple[dict, dict, Path]:
    """The baseline's run and the attack's (a proposal editing train.py), and the attack's run dir."""
    make_workspace(
        root,
        proposals=[{"description": description, "edits": edits}],
        train=TRAIN,
        toml=TOML,
        extra_files={"evaluate.py": EVALUATE, "follow.py": FOLLOW},
    )
    res = nightlab("run", str(root), "--plain", "--tag", "p")
    assert res.returncode == 0, res.stdout + res.stderr
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    runs = [dict(r) for r in con.execute("select * from runs order by id")]
    con.close()
    baseline, attack = runs
    return baseline, attack, Path(attack["run_dir"])


@pytest.mark.slow
def test_a_checkpoint_the_evaluator_refuses_makes_the_run_invalid_at_once(tmp_path: Path) -> None:
    edits = [{"path": "train.py", "search": "PEEK = False", "replace": "PEEK = True"}]
    baseline, attack, run_dir = _night(tmp_path / "ws", "checkpoints that look ahead", edits)
    assert baseline["status"] == "ok", baseline["reason"]
    assert attack["status"] == "invalid"
    assert attack["reason"] == "progress evaluator: checkpoint ckpt-1.json (step 1): model is not causal"
    assert not (run_dir / "metrics.json").exists()  # stopped, never evaluated
    assert json.loads(attack["progress_json"]) == []  # a refused checkpoint is no point of a curve
    assert "refused ckpt-1.json" in (run_dir / "progress_eval.log").read_text()


@sandboxed
@pytest.mark.slow
def test_training_cannot_read_its_checkpoints_scores_while_it_trains(tmp_path: Path) -> None:
    edits = [{"path": "train.py", "search": 'ATTACK = ""', "replace": f"ATTACK = {ORACLE!r}"}]
    baseline, attack, run_dir = _night(tmp_path / "ws", "read the val scores", edits)
    assert baseline["status"] == "ok", baseline["reason"]
    seen = json.loads((run_dir / "result.json").read_text())["seen"]
    assert seen == "stop ", seen  # the stop file (time to target) reaches it, and nothing else
    # The harness has the scores, the run directory has them once the run has ended, and the
    # warm evaluator still does the final evaluation.
    assert attack["status"] == "ok", attack["reason"]
    assert json.loads(attack["progress_json"]) == [{"x": 0.5, "value": 1.5, "step": 1}]
    assert json.loads(attack["metrics_json"])["warm"] == 1.0
    assert "val_loss" in (run_dir / "progress.eval.jsonl").read_text()
    assert "scored ckpt-1.json" in (run_dir / "progress_eval.log").read_text()
    assert not Path(f"{run_dir}.scores").exists()
