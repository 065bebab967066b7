"""The frozen-file hashes: a change, a deletion or a replaced file is caught, never a crash."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from helpers import git
from nightlab.workspace.gitcli import run_git
from nightlab.workspace.integrity import FrozenCheck, changed_entries, hash_paths, tree_stamps

PREPARE = "def evaluate(x):\n    return x\n"


def test_hash_paths_reads_files_and_marks_what_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "prepare.py").write_text(PREPARE)
    (tmp_path / "data").mkdir()
    (tmp_path / "blob").write_text("a file where a folder was\n")
    hashes = hash_paths(tmp_path, iter(["prepare.py", "gone.py", "data", "blob/inside.py"]))
    assert hashes == {
        "prepare.py": hashlib.sha256(PREPARE.encode()).hexdigest(),
        "gone.py": "missing",
        "data": "missing",  # a folder where a file was
        "blob/inside.py": "missing",  # a parent that is now a file (NotADirectoryError)
    }


def test_frozen_check_names_changed_and_deleted_files(tmp_path: Path) -> None:
    (tmp_path / "prepare.py").write_text(PREPARE)
    (tmp_path / "evaluate.py").write_text("print(1)\n")
    check = FrozenCheck(hash_paths(tmp_path, ["prepare.py", "evaluate.py"]))
    assert check.violations(tmp_path) == [] and check.describe(tmp_path) is None
    (tmp_path / "prepare.py").write_text(PREPARE + "# tampered\n")
    (tmp_path / "evaluate.py").unlink()
    assert sorted(check.violations(tmp_path)) == ["evaluate.py", "prepare.py"]
    assert "frozen file changed during the run" in (check.describe(tmp_path) or "")


def test_stamps_show_a_write_undone_and_a_file_planted_then_removed(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "scale.py").write_text("FACTOR = 1.0\n")
    (tmp_path / "pkg" / "mod.py").write_text("X = 1\n")
    before = tree_stamps(tmp_path)
    assert set(before) == {".", "pkg", "scale.py", "pkg/mod.py"}
    assert changed_entries(before, tree_stamps(tmp_path)) == []  # reading changes nothing
    assert (tmp_path / "scale.py").read_text() == "FACTOR = 1.0\n"
    time.sleep(0.01)
    (tmp_path / "scale.py").write_text("FACTOR = 0.5\n")
    (tmp_path / "scale.py").write_text("FACTOR = 1.0\n")  # the same bytes again: the hash is blind
    assert changed_entries(before, tree_stamps(tmp_path)) == ["scale.py"]
    again = tree_stamps(tmp_path)
    (tmp_path / "pkg" / "sympy.py").write_text("")
    (tmp_path / "pkg" / "sympy.py").unlink()  # planted for one import, gone before the audit
    assert changed_entries(again, tree_stamps(tmp_path)) == ["pkg"]


def test_git_as_nightlab_runs_it_ignores_replace_refs(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "prepare.py").write_text(PREPARE)
    git(tmp_path, "add", "prepare.py")
    git(tmp_path, "commit", "-qm", "frozen")
    real = git(tmp_path, "rev-parse", "HEAD:prepare.py")
    (tmp_path / "fake.txt").write_text("def evaluate(x):\n    return 0\n")
    fake = git(tmp_path, "hash-object", "-w", "fake.txt")
    git(tmp_path, "replace", real, fake)  # what a run able to write .git could plant
    assert "return 0" in git(tmp_path, "show", "HEAD:prepare.py")  # plain git obeys it
    shown = run_git(["show", "HEAD:prepare.py"], tmp_path).stdout.decode()
    assert shown == PREPARE
