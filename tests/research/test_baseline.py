"""A failed baseline is not a trap: fix the target, commit, run again on the same tag."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from helpers import TOY_TRAIN, edit, git, make_workspace, nightlab


def test_a_fixed_baseline_starts_again_from_the_latest_commit(tmp_path: Path) -> None:
    broken = TOY_TRAIN.replace(
        "import json, os, random", "import json, os, random\nraise SystemExit('no data yet')"
    )
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")], train=broken)
    first = nightlab("run", str(root), "--plain", "--tag", "t")
    assert first.returncode == 2
    assert "the baseline run failed" in first.stderr and "commit the fix and run again" in first.stderr
    (root / "train.py").write_text(TOY_TRAIN)
    git(root, "commit", "-qam", "fix the data path")
    fixed_head = git(root, "rev-parse", "HEAD")
    second = nightlab("run", str(root), "--plain", "--tag", "t")
    assert second.returncode == 0, second.stderr
    assert f"has not succeeded yet: starting again from {fixed_head[:12]}" in " ".join(second.stdout.split())
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    rows = con.execute('SELECT kind, decision, "commit" FROM experiments ORDER BY id').fetchall()
    con.close()
    assert [(k, d) for k, d, _ in rows] == [
        ("baseline", "crash"),
        ("baseline", "baseline"),
        ("candidate", "keep"),
    ]
    assert rows[1][2] == fixed_head
    tsv = (root / ".nightlab" / "results.tsv").read_text().splitlines()
    assert [line.split("\t")[3] for line in tsv[1:]] == [
        "keep",
        "keep",
    ]  # the failed baseline is not a result
    # Once the baseline stands, new commits do not move the tag's start; the run says how to use them.
    (root / "notes.md").write_text("later work\n")
    git(root, "add", "notes.md")
    git(root, "commit", "-qm", "later work")
    third = nightlab("run", str(root), "--plain", "--tag", "t")
    assert third.returncode == 0, third.stderr
    assert "run with --tag NEW to research from your checkout" in " ".join(third.stdout.split())
