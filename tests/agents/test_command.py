"""The command agent, with small shell scripts playing the coding CLI (real git, real processes)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from agent_kit import entry

from helpers import TOY_TOML, git, make_workspace, nightlab
from nightlab.agents.base import MAX_HYPOTHESIS, AgentSetup
from nightlab.agents.command import CONTEXT_FILE, MAX_FAILED_ROUNDS, PROPOSAL_FILE, CommandAgent
from nightlab.agents.registry import make_agent
from nightlab.config import load_config
from nightlab.errors import UserError
from nightlab.research.tools import SessionTools
from nightlab.types import Context
from nightlab.workspace.git import AGENT_WORKTREE, Workspace

LR_SED = "sed -i 's/^LR = 0.1 /LR = 0.3 /' train.py"


def workspace_with(tmp_path: Path, script: str, timeout: float = 60, extra_files: dict | None = None) -> Path:
    """A toy workspace whose [agent] runs ``script`` (kept outside the workspace) with sh."""
    path = tmp_path / "cli.sh"
    path.write_text("set -e\n" + script)
    agent = f'kind = "command"\ncommand = "sh {path}"\ntimeout = {timeout}'
    toml = (
        TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
        .replace('kind = "replay"\nfile = "proposals.jsonl"', agent)
        .replace('frozen = ["evaluate.py"]', 'frozen = ["evaluate.py", "prepare.py"]')
    )
    extra = {"program.md": "Lower val_loss.\n", "prepare.py": "MAX_SEQ_LEN = 256\n", **(extra_files or {})}
    return make_workspace(tmp_path / "ws", toml=toml, extra_files=extra)


def context_of(root: Path) -> Context:
    """What the loop would hand over: the committed train.py as the incumbent, some history."""
    return Context(
        files={"train.py": (root / "train.py").read_text()},
        history=[entry(1, "baseline", decision="baseline", delta=None), entry(2, "LR 0.1 -> 0.05")],
        metric_name="val_loss",
        direction="minimize",
        best=1.46,
        noise=0.002,
        program="Lower val_loss.",
        experiments_left=4,
        incumbent_commit=Workspace(root).head_commit(),
        editable=["train.py"],
    )


def command_agent(root: Path) -> CommandAgent:
    """The command agent as the session builds it: with the session's scratch checkout and runner."""
    agent = make_agent(AgentSetup(load_config(root), root, SessionTools(Workspace(root))))
    assert isinstance(agent, CommandAgent)
    return agent


