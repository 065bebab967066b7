"""Setup data and run outputs, as real scripts have them: data prepared into ignored files,
checkpoints written under the working directory."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from helpers import TOY_TOML, edit, git, make_workspace, nightlab
from nightlab.executor import sandbox

SUPPORT = sandbox.detect()

# A target in the shape of the well-known GPT scripts: a separate data script writes a
# git-ignored binary file, training reads it and writes its checkpoint under out/.
PREPARE = """\
import os, pathlib, sys
count = pathlib.Path(sys.argv[1])
count.write_text(str(int(count.read_text() or 0) + 1) if count.exists() else "1")
os.makedirs("data", exist_ok=True)
pathlib.Path("data/train.bin").write_bytes(bytes(range(256)) * 64)
"""

TRAIN = """\
import json, os, pathlib, random
LR = 0.1
seed = int(os.environ["NIGHTLAB_SEED"])
data = pathlib.Path("data/train.bin").read_bytes()  # made by prepare.py, never committed
loss = 1.0 + 10 * (LR - 0.3) ** 2 + len(data) * 1e-9 + random.Random(seed).gauss(0, 0.002)
os.makedirs("out", exist_ok=True)
pathlib.Path("out/ckpt.pt").write_text("weights")
EXTRA
with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "metrics.json"), "w") as f:
    json.dump({"val_loss": loss}, f)
"""


def _workspace(tmp_path: Path, extra: str = "", outputs: str = '["out/**"]', proposals=None) -> Path:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    counter = tmp_path / "setup-count"
    toml = toml.replace(
        'run = "python train.py"',
        f'run = "python train.py"\nsetup = "python prepare.py {counter}"\noutputs = {outputs}',
    ).replace('frozen = ["evaluate.py"]', 'frozen = ["evaluate.py", "prepare.py"]')
    return make_workspace(
        tmp_path / "ws",
        proposals=proposals or [edit("LR = 0.1", "LR = 0.2")],
        train=TRAIN.replace("EXTRA", extra),
        toml=toml,
        extra_files={"prepare.py": PREPARE, ".gitignore": "data/\nout/\n"},
    )


def _rows(root: Path) -> list[dict]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM experiments ORDER BY id")]
    con.close()
    return rows


def test_setup_data_reaches_every_run_and_declared_outputs_move_to_the_run_dir(tmp_path: Path) -> None:
    root = _workspace(tmp_path, proposals=[edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3")])
    result = nightlab("run", str(root), "--plain", "--tag", "t")
    assert result.returncode == 0, result.stderr + result.stdout
    rows = _rows(root)
    assert [(r["decision"], r["status"]) for r in rows] == [("baseline", "ok"), ("keep", "ok")]
    assert (tmp_path / "setup-count").read_text() == "1"  # once, although three replicates ran
    run_dir = root / ".nightlab" / "runs" / f"{rows[1]['id']:04d}" / "0"
    assert (run_dir / "outputs" / "out" / "ckpt.pt").read_text() == "weights"
    assert git(root, "status", "--porcelain") == ""  # nothing of it in the user's checkout
    assert "data" not in git(root, "ls-tree", "-r", "--name-only", "nightlab/t")
    # A second run of the same frozen files prepares nothing again.
    again = nightlab("run", str(root), "--plain", "--tag", "t2")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "setup-count").read_text() == "1"
    # A new version of the frozen files gets its own setup.
    (root / "prepare.py").write_text(PREPARE + "# a new version\n")
    git(root, "commit", "-qam", "prepare v2")
    third = nightlab("run", str(root), "--plain", "--tag", "t3")
    assert third.returncode == 0, third.stderr
    assert (tmp_path / "setup-count").read_text() == "2"


def test_an_undeclared_file_names_the_declaration_that_would_allow_it(tmp_path: Path) -> None:
    root = _workspace(tmp_path, extra='pathlib.Path("samples.txt").write_text("text")')
    result = nightlab("run", str(root), "--plain", "--tag", "t")
    assert result.returncode == 2
    assert "the run changed files outside its run directory: samples.txt" in result.stderr
    assert '[target] outputs = ["samples.txt"]' in result.stderr


def test_a_python_file_is_never_an_output(tmp_path: Path) -> None:
    root = _workspace(tmp_path, extra='pathlib.Path("out/sitecustomize.py").write_text("x = 1")')
    result = nightlab("run", str(root), "--plain", "--tag", "t")
    assert result.returncode == 2
    assert "out/sitecustomize.py" in result.stderr and "invalid" in result.stderr


OVERWRITE = 'os.chmod("data/train.bin", 0o644); pathlib.Path("data/train.bin").write_bytes(b"x")'


def _without_sandbox(root: Path) -> None:
    """``[run] sandbox = "off"``, committed: the check after the run is then the only defence."""
    toml = root / "nightlab.toml"
    toml.write_text(toml.read_text() + '\n[run]\nsandbox = "off"\n')
    git(root, "commit", "-qam", "no sandbox")


def test_a_run_that_writes_setup_data_is_invalid(tmp_path: Path) -> None:
    """Without the sandbox (which refuses the write: the next test) the setup data's check after
    the run finds the change."""
    root = _workspace(tmp_path, extra=OVERWRITE)
    _without_sandbox(root)
    result = nightlab("run", str(root), "--plain", "--tag", "t")
    assert result.returncode == 2
    assert "the run changed data the setup command made: data/train.bin" in result.stderr
    manifest = next((root / ".nightlab" / "setup").glob("*/manifest.json"))
    assert json.loads(manifest.read_text())["entries"] == ["data"]


@pytest.mark.skipif(not SUPPORT.complete, reason=f"this machine has {SUPPORT.describe()}")
def test_the_sandbox_refuses_a_write_to_setup_data_wherever_the_workspace_lies(tmp_path: Path) -> None:
    """Setup data lies outside the run's worktree (linked into it): under the sandbox a write
    to it fails, for a workspace under /tmp too (the run's own /tmp shows the machine's entries
    read-only), so the data every later run reads stays as the setup command made it."""
    root = _workspace(tmp_path, extra=OVERWRITE)
    result = nightlab("run", str(root), "--plain", "--tag", "t")
    assert result.returncode == 2
    assert "the baseline run failed (crash: " in result.stderr, result.stderr
    assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr
    data = next((root / ".nightlab" / "setup").glob("*/files/data/train.bin"))
    assert data.read_bytes() == bytes(range(256)) * 64
