"""Workspace against real git repositories in temporary folders."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from nightlab.errors import UserError
from nightlab.workspace.git import StaleBranchError, Workspace

TRAIN = "LR = 0.1\nWIDTH = 64\n\n\ndef main():\n    return LR * WIDTH\n"
PREPARE = "def evaluate(x):\n    return x\n"


def git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(autouse=True)
def no_user_git_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No global git config (hence no user.name): nightlab must commit without one."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def make_repo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    (root / "train.py").write_text(TRAIN)
    (root / "prepare.py").write_text(PREPARE)
    (root / "run.sh").write_text("#!/bin/sh\npython train.py\n")
    (root / "run.sh").chmod(0o755)
    (root / ".gitignore").write_text("*.log\ncache/\n")
    git(root, "add", "-A")
    git(root, "-c", "user.name=Person", "-c", "user.email=p@example.com", "commit", "-q", "-m", "start")
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def user_state(root: Path) -> dict:
    """Everything of the user's checkout that nightlab promises never to touch."""
    index = root / ".git" / "index"
    return {
        "head": git(root, "rev-parse", "HEAD"),
        "symbolic": git(root, "symbolic-ref", "HEAD"),
        "index": hashlib.sha256(index.read_bytes()).hexdigest(),
        "index_mtime": index.stat().st_mtime_ns,
        "files": {p.name: p.read_text() for p in root.iterdir() if p.is_file()},
        "status": git(root, "--no-optional-locks", "status", "--porcelain"),
    }


# -- opening a workspace ----------------------------------------------------------------------
def test_not_a_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a git repository: run `git init`"):
        Workspace(tmp_path)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a directory"):
        Workspace(tmp_path / "nope")


