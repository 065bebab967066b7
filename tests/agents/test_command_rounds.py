"""The command agent's failed rounds, its CLI's exit codes, what a CLI does beyond its scratch
checkout, and Ctrl-C during a round (real git, real processes, real signals)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_command import LR_SED, command_agent, context_of, running, workspace_with

from helpers import git


def _say(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nightlab.agents.command"]


def test_each_failed_round_says_in_one_line_what_happened_and_where_its_log_is(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    count = tmp_path / "count"
    root = workspace_with(
        tmp_path,
        f"n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}\n"
        "case $n in\n"
        "  1) rm train.py ;;\n"
        "  2) echo 'error: API down' >&2; exit 7 ;;\n"
        "  3) sleep 30 ;;\n"
        "  *) echo 'I changed nothing' ;;\n"
        "esac\n",
        timeout=1,
    )
    assert command_agent(root).propose(context_of(root)) is None
    lines = _say(caplog)
    assert len(lines) == 3, lines
    assert lines[0].startswith("command agent: round 1: the command deleted train.py")
    assert lines[1].startswith("command agent: round 2: the command exited with code 7: ")
    assert "error: API down" in lines[1]
    assert lines[2].startswith("command agent: round 3: the command timed out after 1 s")
    logs = sorted((root / ".nightlab" / "agent").glob("*/agent.log"))
    for line, path in zip(lines, logs, strict=True):
        assert line.endswith(f"no experiment (log: {path})")

    caplog.clear()
    assert command_agent(root).propose(context_of(root)) is None
    assert [line.split(";")[0] for line in _say(caplog)] == [
        f"command agent: round {n}: the command changed no editable file" for n in (1, 2, 3)
    ]


def test_an_edit_followed_by_exit_code_3_is_an_error_not_a_nan(tmp_path):
    root = workspace_with(tmp_path, f"{LR_SED}\necho 'Description: LR up'\nexit 3\n")
    proposal = command_agent(root).propose(context_of(root))
    assert [e.path for e in proposal.edits] == ["train.py"] and proposal.refused is None
    meta = proposal.meta
    assert (meta["status"], meta["exit_code"], meta["reason"]) == ("error", 3, "exited with code 3")


def test_branches_and_tags_the_cli_created_are_deleted_and_others_kept(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    root = workspace_with(
        tmp_path,
        f"git checkout -q -b mybranch\n{LR_SED}\n"
        "git -c user.name=cli -c user.email=cli@x commit -qam 'on my branch'\n"
        "git tag mytag\n",
    )
    git(root, "branch", "users-own")
    before = git(root, "for-each-ref", "--format=%(refname) %(objectname)")
    proposal = command_agent(root).propose(context_of(root))
    assert [e.path for e in proposal.edits] == ["train.py"]  # the committed edit still counts
    assert git(root, "for-each-ref", "--format=%(refname) %(objectname)") == before
    notes = proposal.meta["outside_checkout"]
    assert [n.split(":")[0] for n in notes] == ["created the branch mybranch", "created the tag mytag"]
    assert "`git branch mybranch " in notes[0] and "brings it back" in notes[0]
    assert any("round 1: the command created the branch mybranch" in line for line in _say(caplog))


def test_branches_and_tags_the_cli_moved_or_deleted_are_put_back(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    root = workspace_with(
        tmp_path,
        f"{LR_SED}\n"
        "git -c user.name=cli -c user.email=cli@x commit -qam 'lr'\n"
        "git branch -f feature HEAD\n"  # a user's branch, moved onto the CLI's commit
        "git tag -d release\n"  # a user's tag, deleted
        "git branch -D scratchpad\n",  # a user's branch, deleted
    )
    for name in ("feature", "scratchpad"):
        git(root, "branch", name)
    git(root, "tag", "release")
    before = git(root, "for-each-ref", "--format=%(refname) %(objectname)")
    proposal = command_agent(root).propose(context_of(root))
    assert [e.path for e in proposal.edits] == ["train.py"]
    assert git(root, "for-each-ref", "--format=%(refname) %(objectname)") == before
    notes = proposal.meta["outside_checkout"]
    assert [n.split(":")[0].split(" from ")[0] for n in notes] == [
        "moved the branch feature",
        "deleted the branch scratchpad",
        "deleted the tag release",
    ], notes
    assert "put back (`git branch -f feature " in notes[0] and "restored at" in notes[1]
    assert any("round 1: the command moved the branch feature" in line for line in _say(caplog))


def test_a_write_to_a_clean_user_checkout_is_restored_and_the_copy_kept(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    root = workspace_with(tmp_path, "")
    script = tmp_path / "cli.sh"
    script.write_text(f"{LR_SED}\necho '# escaped' >> {root}/train.py\necho mine > {root}/notes.txt\n")
    original = (root / "train.py").read_text()
    proposal = command_agent(root).propose(context_of(root))
    assert [e.path for e in proposal.edits] == ["train.py"]  # the scratch edit is the proposal
    assert git(root, "status", "--porcelain") == ""  # `nightlab run` can start again
    assert (root / "train.py").read_text() == original
    [note] = proposal.meta["outside_checkout"]
    kept = Path(proposal.meta["log"]).parent / "checkout"
    assert (
        note
        == f"changed your checkout {root} (notes.txt, train.py): restored; the changed copies are in {kept}"
    )
    assert (kept / "train.py").read_text() == original + "# escaped\n"
    assert (kept / "notes.txt").read_text() == "mine\n"
    assert any(line.endswith(note) for line in _say(caplog))


def test_a_write_to_a_checkout_holding_uncommitted_work_is_only_reported(tmp_path):
    root = workspace_with(tmp_path, "")
    (tmp_path / "cli.sh").write_text(f"{LR_SED}\necho '# escaped' >> {root}/train.py\n")
    (root / "draft.txt").write_text("the user's own work\n")
    (root / "prepare.py").write_text("MAX_SEQ_LEN = 512\n")
    proposal = command_agent(root).propose(context_of(root))
    [note] = proposal.meta["outside_checkout"]
    assert note.startswith(f"changed your checkout {root} (train.py): left as it is")
    assert "uncommitted work before the round" in note
    assert (root / "train.py").read_text().endswith("# escaped\n")
    assert (root / "draft.txt").read_text() == "the user's own work\n"
    assert (root / "prepare.py").read_text() == "MAX_SEQ_LEN = 512\n"


def _foreground_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a user's shell starts it, not a background job


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_during_a_round_stops_the_cli_and_its_children_at_once(tmp_path, signum):
    pids = tmp_path / "pids"
    root = workspace_with(
        tmp_path,
        f"echo $$ > {pids}.tmp\nsleep 300 &\necho $! >> {pids}.tmp\nmv {pids}.tmp {pids}\nwait\n",
        timeout=300,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "nightlab.cli", "run", str(root), "-n", "1", "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_foreground_signals,
    )
    try:
        deadline = time.monotonic() + 120
        while not pids.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        cli, child = (int(p) for p in pids.read_text().split())
        sent = time.monotonic()
        os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - sent < 10, err  # not the [agent] timeout of 300 s
    assert proc.returncode == 128 + signum, err
    assert f"interrupted ({signal.Signals(signum).name})" in err
    assert not running(cli) and not running(child)
    assert git(root, "status", "--porcelain") == ""


def test_a_cli_that_removes_its_own_checkout_fails_one_round_and_the_next_has_one(tmp_path, caplog):
    """`git worktree remove --force .` from the CLI's checkout stopped the night with exit 2 and
    "... is not a nightlab worktree: delete it and run again" (found from outside)."""
    caplog.set_level(logging.WARNING)
    once = tmp_path / "once"
    root = workspace_with(
        tmp_path,
        f'{LR_SED}\nif [ ! -e {once} ]; then touch {once}; git worktree remove --force "$PWD"; fi\n',
    )
    proposal = command_agent(root).propose(context_of(root))
    assert [e.path for e in proposal.edits] == ["train.py"] and "LR = 0.3" in proposal.edits[0].replace
    [line] = _say(caplog)
    assert line.startswith(
        "command agent: round 1: the command removed its own checkout (git worktree remove or prune)"
    )


def test_a_failed_rounds_line_carries_no_escape_sequence_of_the_clis_output(tmp_path, caplog):
    """The CLI's last output, quoted in the failed round's warning, reached the terminal with its
    escape sequences (a screen clear, a window title)."""
    caplog.set_level(logging.WARNING)
    root = workspace_with(tmp_path, "printf 'bad \\033[2J\\033]0;TITLE\\007 end\\n'\nexit 3\n")
    agent = command_agent(root)
    assert agent.propose(context_of(root)) is None
    lines = _say(caplog)
    assert lines and all("\x1b" not in line and "\x07" not in line for line in lines)
    assert lines[0].startswith("command agent: round 1: the command exited with code 3: bad  end;")
    assert "\x1b" not in agent.stop_reason()


def test_the_loops_refs_the_cli_deleted_or_moved_off_the_experiments_are_put_back(tmp_path):
    """A CLI that deleted refs/nightlab/experiments/* (then `git gc`: the night's commits gone)
    or pointed nightlab/<tag> at a commit of its own (the morning's best-code branch holding code
    nothing measured) went unnoticed: the loop's refs were left to the loop."""
    root = workspace_with(
        tmp_path,
        f"{LR_SED}\n"
        'git update-ref refs/heads/nightlab/t "$(git commit-tree -m mine -p HEAD "$(git write-tree)")"\n'
        "git update-ref -d refs/nightlab/experiments/0001\n",
    )
    git(root, "update-ref", "refs/nightlab/experiments/0001", "HEAD")
    git(root, "branch", "nightlab/t", "HEAD")
    before = git(root, "for-each-ref", "--format=%(refname) %(objectname)")
    proposal = command_agent(root).propose(context_of(root))
    assert [e.path for e in proposal.edits] == ["train.py"]
    assert git(root, "for-each-ref", "--format=%(refname) %(objectname)") == before
    notes = [n.split(":")[0] for n in proposal.meta["outside_checkout"]]
    assert notes[0].startswith("moved nightlab's refs/heads/nightlab/t to ")
    assert notes[0].endswith(", no experiment's commit")
    assert notes[1] == "deleted nightlab's refs/nightlab/experiments/0001"


def test_a_hook_or_a_setting_the_cli_left_in_the_repository_is_named(tmp_path):
    """A CLI that set core.fsmonitor or wrote a hook in the repository's .git: nightlab's own git
    ignores both, but the user's git would run them; it went unsaid."""
    root = workspace_with(
        tmp_path,
        f"{LR_SED}\ncommon=$(git rev-parse --git-common-dir)\n"
        'git config core.fsmonitor /bin/true\ncp /bin/true "$common/hooks/post-checkout"\n',
    )
    (root / ".git" / "hooks").mkdir(exist_ok=True)
    proposal = command_agent(root).propose(context_of(root))
    assert [e.path for e in proposal.edits] == ["train.py"]
    [note] = proposal.meta["outside_checkout"]
    assert note.startswith("changed the repository's .git/config, .git/hooks/post-checkout: left as it is;")
