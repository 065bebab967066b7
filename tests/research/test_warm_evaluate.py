"""The final evaluation by the warm progress evaluator (``[target] warm_evaluate``).

End to end through the real CLI on a toy target: the progress evaluator, started beside training
in a worktree of its own, is asked (``progress.final``) for the final evaluation once training
has ended and passed its audit; the ``evaluate`` command runs only when it cannot. Checked: whose
verdict was recorded (the toy evaluation says which process wrote it), the fallbacks (no sandbox,
an evaluator gone), a metrics file planted by training, and that a training process cannot swap
the evaluator's code before the evaluator has read it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from helpers import edit, make_workspace, nightlab
from nightlab.executor import sandbox

sandboxed = pytest.mark.skipif(
    not sandbox.detect().complete, reason="needs the sandbox (Landlock and a network namespace)"
)

TRAIN = """\
import json, os, time
LR = 0.1
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
os.makedirs(run_dir, exist_ok=True)
ATTACK = ""
if ATTACK:
    exec(ATTACK)
time.sleep(0.3)
with open(os.path.join(run_dir, "result.json"), "w") as f:
    json.dump({"loss": 1.0 + (LR - 0.3) ** 2}, f)
print("training_seconds: 0.3")
"""

# The frozen evaluation; `warm` says which process wrote the verdict (1: the progress evaluator).
EVALUATE = """\
import json, os
from scale import FACTOR
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
with open(os.path.join(run_dir, "result.json")) as f:
    loss = json.load(f)["loss"] * FACTOR
warm = float(os.environ.get("TOY_WARM", "0"))
with open(os.path.join(run_dir, "metrics.json"), "w") as f:
    json.dump({"val_loss": loss, "holdout_loss": loss, "warm": warm}, f)
print(f"val_loss: {loss:.6f}")
"""

# The progress evaluator: nothing to score in this toy; it loads its code after a pause (as a
# real one imports torch first), then waits for progress.done; asked, it evaluates in-process.
FOLLOW = """\
import os, runpy, sys, time
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
warm = os.environ.get("NIGHTLAB_WARM_EVALUATE") == "1"
MODE = "serve"
if MODE == "die" and warm:
    sys.exit(3)
time.sleep(0.6)
import scale
print("follower in", os.getcwd(), "factor", scale.FACTOR, flush=True)
while not os.path.exists(os.path.join(run_dir, "progress.done")):
    time.sleep(0.05)
if warm and os.path.exists(os.path.join(run_dir, "progress.final")):
    os.environ["TOY_WARM"] = "1"
    print("final evaluation, warm", flush=True)
    runpy.run_path("evaluate.py")
