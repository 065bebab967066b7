"""What a training run sees of the workspace's state folder (``.nightlab``): its own folders only.

Found from outside: a sandboxed train.py listed ``$NIGHTLAB_RUN_DIR/../..`` and read the ledger
and every earlier run's files there: their ``metrics.json`` (holdout values, which the agent must
never see, went into its log and from there to the agent) and whatever they left (a kept change's
trained weights, to start from: the compute of every run before it). The training command now
gets the state folder as an empty, read-only folder with only its own worktree, its run directory
and the setup files bound back in place (``executor/mounts.py``, ``veil``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import make_workspace
from nightlab.executor import sandbox
from trust.kit import ledger_rows, run_session

SUPPORT = sandbox.detect()
needs_namespaces = pytest.mark.skipif(
    not (SUPPORT.complete and SUPPORT.netns),
    reason=f"needs user namespaces; this machine has {SUPPORT.describe()}",
)

# Run from the worktree: what it can read and list of the state folder, and whether its own
# folders still work (relative writes land in the real worktree, the run directory is writable).
PROBE = """
import json, os, sys
state, run_dir = sys.argv[1], sys.argv[2]
seen = {"state": sorted(os.listdir(state)), "runs": sorted(os.listdir(os.path.join(state, "runs")))}
for name in ("ledger.db", "runs/0001/0/metrics.json", "worktrees/run-0-eval/evaluate.py"):
    try:
        seen[name] = open(os.path.join(state, name)).read()
    except OSError as exc:
        seen[name] = type(exc).__name__
seen["setup"] = open(os.path.join(state, "setup/v1/files/data.txt")).read()
open("made-by-the-run.txt", "w").write("x")
open(os.path.join(run_dir, "out.txt"), "w").write("y")
try:
    open(os.path.join(state, "ledger.db"), "w").write("gone")
    seen["write"] = "written"
except OSError as exc:
    seen["write"] = type(exc).__name__
print(json.dumps(seen))
"""


@needs_namespaces
def test_training_sees_only_its_own_folders_of_the_state_folder(outside_tmp: Path) -> None:
    state = outside_tmp / ".nightlab"
    files = {
        "ledger.db": "the ledger",
        "runs/0001/0/metrics.json": '{"val_loss": 1.2, "holdout_loss": 1.3}',
        "runs/0002/0/slot.json": "{}",
        "worktrees/run-0/train.py": "",
        "worktrees/run-0-eval/evaluate.py": "frozen",
        "setup/v1/files/data.txt": "setup output",
    }
    for rel, text in files.items():
        (state / rel).parent.mkdir(parents=True, exist_ok=True)
        (state / rel).write_text(text)
    tree, run_dir = state / "worktrees" / "run-0", state / "runs" / "0002" / "0"
    script = outside_tmp / "probe.py"
    script.write_text(PROBE)
    command = sandbox.wrap(
        f"{sys.executable} {script} {state} {run_dir}",
        [tree, run_dir],
        "required",
        hide=[],
        veil=state,
    )
    done = subprocess.run(command, shell=True, cwd=tree, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["state"] == ["runs", "setup", "worktrees"]
    assert seen["runs"] == ["0002"]  # before: 0001 too, its metrics.json holdout value included
    assert seen["ledger.db"] == seen["runs/0001/0/metrics.json"] == "FileNotFoundError"
    assert seen["worktrees/run-0-eval/evaluate.py"] == "FileNotFoundError"
    assert seen["setup"] == "setup output"
    assert seen["write"] in ("OSError", "PermissionError")  # read-only (EROFS) and Landlock
    assert (tree / "made-by-the-run.txt").read_text() == "x"
    assert (run_dir / "out.txt").read_text() == "y"
    assert (state / "ledger.db").read_text() == "the ledger"
    assert sorted(p.name for p in (state / "runs").iterdir()) == ["0001", "0002"]  # nothing made


# An earlier run's holdout metric, read by train.py through its run directory's path and printed:
# the log's tail goes to the agent with the history.
PEEK = """
import glob
for _f in glob.glob(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "..", "..", "*", "*", "metrics.json")):
    print("peek", open(_f).read())
"""


@needs_namespaces
@pytest.mark.slow
def test_a_run_cannot_read_earlier_runs_holdout_metric(outside_tmp: Path) -> None:
    from helpers import TOY_EVALUATE
    from trust.kit import TRUST_TOML, attack

    root = outside_tmp / "ws"
    toml = TRUST_TOML.format(audit="off", sandbox="required", timeout=20, run_dir_mb=20)
    make_workspace(
        root,
        proposals=[attack("peek at the ledger's runs", PEEK)],
        evaluate=True,
        toml=toml,
        extra_files={"prepare.py": TOY_EVALUATE},
    )
    run_session(root)
    row = ledger_rows(root)["peek at the ledger's runs"]
    assert row["status"] != "crash", row
    for log in (root / ".nightlab" / "runs").glob("*/*/run.log"):
        assert "holdout_loss" not in log.read_text(), log


@needs_namespaces
def test_a_setup_folder_that_is_a_link_stays_one(outside_tmp: Path) -> None:
    """On a Ray node ``.nightlab/setup`` links to the node's shared copy of the setup files
    (``remote_node.py``), which lies outside the state folder: the link is made again, so the
    worktree's links into it still resolve."""
    state, shared = outside_tmp / ".nightlab", outside_tmp / "shared-setup"
    (shared / "v1" / "files").mkdir(parents=True)
    (shared / "v1" / "files" / "data.txt").write_text("node setup output")
    (state / "runs" / "0001" / "0").mkdir(parents=True)
    (state / "worktrees" / "run-0").mkdir(parents=True)
    (state / "ledger.db").write_text("the ledger")
    (state / "setup").symlink_to(shared, target_is_directory=True)
    tree, run_dir = state / "worktrees" / "run-0", state / "runs" / "0001" / "0"
    (tree / "data.txt").symlink_to(state / "setup" / "v1" / "files" / "data.txt")
    probe = (
        "import os; print(open('data.txt').read(), sorted(os.listdir(os.path.dirname(os.getcwd()) + '/..')))"
    )
    command = sandbox.wrap(f"{sys.executable} -c {probe!r}", [tree, run_dir], "required", hide=[], veil=state)
    done = subprocess.run(command, shell=True, cwd=tree, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "node setup output ['runs', 'setup', 'worktrees']"
    assert (state / "setup").is_symlink()  # the real one untouched