def test_repository_without_commits_is_refused(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    with pytest.raises(UserError, match="has no commits yet"):
        Workspace(tmp_path)


def test_subfolder_of_a_repository_is_refused(repo: Path) -> None:
    (repo / "sub").mkdir()
    with pytest.raises(UserError, match="is not its top folder"):
        Workspace(repo / "sub")


def test_state_dir_never_dirties_the_tree(repo: Path) -> None:
    ws = Workspace(repo)
    assert ws.state_dir == repo / ".nightlab" and ws.state_dir.is_dir()
    (ws.state_dir / "ledger.db").write_text("x")
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    Workspace(repo)  # opening again does not append the exclude line twice
    assert (repo / ".git" / "info" / "exclude").read_text().count("/.nightlab/") == 1


def test_dirty_tree_is_refused_naming_the_files(repo: Path) -> None:
    ws = Workspace(repo)
    ws.ensure_clean()
    (repo / "train.py").write_text(TRAIN + "# edited\n")
    (repo / "notes.txt").write_text("todo")
    (repo / "out.log").write_text("ignored by .gitignore")
    with pytest.raises(UserError) as err:
        ws.ensure_clean()
    message = str(err.value)
    assert message.startswith("workspace has uncommitted changes (")
    assert "train.py" in message and "notes.txt" in message and "out.log" not in message
    assert message.endswith("commit or stash them first")
    git(repo, "checkout", "--", "train.py")  # only a new file left: a log beside the script, often
    with pytest.raises(UserError, match=r"untracked files \(notes.txt\), which the runs would not see"):
        ws.ensure_clean()


def test_dirty_message_names_at_most_five_files(repo: Path) -> None:
    for i in range(7):
        (repo / f"new{i}.txt").write_text("x")
    with pytest.raises(UserError, match=r"new4\.txt, and 2 more\)"):
        Workspace(repo).ensure_clean()


def test_resolve_and_unknown_revision(repo: Path) -> None:
    ws = Workspace(repo)
    assert ws.resolve("main") == ws.head_commit() == git(repo, "rev-parse", "HEAD")
    with pytest.raises(UserError, match="'no-such-branch' is not a commit"):
        ws.resolve("no-such-branch")


# -- experiment commits and refs --------------------------------------------------------------
def test_commit_files_leaves_the_user_checkout_untouched(repo: Path) -> None:
    ws = Workspace(repo)
    before = user_state(repo)
    base = ws.head_commit()
    commit = ws.commit_files(
        base, {"train.py": TRAIN.replace("0.1", "0.2"), "extra/new.py": "X = 1\n"}, "LR up"
    )
    ws.set_experiment_ref(1, commit)
    ws.create_branch("t1", base)
    ws.advance_branch("t1", commit, base)
    ws.checkout(ws.worktree("run-0"), commit)
    assert user_state(repo) == before

    assert git(repo, "rev-parse", f"{commit}^") == base
    assert ws.read_file(commit, "train.py") == TRAIN.replace("0.1", "0.2")
    assert ws.read_file(commit, "prepare.py") == PREPARE
    assert sorted(ws.list_files(commit)) == [".gitignore", "extra/new.py", "prepare.py", "run.sh", "train.py"]
    assert git(repo, "log", "-1", "--format=%an <%ae>|%s", commit) == "nightlab <nightlab@localhost>|LR up"


def test_commit_files_keeps_modes_and_can_delete(repo: Path) -> None:
    ws = Workspace(repo)
    commit = ws.commit_files(ws.head_commit(), {"run.sh": "#!/bin/sh\necho hi\n", "prepare.py": None}, "m")
    assert git(repo, "ls-tree", commit, "run.sh").split()[0] == "100755"
    assert "prepare.py" not in ws.list_files(commit)


def test_commit_files_refuses_paths_outside_the_tree(repo: Path) -> None:
    ws = Workspace(repo)
    for bad in ("../escape.py", "/etc/passwd", ".git/hooks/pre-commit", "a/../../b"):
        with pytest.raises(UserError):
            ws.commit_files(ws.head_commit(), {bad: "x"}, "bad")


def test_text_round_trips_exactly(repo: Path) -> None:
    ws = Workspace(repo)
    text = "caf\u00e9 = 1\r\nraw = b'\\xff'\n\ttab\n"
    commit = ws.commit_files(ws.head_commit(), {"train.py": text}, "unicode")
    assert ws.read_files(commit, ["train.py"]) == {"train.py": text}


def test_read_files_missing_and_diff(repo: Path) -> None:
    ws = Workspace(repo)
    base = ws.head_commit()
    commit = ws.commit_files(base, {"train.py": TRAIN.replace("WIDTH = 64", "WIDTH = 128")}, "wider")
    with pytest.raises(UserError, match="nothing.py does not exist at commit"):
        ws.read_files(commit, ["train.py", "nothing.py"])
    got = ws.read_files(commit, ["nothing.py", "train.py", "extra"], missing_ok=True)
    assert list(got) == ["train.py"]
    diff = ws.diff(base, commit)
    assert "--- a/train.py\n+++ b/train.py" in diff and "-WIDTH = 64\n+WIDTH = 128" in diff
    assert ws.diff(base, base) == ""


def test_experiment_refs_survive_branch_moves_and_gc(repo: Path) -> None:
    ws = Workspace(repo)
    base = ws.head_commit()
    ws.create_branch("night", base)
    commits = {}
    for exp_id in range(1, 6):
        commits[exp_id] = ws.commit_files(base, {"train.py": f"LR = {exp_id}\n"}, f"exp {exp_id}")
        ws.set_experiment_ref(exp_id, commits[exp_id])
    ws.advance_branch("night", commits[2], base)
    ws.advance_branch("night", commits[4], commits[2])
    assert ws.branch_commit("night") == commits[4]
    assert ws.experiment_refs() == commits
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "-q", "--prune=now")
    for commit in commits.values():  # unreferenced by any branch, yet still there
        assert ws.read_file(commit, "train.py").startswith("LR = ")


def test_advance_branch_refuses_a_stale_old_value(repo: Path) -> None:
    ws = Workspace(repo)
    base = ws.head_commit()
    one = ws.commit_files(base, {"train.py": "A = 1\n"}, "one")
    two = ws.commit_files(base, {"train.py": "A = 2\n"}, "two")
    ws.create_branch("t", base)
    ws.advance_branch("t", one, base)
    with pytest.raises(StaleBranchError, match="nightlab/t is at .*, expected"):
        ws.advance_branch("t", two, base)
    assert ws.branch_commit("t") == one
    with pytest.raises(StaleBranchError, match="expected nothing"):
        ws.advance_branch("t", two, None)
    ws.advance_branch("fresh", two, None)  # None: the branch must not exist yet
    assert ws.branch_commit("fresh") == two


def test_branch_creation_rules(repo: Path) -> None:
    ws = Workspace(repo)
    assert ws.branch_commit("new") is None
    ws.create_branch("new", ws.head_commit())
    assert git(repo, "rev-parse", "nightlab/new") == ws.head_commit()
    with pytest.raises(UserError, match="already exists: pick another --tag"):
        ws.create_branch("new", ws.head_commit())
    for bad in ("", "a b", "../x", "x.lock", "-x"):
        with pytest.raises(UserError, match="is not usable"):
            ws.branch_commit(bad)