def running(pid: int) -> bool:
    """Alive and not a zombie (killed children of a dead parent may wait for a reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_nightlab_run_turns_the_clis_edit_into_a_kept_experiment(tmp_path):
    seen = tmp_path / "seen"
    seen.mkdir()
    root = workspace_with(
        tmp_path,
        f'cp {CONTEXT_FILE} "{seen}/context.md"\n'
        f'cp program.md "{seen}/program.md"\n'
        f'printf "%s" "$FAKE_CLI_API_KEY" > "{seen}/key"\n'
        f"{LR_SED}\n"
        "printf 'Description: LR 0.1 -> 0.3\\nHypothesis: LR is below its optimum\\n' > NIGHTLAB_PROPOSAL.md\n",
    )
    result = nightlab(
        "run", str(root), "-n", "1", "--plain", env={"FAKE_CLI_API_KEY": "sk-cli-needs-its-own-key"}
    )
    assert result.returncode == 0, result.stderr

    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    row = dict(con.execute("SELECT * FROM experiments WHERE kind = 'candidate'").fetchone())
    con.close()
    assert (row["agent"], row["description"], row["decision"]) == ("command", "LR 0.1 -> 0.3", "keep")
    assert row["hypothesis"] == "LR is below its optimum"
    assert "+LR = 0.3" in row["diff"] and "program.md" not in row["diff"]
    meta = json.loads(row["meta_json"])
    assert meta["changed"] == ["train.py"] and "reverted" not in meta

    context = (seen / "context.md").read_text()
    assert "Edit only the editable files: train.py" in context
    assert "| 1 | baseline |" in context and "noise floor: one run's val_loss varies" in context
    assert (seen / "program.md").read_text() == "Lower val_loss.\n"
    # The CLI runs with the user's environment (its own API key); training runs never do.
    assert (seen / "key").read_text() == "sk-cli-needs-its-own-key"

    scratch = root / ".nightlab" / "worktrees" / AGENT_WORKTREE
    assert not (scratch / CONTEXT_FILE).exists() and not (scratch / "NIGHTLAB_PROPOSAL.md").exists()
    assert git(scratch, "status", "--porcelain") == ""
    assert git(root, "status", "--porcelain") == ""  # the user's tree was never touched


def test_changes_outside_the_editable_files_are_reverted_and_reported(tmp_path):
    root = workspace_with(
        tmp_path,
        f"{LR_SED}\n"
        "echo 'MAX_SEQ_LEN = 4' > prepare.py\n"
        "echo scratch > notes.txt\n"
        "echo 'thinking...'\n"
        "echo 'Description: LR up and a better evaluation'\n"
        "echo 'Hypothesis: both help'\n",
    )
    agent = command_agent(root)
    proposal = agent.propose(context_of(root))
    assert [e.path for e in proposal.edits] == ["train.py"]
    assert proposal.edits[0].search is None and "LR = 0.3" in proposal.edits[0].replace
    assert proposal.description == "LR up and a better evaluation"
    assert sorted(proposal.meta["reverted"]) == ["notes.txt", "prepare.py"]
    assert "also changed notes.txt, prepare.py" in proposal.hypothesis
    assert "reverted" in proposal.hypothesis and proposal.hypothesis.startswith("both help")
    scratch = root / ".nightlab" / "worktrees" / AGENT_WORKTREE
    assert (scratch / "prepare.py").read_text() == "MAX_SEQ_LEN = 256\n"
    assert not (scratch / "notes.txt").exists()
    assert git(root, "status", "--porcelain") == ""


def test_description_is_generated_when_the_cli_gives_none(tmp_path):
    root = workspace_with(tmp_path, f"{LR_SED}\n")
    proposal = command_agent(root).propose(context_of(root))
    assert proposal.description == "command agent: edited train.py (+1 -1 lines)"
    assert proposal.hypothesis == "" and proposal.refused is None


def test_a_runaway_hypothesis_in_the_proposal_file_is_bounded(tmp_path):
    script = f"{LR_SED}\nprintf 'Description: LR up\\nHypothesis: %s\\n' \"$(head -c 100000 /dev/zero | tr '\\0' h)\" > NIGHTLAB_PROPOSAL.md\n"
    root = workspace_with(tmp_path, script)
    proposal = command_agent(root).propose(context_of(root))
    assert proposal.description == "LR up" and len(proposal.hypothesis) <= MAX_HYPOTHESIS


def test_a_file_the_cli_left_in_another_encoding_is_refused_with_where(tmp_path):
    """A Latin-1 byte in train.py was refused by the loop as "'utf-8' codec can't encode
    character '\\udce9' ... surrogates not allowed"."""
    root = workspace_with(tmp_path, f"{LR_SED}\nsed -i 's/best at 0.3/caf\\xe9/' train.py\n")
    proposal = command_agent(root).propose(context_of(root))
    assert proposal.refused == (
        "the command left train.py (not UTF-8: byte 0xe9 on line 2); nightlab proposes UTF-8 text only"
    )
    assert "reverted" not in proposal.meta and proposal.hypothesis == ""


