"""Filter and merge drivers a repository's own config names never run from nightlab's git."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import committed_repo
from nightlab.workspace.git import Workspace
from nightlab.workspace.gitcli import driver_overrides


def _plant(root: Path, ran: Path) -> None:
    """A filter (clean, smudge, process) and a merge driver in .git/config, and attributes that
    name them for every file, as a coding CLI or a training run in /tmp could write them."""
    program = root.parent / "program.sh"
    program.write_text(f'#!/bin/sh\necho "$0 $*" >> {ran}\ncat\n')
    program.chmod(0o755)
    for key in ("filter.evil.clean", "filter.evil.smudge", "filter.evil.process", "merge.evil.driver"):
        subprocess.run(["git", "config", key, f"{program} {key}"], cwd=root, check=True)
    subprocess.run(["git", "config", "filter.evil.required", "true"], cwd=root, check=True)
    (root / ".git" / "info").mkdir(exist_ok=True)
    (root / ".git" / "info" / "attributes").write_text("* filter=evil merge=evil\n")


def test_a_filter_or_merge_driver_in_the_repositorys_config_never_runs(tmp_path: Path) -> None:
    """A filter driver named in .git/config and .git/info/attributes ran, outside any sandbox,
    each time nightlab checked out a worktree or compared one (found by planting it in a
    workspace before `nightlab run`: its clean and smudge commands ran)."""
    root = committed_repo(tmp_path / "ws", {"train.py": "LR = 0.1\nWIDTH = 8\n"})
    ran = tmp_path / "ran"
    _plant(root, ran)
    ws = Workspace(root)
    head = ws.head_commit()
    tree = ws.worktree("run-0")
    ws.checkout(tree, head)
    (tree / "train.py").write_text("LR = 0.2\nWIDTH = 8\n")
    assert ws.modified_tracked_files(tree) == ["train.py"]
    ws.restore(tree)
    first = ws.commit_files(head, {"train.py": "LR = 0.3\nWIDTH = 8\n"}, "LR")
    second = ws.commit_files(head, {"train.py": "LR = 0.1\nWIDTH = 16\n"}, "WIDTH")
    ws.reapply_onto(head, second, first, "WIDTH onto LR")  # a 3-way merge: the merge driver's turn
    ws.checkout(tree, first)
    assert (tree / "train.py").read_text() == "LR = 0.3\nWIDTH = 8\n"  # the real content
    assert not ran.exists(), ran.read_text()
    subprocess.run(["git", "status"], cwd=root, capture_output=True)  # the user's own git runs it
    subprocess.run(["git", "checkout", "--", "train.py"], cwd=root, capture_output=True)
    (root / "train.py").touch()
    subprocess.run(["git", "status"], cwd=root, capture_output=True)
    assert ran.exists()


def test_only_converting_commands_pay_for_the_check_and_local_git_lfs_is_kept(tmp_path: Path) -> None:
    root = committed_repo(tmp_path / "ws", {"a.txt": "a\n"})
    for key, value in (("filter.lfs.clean", "git-lfs clean -- %f"), ("filter.x.clean", "evil")):
        subprocess.run(["git", "config", key, value], cwd=root, check=True)
    assert driver_overrides(["rev-parse", "HEAD"], root) == []
    assert driver_overrides(["--git-dir", str(root / ".git"), "status"], root) == [
        "-c",
        "filter.x.clean=",
        "-c",
        "filter.x.required=false",
    ]


def test_a_diff_of_a_file_that_is_not_utf8_is_text_the_ledger_can_store(tmp_path: Path) -> None:
    """A kept edit of a Latin-1 train.py: its diff carried the byte as a lone surrogate and the
    ledger's insert ended `nightlab run` in a UnicodeEncodeError traceback."""
    ws = Workspace(committed_repo(tmp_path / "ws", {"train.py": "WIDTH = 8\n"}))
    head = ws.commit_files(ws.head_commit(), {"train.py": "# caf\udce9\nWIDTH = 8\n"}, "Latin-1")
    changed = ws.commit_files(head, {"train.py": "# caf\udce9\nWIDTH = 16\n"}, "WIDTH")
    diff = ws.diff(head, changed)
    assert " # caf\\xe9\n-WIDTH = 8\n+WIDTH = 16" in diff
    diff.encode("utf-8")  # what sqlite does with it
    assert ws.read_file(changed, "train.py") == "# caf\udce9\nWIDTH = 16\n"  # the bytes kept as they were