def test_advance_refuses_a_branch_the_user_has_checked_out(repo: Path) -> None:
    ws = Workspace(repo)
    base = ws.head_commit()
    ws.create_branch("mine", base)
    git(repo, "switch", "-q", "nightlab/mine")
    commit = ws.commit_files(base, {"train.py": "A = 1\n"}, "a")
    with pytest.raises(UserError, match="nightlab/mine is checked out in"):
        ws.advance_branch("mine", commit, base)
    assert ws.branch_commit("mine") == base


def test_revert_commit_onto_clean_and_conflicting(repo: Path) -> None:
    ws = Workspace(repo)
    base = ws.head_commit()
    lr = ws.commit_files(base, {"train.py": TRAIN.replace("LR = 0.1", "LR = 0.3")}, "LR")
    later = TRAIN.replace("LR = 0.1", "LR = 0.3").replace("LR * WIDTH", "LR * WIDTH * 2")
    both = ws.commit_files(lr, {"train.py": later}, "double")
    ablated = ws.revert_commit_onto(lr, both)
    assert ablated is not None
    assert ws.read_file(ablated, "train.py") == TRAIN.replace("LR * WIDTH", "LR * WIDTH * 2")
    assert git(repo, "rev-parse", f"{ablated}^") == both

    clash = ws.commit_files(both, {"train.py": TRAIN.replace("LR = 0.1", "LR = 0.5")}, "LR again")
    before = user_state(repo)
    assert ws.revert_commit_onto(lr, clash) is None
    assert user_state(repo) == before


# -- worktrees ----------------------------------------------------------------------------------
def test_worktree_is_persistent_and_detached(repo: Path) -> None:
    ws = Workspace(repo)
    tree = ws.worktree("run-0")
    assert tree == repo / ".nightlab" / "worktrees" / "run-0"
    assert (tree / "train.py").read_text() == TRAIN
    assert ws.worktree("run-0") == tree and ws.worktree("run-1") != tree
    assert git(tree, "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"  # detached
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"


def test_worktree_is_recreated_after_the_state_dir_is_deleted(repo: Path) -> None:
    ws = Workspace(repo)
    ws.worktree("run-0")
    shutil.rmtree(ws.state_dir)
    ws = Workspace(repo)
    tree = ws.worktree("run-0")
    commit = ws.commit_files(ws.head_commit(), {"train.py": "LR = 2\n"}, "two")
    ws.checkout(tree, commit)
    assert (tree / "train.py").read_text() == "LR = 2\n"
    assert git(repo, "worktree", "list").count("\n") == 1


def test_checkout_removes_leftovers_of_the_previous_run(repo: Path) -> None:
    ws = Workspace(repo)
    base = ws.head_commit()
    tree = ws.worktree("run-0")
    commit = ws.commit_files(base, {"train.py": "LR = 9\n"}, "nine")
    (tree / "train.py").write_text("edited by a run")
    (tree / "leftover.txt").write_text("x")
    (tree / "cache").mkdir()
    (tree / "cache" / "big.bin").write_text("ignored by .gitignore")
    (tree / "deep" / "er").mkdir(parents=True)
    (tree / "deep" / "er" / "f.py").write_text("x")
    (tree / "runs" / "1").mkdir(parents=True)
    (tree / "runs" / "1" / "log").write_text("kept")
    ws.checkout(tree, commit, keep=["runs"])
    assert (tree / "train.py").read_text() == "LR = 9\n"
    assert sorted(p.name for p in tree.iterdir()) == [
        ".git",
        ".gitignore",
        "prepare.py",
        "run.sh",
        "runs",
        "train.py",
    ]
    assert (tree / "runs" / "1" / "log").read_text() == "kept"
    assert git(tree, "rev-parse", "HEAD") == commit


def test_run_changes_are_detected_and_restored(repo: Path) -> None:
    ws = Workspace(repo)
    tree = ws.worktree("run-0")
    ws.checkout(tree, ws.head_commit())
    assert ws.modified_tracked_files(tree) == []
    # A run that patches the evaluation three ways, plus harmless byproducts.
    (tree / "prepare.py").write_text("def evaluate(x):\n    return 0.0\n")
    (tree / "sitecustomize.py").write_text("import prepare\n")
    (tree / "cache").mkdir()
    (tree / "cache" / "evil.pth").write_text("import os\n")  # git-ignored, still reported
    (tree / "run.sh").unlink()
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "prepare.cpython-311.pyc").write_bytes(b"\0")
    (tree / "out").mkdir()
    (tree / "out" / "ckpt.pt").write_text("allowed")
    touched = ws.modified_tracked_files(tree, allowed=["out"])
    assert sorted(touched) == ["cache/evil.pth", "prepare.py", "run.sh", "sitecustomize.py"]

    ws.restore(tree, keep=["out"])
    assert ws.modified_tracked_files(tree, allowed=["out"]) == []
    assert (tree / "prepare.py").read_text() == PREPARE
    assert not (tree / "sitecustomize.py").exists() and not (tree / "cache").exists()
    assert not (tree / "__pycache__").exists()  # a planted .pyc must not reach the evaluation
    assert (tree / "run.sh").stat().st_mode & stat.S_IXUSR
    assert (tree / "out" / "ckpt.pt").exists()