def test_a_hung_cli_is_killed_at_the_timeout_with_its_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    root = workspace_with(tmp_path, f"{LR_SED}\nsleep 60 &\necho $! > {pidfile}\nwait\n", timeout=1)
    agent = command_agent(root)
    started = time.monotonic()
    # A half-finished edit is not an experiment: each round is killed at 1 s and, after
    # MAX_FAILED_ROUNDS of them, the agent stops instead of proposing.
    assert agent.propose(context_of(root)) is None
    assert time.monotonic() - started < 10 * MAX_FAILED_ROUNDS
    assert "timed out after 1 s ([agent] timeout)" in agent.stop_reason()
    assert not running(int(pidfile.read_text()))  # the CLI's child went with it
    assert "LR = 0.1 " in (root / ".nightlab" / "worktrees" / AGENT_WORKTREE / "train.py").read_text()


def test_a_failing_cli_stops_the_agent_after_a_few_rounds(tmp_path):
    root = workspace_with(tmp_path, "echo 'error: ANTHROPIC_API_KEY is not set' >&2\nexit 3\n")
    agent = command_agent(root)
    context = context_of(root)
    assert agent.propose(context) is None  # failed rounds are not experiments: none is proposed
    assert (
        "failed 3 times in a row" in agent.stop_reason()
        and "ANTHROPIC_API_KEY is not set" in agent.stop_reason()
    )
    assert len(list((root / ".nightlab" / "agent").iterdir())) == MAX_FAILED_ROUNDS
    assert agent.failed()


def test_a_cli_that_exits_0_without_editing_is_a_failed_round_not_an_experiment(tmp_path):
    """aider retries a dead API for a while and then exits 0 having changed nothing."""
    root = workspace_with(tmp_path, "echo 'litellm.APIConnectionError: connection refused'\nexit 0\n")
    result = nightlab("run", str(root), "--plain", "--max-experiments", "5")
    # The baseline stands and the summary is printed; the exit says the night ended on a failure.
    assert result.returncode == 1, result.stderr
    assert "the command agent failed 3 times in a row" in " ".join(result.stdout.split())
    # Each failed round said so at once, with its log (not only the last, at the end).
    rounds = [line for line in result.stderr.splitlines() if line.startswith("command agent: round")]
    assert len(rounds) == 3 and all(
        "changed no editable file" in line and "agent.log" in line for line in rounds
    )
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    assert con.execute("SELECT COUNT(*) FROM experiments WHERE kind = 'candidate'").fetchone()[0] == 0
    con.close()


def test_aider_files_and_a_saved_brief_are_neither_edits_nor_reported(tmp_path):
    root = workspace_with(
        tmp_path,
        f"{LR_SED}\necho chat > .aider.chat.history.md\ntest ! -e CLAUDE.md || exit 9\n",
        extra_files={"CLAUDE.md": "# Working under nightlab\nuse nightlab try\n"},
    )
    proposal = command_agent(root).propose(context_of(root))
    assert proposal is not None and [e.path for e in proposal.edits] == ["train.py"]
    assert "reverted" not in proposal.meta and "CLAUDE.md" not in proposal.hypothesis


def test_a_command_is_required(tmp_path):
    root = workspace_with(tmp_path, "true\n")
    config = load_config(root)
    del config.agent.model_extra["command"]
    with pytest.raises(UserError, match=r'kind = "command" needs command'):
        make_agent(AgentSetup(config, root, SessionTools(Workspace(root))))


def test_an_edit_the_cli_committed_itself_is_still_the_proposal(tmp_path):
    root = workspace_with(
        tmp_path, f"{LR_SED}\ngit -c user.name=cli -c user.email=cli@x commit -qam 'LR up'\n"
    )
    proposal = command_agent(root).propose(context_of(root))
    assert [e.path for e in proposal.edits] == ["train.py"] and "LR = 0.3" in proposal.edits[0].replace
    assert "reverted" not in proposal.meta


