"""`nightlab try` and `nightlab brief` through the real CLI on toy workspaces (real git, real runs)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from helpers import edit, git, make_workspace, nightlab

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
def test_try_keeps_a_better_edit_and_never_writes_the_users_files_unasked(tmp_path):
    root = make_workspace(tmp_path / "ws")
    train = root / "train.py"
    replace_in(train, LR_LINE, "LR = 0.3  # learning rate: best at 0.3")
    kept = nightlab("try", "-m", "LR 0.1 -> 0.3", "--hypothesis", "LR is below its optimum", str(root))
    assert kept.returncode == 0, kept.stderr
    result = block(kept.stdout)
    assert result["decision"] == "keep"
    assert float(result["improvement"].split()[0]) > 0.3  # the toy loss drops by 10 * 0.2**2 = 0.4
    assert float(result["delta"].split()[0]) < -0.3  # the metric's own change: it went down
    assert "kept: your edit is the new best" in kept.stdout
    after_keep = train.read_text()
    assert "LR = 0.3" in after_keep  # the user's file is left as it is
    branch = git(root, "rev-parse", "nightlab/" + experiments(root)[-1]["tag"])
    assert branch.startswith(result["commit"])  # the research branch moved to the experiment
    assert git(root, "show", f"{branch}:train.py") == after_keep.rstrip("\n")

    # A worse edit on top of the kept one: discarded, and the user's file stays as they left it.
    replace_in(train, WIDTH_LINE, "WIDTH = 4  # model width: best at 128")
    worse_text = train.read_text()
    worse = nightlab("try", "-m", "WIDTH 64 -> 4", str(root))
    assert worse.returncode == 0, worse.stderr
    result = block(worse.stdout)
    assert result["decision"] == "discard"
    assert f"vs #{kept_id(root)}" in result["delta"]
    # The incumbent's value in the runs compared, so delta and the best line can be reconciled.
    compared = float(result["delta"].split(" at ")[1].split()[0])
    change = float(result["delta"].split()[0])
    assert float(result["val_loss"].split()[0]) == pytest.approx(compared + change, abs=2e-6)
    assert "not kept: your edits are left in your files" in worse.stdout
    assert train.read_text() == worse_text
    assert git(root, "rev-parse", f"nightlab/{experiments(root)[-1]['tag']}") == branch

    # Asked for, the best code comes back; the discarded version stays in git.
    synced = nightlab("try", "--sync", str(root))
    assert synced.returncode == 0, synced.stderr
    assert "synced: the best code" in synced.stdout and train.read_text() == after_keep
    assert "WIDTH = 4" in git(root, "show", f"{experiments(root)[-1]['commit']}:train.py")

    rows = experiments(root)
    assert [(r["kind"], r["agent"], r["decision"]) for r in rows] == [
        ("baseline", "baseline", "baseline"),
        ("candidate", "try", "keep"),
        ("candidate", "try", "discard"),
    ]
    assert rows[1]["hypothesis"] == "LR is below its optimum"
    # The discarded experiment's diff is against the kept one: only the WIDTH line.
    assert "-WIDTH = 64" in rows[2]["diff"] and "LR = 0.1" not in rows[2]["diff"]
    # Commit subjects number experiments as the ledger and the refs do.
    for row in rows[1:]:
        assert git(root, "log", "-1", "--format=%s", row["commit"]).startswith(f"nightlab #{row['id']}: ")
        assert git(root, "rev-parse", f"refs/nightlab/experiments/{row['id']:04d}") == row["commit"]
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "main"  # the user's branch never moves


@pytest.mark.slow
def test_try_after_a_run_applies_the_users_edit_onto_the_kept_changes(tmp_path):
    """Issue 17: after `nightlab run` kept changes, the user's checkout is still the original code;
    `try` must run their edit on top of the best code, record only that edit, and leave the
    user's files alone."""
    proposals = [
        edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3"),
        edit("NOISE = 0.002", "NOISE = 0.001", "less noise"),
    ]
    root = make_workspace(tmp_path / "ws", proposals=proposals)
    night = nightlab("run", str(root), "--plain", "--tag", "t")
    assert night.returncode == 0, night.stdout + night.stderr
    kept = [r for r in experiments(root) if r["decision"] == "keep"]
    assert kept, "the night kept something"
    best_code = git(root, "show", "nightlab/t:train.py")
    assert "LR = 0.3" in best_code and "LR = 0.1" in (root / "train.py").read_text()

    train = root / "train.py"
    replace_in(train, WIDTH_LINE, "WIDTH = 128  # model width: best at 128")
    mine = train.read_text()
    res = nightlab("try", "-m", "WIDTH 64 -> 128", "--tag", "t", str(root))
    assert res.returncode == 0, res.stderr
    result = block(res.stdout)
    assert result["decision"] == "keep", res.stdout
    row = experiments(root)[-1]
    # Exactly what ran: the kept changes plus the user's one line, recorded as that one line.
    ran = git(root, "show", f"{row['commit']}:train.py")
    assert "WIDTH = 128" in ran and "LR = 0.3" in ran
    changed = [
        line for line in row["diff"].splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    assert changed == ["-WIDTH = 64  # model width: best at 128", "+WIDTH = 128  # model width: best at 128"]
    assert row["base_commit"] == kept[-1]["commit"]
    # The user's file is untouched, and they are told the best code holds more than it.
    assert train.read_text() == mine
    assert "nightlab try --sync" in res.stdout

    # An edit that changes a line the best code changed too does not apply: refused, one line.
    git(root, "checkout", "--", "train.py")
    replace_in(train, LR_LINE, "LR = 0.2  # learning rate: best at 0.3")
    conflict = nightlab("try", "-m", "LR 0.2", "--tag", "t", str(root))
    assert conflict.returncode == 2, conflict.stdout + conflict.stderr
    line = conflict.stderr.strip()
    assert "\n" not in line and "train.py does not apply to the best code" in line and "--sync" in line
    assert experiments(root)[-1]["id"] == row["id"]  # nothing recorded for it

    # --sync alone refuses to throw away an edit that is nowhere in git.
    refused = nightlab("try", "--sync", "--tag", "t", str(root))
    assert refused.returncode == 2 and "not in git yet" in refused.stderr
    assert "LR = 0.2" in train.read_text()

    # The advice, followed: drop the edit, sync, redo it on the best code. The edit is measured
    # from the synced code (it was refused again, as a change of every line the sync brought in).
    git(root, "checkout", "--", "train.py")
    assert nightlab("try", "--sync", "--tag", "t", str(root)).returncode == 0
    replace_in(train, "LR = 0.3  # learning rate: best at 0.3", "LR = 0.25  # learning rate: best at 0.3")
    redone = nightlab("try", "-m", "LR 0.25", "--tag", "t", str(root))
    assert redone.returncode == 0, redone.stdout + redone.stderr
    row = experiments(root)[-1]
    changed = [
        line for line in row["diff"].splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    assert changed == ["-LR = 0.3  # learning rate: best at 0.3", "+LR = 0.25  # learning rate: best at 0.3"]
    # A synced file put back to the checkout's code and edited there is measured from the
    # checkout, as before: the best code's LR stays, it is not reverted by the old line.
    git(root, "checkout", "--", "train.py")
    replace_in(train, "rng = random.Random(seed)", "rng = random.Random(seed + 1)")
    back = nightlab("try", "-m", "another seed stream", "--tag", "t", str(root))
    assert back.returncode == 0, back.stdout + back.stderr
    ran = git(root, "show", f"{experiments(root)[-1]['commit']}:train.py")
    assert "LR = 0.3  #" in ran and "random.Random(seed + 1)" in ran


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
    assert 'nightlab try --sync -m "' in result.stdout
    assert "Goal: lower val_loss" in result.stdout
    assert "program.md" not in result.stdout  # this workspace has none: never send the agent to read it
    (root / "program.md").write_text("# research instructions\n")
    git(root, "add", "program.md")
    git(root, "commit", "-qm", "program")
    assert "Research instructions: program.md (read it first)" in nightlab("brief", str(root)).stdout


def test_an_edit_lands_on_the_best_code_next_to_changed_knobs_never_over_them():
    from nightlab.research.tryrun import _merge3

    checkout = "LR = 0.1\nWIDTH = 64\nDEPTH = 4\n"
    best = "LR = 0.3\nWIDTH = 64\nDEPTH = 4\nWARMUP = 10\n"  # kept: LR moved, a knob added
    # A knob on the line next to a changed one: applied (git merge-file calls that a conflict).
    assert _merge3(best, checkout, "LR = 0.1\nWIDTH = 128\nDEPTH = 4\n") == (
        "LR = 0.3\nWIDTH = 128\nDEPTH = 4\nWARMUP = 10\n",
        None,
    )
    # A change already in the best code counts as applied, with the rest of the edit.
    assert _merge3(best, checkout, "LR = 0.3\nWIDTH = 64\nDEPTH = 8\n")[0] == (
        "LR = 0.3\nWIDTH = 64\nDEPTH = 8\nWARMUP = 10\n"
    )
    # The same line changed differently: refused, naming the user's line.
    merged, conflict = _merge3(best, checkout, "LR = 0.2\nWIDTH = 64\nDEPTH = 4\n")
    assert merged == "" and conflict == "your line 1: 'LR = 0.2'"
    # Both added a line at the same place: which goes first is not for nightlab to guess.
    assert _merge3(best, checkout, checkout + "DROPOUT = 0.1\n")[1] == "your line 4: 'DROPOUT = 0.1'"
