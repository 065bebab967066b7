"""`nightlab try` and `nightlab brief` through the real CLI on toy workspaces (real git, real runs)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from helpers import git, make_workspace, nightlab

LR_LINE = "LR = 0.1  # learning rate: best at 0.3"
WIDTH_LINE = "WIDTH = 64  # model width: best at 128"


def block(stdout: str) -> dict[str, str]:
    """The `key: value` lines after the `---` line."""
    lines = stdout.split("---\n", 1)[1].splitlines()
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def experiments(root: Path) -> list[dict]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM experiments ORDER BY id")]
    con.close()
    return rows


@pytest.mark.slow
def test_try_keeps_a_better_edit_then_reverts_a_worse_one(tmp_path):
    root = make_workspace(tmp_path / "ws")
    train = root / "train.py"
    replace_in(train, LR_LINE, "LR = 0.3  # learning rate: best at 0.3")
    kept = nightlab("try", "-m", "LR 0.1 -> 0.3", "--hypothesis", "LR is below its optimum", str(root))
    assert kept.returncode == 0, kept.stderr
    result = block(kept.stdout)
    assert result["decision"] == "keep"
    assert float(result["delta"].split()[0]) > 0.3  # the toy loss drops by 10 * 0.2**2 = 0.4
    assert "kept: your edits are the new best" in kept.stdout
    after_keep = train.read_text()
    assert "LR = 0.3" in after_keep  # the user's file is left as it is
    branch = git(root, "rev-parse", "nightlab/" + experiments(root)[-1]["tag"])
    assert branch.startswith(result["commit"])  # the research branch moved to the experiment
    assert git(root, "show", f"{branch}:train.py") == after_keep.rstrip("\n")

    # A worse edit on top of the kept one: discarded, and train.py goes back to the best code.
    replace_in(train, WIDTH_LINE, "WIDTH = 4  # model width: best at 128")
    worse = nightlab("try", "-m", "WIDTH 64 -> 4", str(root))
    assert worse.returncode == 0, worse.stderr
    result = block(worse.stdout)
    assert result["decision"] == "discard"
    assert f"improvement over #{kept_id(root)}" in result["delta"]
    assert "restored train.py to the best code" in worse.stdout
    assert train.read_text() == after_keep
    assert git(root, "rev-parse", f"nightlab/{experiments(root)[-1]['tag']}") == branch

    rows = experiments(root)
    assert [(r["kind"], r["agent"], r["decision"]) for r in rows] == [
        ("baseline", "baseline", "baseline"),
        ("candidate", "try", "keep"),
        ("candidate", "try", "discard"),
    ]
    assert rows[1]["hypothesis"] == "LR is below its optimum"
    # The discarded experiment's diff is against the kept one: only the WIDTH line.
    assert "-WIDTH = 64" in rows[2]["diff"] and "LR = 0.1" not in rows[2]["diff"]
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "main"  # the user's branch never moves


def kept_id(root: Path) -> int:
    return max(r["id"] for r in experiments(root) if r["decision"] == "keep")


def test_try_refuses_edits_outside_the_editable_files(tmp_path):
    root = make_workspace(tmp_path / "ws")
    replace_in(root / "train.py", LR_LINE, "LR = 0.3  # learning rate: best at 0.3")
    (root / "evaluate.py").write_text("print('val_loss: 0.0')\n")
    result = nightlab("try", "-m", "cheat", str(root))
    assert result.returncode == 2
    assert "outside the editable files (evaluate.py)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (root / ".nightlab" / "ledger.db").exists() or not experiments(root)
    assert "LR = 0.3" in (root / "train.py").read_text()  # nothing of the user's was touched


@pytest.mark.slow
def test_try_without_edits_and_with_a_syntax_error(tmp_path):
    root = make_workspace(tmp_path / "ws")
    nothing = nightlab("try", "-m", "nothing", str(root))
    assert nothing.returncode == 2
    assert "no uncommitted edits to the editable files (train.py)" in nothing.stderr

    replace_in(root / "train.py", LR_LINE, "LR = (0.3  # unbalanced")
    broken = nightlab("try", "-m", "broken", str(root))
    assert broken.returncode == 0, broken.stderr
    result = block(broken.stdout)
    assert result["decision"] == "invalid"
    assert result["commit"].startswith("-")
    assert "nothing ran: your edits are left in place" in broken.stdout
    assert "LR = (0.3" in (root / "train.py").read_text()


def test_brief_names_the_files_the_metric_and_the_command(tmp_path):
    root = make_workspace(tmp_path / "ws")
    result = nightlab("brief", str(root))
    assert result.returncode == 0, result.stderr
    assert "Edit only the editable files: train.py" in result.stdout
    assert "Never edit the frozen files (evaluate.py)" in result.stdout
    assert 'nightlab try -m "' in result.stdout
    assert "Goal: lower val_loss" in result.stdout