@pytest.mark.parametrize(
    ("script", "left"),
    [
        ('rm train.py; ln -s "$SECRET" train.py', "train.py (leads outside the checkout, to {secret})"),
        (
            'mkdir d; ln -s "$(dirname "$SECRET")" d/out; rm train.py; ln -s d/out/key train.py',
            "train.py (leads outside the checkout, to {secret})",
        ),
        ("rm train.py; mkfifo train.py", "train.py (a FIFO, not a regular file)"),
        ("head -c 9000000 /dev/zero | tr '\\0' '#' >> train.py", "train.py (over 8 MiB)"),
    ],
    ids=["symlink-out", "folder-link-out", "fifo", "huge"],
)
def test_an_editable_file_left_as_a_link_a_fifo_or_huge_is_never_read_into_a_proposal(tmp_path, script, left):
    """train.py replaced by a link to a file outside the checkout became the proposal: the
    file's content went into the diff and the ledger (a link to /dev/zero, or a FIFO, would hang
    the harness reading it); a huge file was read, diffed and stored whole."""
    secret = tmp_path / "private" / "key"
    secret.parent.mkdir()
    secret.write_text("SECRET-CONTENT\n")
    root = workspace_with(tmp_path, script.replace("$SECRET", str(secret)))
    agent = command_agent(root)
    assert agent.propose(context_of(root)) is None  # each round failed; nothing proposed
    reason = agent.stop_reason()
    assert f"the command left {left.format(secret=secret)}; nightlab proposes regular files" in reason
    logs = "".join(p.read_text(errors="replace") for p in (root / ".nightlab").rglob("*") if p.is_file())
    assert "SECRET-CONTENT" not in logs


def test_a_file_name_that_is_not_utf8_is_shown_escaped_and_the_proposal_can_be_stored(tmp_path):
    """A file the CLI left under a name that is not UTF-8 reached the ledger as a lone surrogate:
    `nightlab run` ended in a UnicodeEncodeError traceback from sqlite (found from outside)."""
    root = workspace_with(tmp_path, f"{LR_SED}\ntouch \"$(printf 'notes\\377.txt')\"\n")
    proposal = command_agent(root).propose(context_of(root))
    assert [e.path for e in proposal.edits] == ["train.py"]
    assert proposal.meta["reverted"] == ["notes\\xff.txt"]
    json.dumps(proposal.meta, ensure_ascii=False).encode("utf-8")  # what the ledger stores
    assert "(The command also changed notes\\xff.txt, outside" in proposal.hypothesis.encode("utf-8").decode()


def test_a_proposal_file_left_as_a_link_to_dev_zero_is_not_read(tmp_path):
    """NIGHTLAB_PROPOSAL.md as a link to /dev/zero: the harness read it without end (a hang, and
    memory without bound); now only a regular file is read, and at most 64 KiB of it."""
    root = workspace_with(tmp_path, f"{LR_SED}\nln -sf /dev/zero {PROPOSAL_FILE}\n")
    proposal = command_agent(root).propose(context_of(root))
    assert proposal.description == "command agent: edited train.py (+1 -1 lines)"


def test_an_incumbent_that_is_latin1_can_be_edited_elsewhere_and_keeps_its_bytes(tmp_path):
    """A train.py in Latin-1 (with its coding line): every round was refused as "not UTF-8",
    whatever the CLI changed, since the file was compared after a lossy decoding."""
    root = workspace_with(tmp_path, "sed -i 's/^WIDTH = 64 /WIDTH = 128 /' train.py\n")
    context = context_of(root)
    train = (root / "train.py").read_bytes().replace(b"# learning rate", b"# caf\xe9 learning rate")
    (root / "train.py").write_bytes(b"# -*- coding: latin-1 -*-\n" + train)
    git(root, "commit", "-qam", "latin-1")
    context.incumbent_commit = Workspace(root).head_commit()
    context.files = {"train.py": (root / "train.py").read_bytes().decode("utf-8", "surrogateescape")}
    proposal = command_agent(root).propose(context)
    assert proposal.refused is None
    [edit] = proposal.edits
    assert "WIDTH = 128" in edit.replace and "caf\udce9 learning rate" in edit.replace