"""

TOML = """\
[target]
editable = ["train.py"]
frozen = ["evaluate.py", "follow.py", "scale.py"]
run = "python train.py"
evaluate = "python evaluate.py"
progress_evaluate = "python follow.py"
warm_evaluate = true
[budget]
seconds = 5
timeout = 30
[metric]
name = "val_loss"
direction = "minimize"
source = "json"
holdout = "holdout_loss"
[agent]
kind = "replay"
file = "proposals.jsonl"
[policy]
kind = "greedy"
baseline_runs = 1
remeasure = 0
[run]
sandbox = "{sandbox}"
"""


def _workspace(root: Path, train: str = TRAIN, follow: str = FOLLOW, sandbox_mode: str = "auto") -> Path:
    return make_workspace(
        root,
        proposals=[edit("LR = 0.1", "LR = 0.2")],
        train=train,
        toml=TOML.format(sandbox=sandbox_mode),
        extra_files={"evaluate.py": EVALUATE, "follow.py": follow, "scale.py": "FACTOR = 1.0\n"},
    )


def _baseline_run(root: Path, ok: bool = True) -> tuple[dict, Path]:
    res = nightlab("run", str(root), "--plain", "--tag", "w")
    if ok:
        assert res.returncode == 0, res.stderr + res.stdout
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    run = dict(con.execute("select * from runs order by id").fetchone())
    con.close()
    return run, Path(run["run_dir"])


@sandboxed
@pytest.mark.slow
def test_the_warm_evaluator_does_the_final_evaluation_in_its_own_worktree(tmp_path: Path) -> None:
    run, run_dir = _baseline_run(_workspace(tmp_path / "ws"))
    assert run["status"] == "ok"
    assert run["metric"] == pytest.approx(1.04)
    metrics = json.loads(run["metrics_json"])
    assert metrics["warm"] == 1.0  # the verdict came from the progress evaluator, not `evaluate`
    assert metrics["eval_warm"] == 1.0  # as the harness records it
    assert metrics["eval_total_seconds"] < 5
    assert (run_dir / "progress.final").exists()
    # It ran in a worktree of its own, next to the training's.
    follower = (run_dir / "progress_eval.log").read_text()
    assert "run-0-eval factor 1.0" in follower, follower
    # eval.log holds what it printed from the request on, written by the harness.
    eval_log = (run_dir / "eval.log").read_text()
    assert eval_log.startswith("# the final evaluation, by the warm progress evaluator")
    assert "final evaluation, warm" in eval_log and "val_loss: 1.040000" in eval_log


@pytest.mark.slow
def test_without_the_sandbox_the_evaluate_command_runs(tmp_path: Path) -> None:
    run, run_dir = _baseline_run(_workspace(tmp_path / "ws", sandbox_mode="off"))
    assert run["status"] == "ok" and run["metric"] == pytest.approx(1.04)
    assert json.loads(run["metrics_json"])["warm"] == 0.0
    assert not (run_dir / "progress.final").exists()
    assert "final evaluation" not in (run_dir / "eval.log").read_text()


@sandboxed
@pytest.mark.slow
def test_an_evaluator_gone_before_the_request_leaves_it_to_evaluate(tmp_path: Path) -> None:
    run, run_dir = _baseline_run(_workspace(tmp_path / "ws", follow=FOLLOW.replace('"serve"', '"die"')))
    assert run["status"] == "ok" and run["metric"] == pytest.approx(1.04)
    assert json.loads(run["metrics_json"])["warm"] == 0.0


@sandboxed
@pytest.mark.slow
def test_a_metrics_file_planted_by_training_is_never_the_verdict(tmp_path: Path) -> None:
    attack = (
        "open(os.path.join(run_dir, 'metrics.json'), 'w').write("
        "json.dumps({'val_loss': 0.1, 'holdout_loss': 0.1, 'warm': 1.0}))"
    )
    run, _ = _baseline_run(
        _workspace(tmp_path / "ws", train=TRAIN.replace('ATTACK = ""', f"ATTACK = {attack!r}")), ok=False
    )
    assert run["status"] == "invalid"
    assert "only the evaluation may" in run["reason"]


@sandboxed
@pytest.mark.slow
@pytest.mark.parametrize("undo", [False, True], ids=["left", "undone"])
def test_training_that_swaps_the_evaluators_code_is_caught(tmp_path: Path, undo: bool) -> None:
    # At once: replace scale.py in the evaluator's worktree (next to its own; the sandbox lets it
    # write there only because the workspace is in /tmp), wait until the evaluator has loaded
    # it, then (undo) put the frozen text back so that its hash is what it was.
    attack = f"""
theirs = os.path.join(os.getcwd() + "-eval", "scale.py")
try:
    with open(theirs, "w") as fh:
        fh.write("FACTOR = 0.5\\n")
except OSError as exc:
    print("refused:", exc)
else:
    time.sleep(1.5)
    if {undo}:
        with open(theirs, "w") as fh:
            fh.write("FACTOR = 1.0\\n")
"""
    root = _workspace(tmp_path / "ws", train=TRAIN.replace('ATTACK = ""', f"ATTACK = {attack!r}"))
    run, run_dir = _baseline_run(root, ok=False)
    log = (run_dir / "run.log").read_text()
    if "refused:" in log:  # a workspace outside the sandbox's scratch space: nothing to catch
        assert run["status"] == "ok" and run["metric"] == pytest.approx(1.04)
        return
    assert "factor 0.5" in (run_dir / "progress_eval.log").read_text()  # the swap did reach it
    assert run["status"] == "invalid"
    if undo:  # the hash is back: the change time tells
        assert "the progress evaluator's worktree changed during the run: scale.py" in run["reason"]
    else:
        assert "frozen file changed during the run: scale.py" in run["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_check_says_who_evaluated(tmp_path: Path, mode: str) -> None:
    if mode == "auto" and not sandbox.detect().complete:
        pytest.skip("needs the sandbox (Landlock and a network namespace)")
    res = nightlab("check", str(_workspace(tmp_path / "ws", sandbox_mode=mode)))
    out = " ".join(res.stdout.split())  # the report wraps at the terminal's width
    assert "ok time:" in out, res.stderr + out  # (the toy ignores its seed: check says FIX to that)
    if mode == "auto":
        assert "s evaluation (by the warm progress evaluator)" in out, out
    else:
        assert "in a process of its own: warm_evaluate is set, but there is no sandbox" in out, out