def test_a_run_cannot_hide_changes_by_repointing_dot_git(repo: Path, tmp_path: Path) -> None:
    ws = Workspace(repo)
    tree = ws.worktree("run-0")
    ws.checkout(tree, ws.head_commit())
    decoy = make_repo(tmp_path / "decoy")
    (tree / "prepare.py").write_text("def evaluate(x):\n    return 0.0\n")
    (tree / ".git").write_text(f"gitdir: {decoy / '.git'}\n")  # `git status` here would say clean
    assert ws.modified_tracked_files(tree) == ["prepare.py"]
    ws.restore(tree)
    assert (tree / "prepare.py").read_text() == PREPARE
    assert git(tree, "rev-parse", "HEAD") == ws.head_commit()
    assert git(decoy, "--no-optional-locks", "status", "--porcelain") == ""


def test_workspace_with_ignored_clutter_and_inherited_git_dir(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "cache").mkdir()
    (repo / "cache" / "data.bin").write_bytes(os.urandom(64))
    other = make_repo(repo.parent / "other")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))  # as inside a git hook: must be ignored
    ws = Workspace(repo)
    ws.ensure_clean()
    assert (
        ws.head_commit()
        == subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            env={**os.environ, "GIT_DIR": ".git"},
        ).stdout.strip()
    )


def test_many_experiments_stay_fast_and_leave_nothing_behind(repo: Path) -> None:
    ws = Workspace(repo)
    base = ws.head_commit()
    tree = ws.worktree("run-0")
    count = 30
    start = time.perf_counter()
    for exp_id in range(count):
        commit = ws.commit_files(base, {"train.py": TRAIN.replace("0.1", f"0.{exp_id}")}, f"exp {exp_id}")
        ws.set_experiment_ref(exp_id, commit)
        ws.checkout(tree, commit)
    per_experiment = (time.perf_counter() - start) / count
    assert per_experiment < 1.0, f"{per_experiment:.3f} s per experiment"  # ~0.03 s on a quiet machine
    assert len(ws.experiment_refs()) == count
    assert sorted(p.name for p in ws.state_dir.iterdir()) == ["worktrees"]  # no temporary indexes left
    assert git(repo, "worktree", "list").count("\n") == 1  # one worktree, reused


def test_nightlabs_git_commands_run_no_hook_or_fsmonitor_the_repository_names(tmp_path: Path) -> None:
    """A training script that can write the repository's .git/config (a workspace in /tmp, which
    the sandbox leaves writable) could name a program for git to run: a file-system monitor or a
    hook would then run outside the sandbox the next time nightlab commits. nightlab's git
    commands switch both off."""
    from helpers import edit, make_workspace, nightlab

    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.2")])
    ran = tmp_path / "ran"
    program = tmp_path / "program.sh"
    program.write_text(f'#!/bin/sh\necho "$0 $*" >> {ran}\n')
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    subprocess.run(["git", "config", "core.fsmonitor", str(program)], cwd=root, check=True)
    hooks = root / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for hook in ("pre-commit", "post-commit", "post-checkout", "reference-transaction"):
        (hooks / hook).write_text(program.read_text())
        (hooks / hook).chmod(0o755)
    res = nightlab("run", str(root), "--plain", "-n", "1")
    assert res.returncode == 0, res.stderr
    assert not ran.exists(), ran.read_text()
    subprocess.run(["git", "status"], cwd=root, capture_output=True)  # the user's own git does run it
    assert ran.exists()
