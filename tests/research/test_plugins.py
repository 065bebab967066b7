"""Plugging in is one new module: an agent kind and a policy kind declared in this test module.

Nothing in nightlab is edited for them: this file declares each :class:`~nightlab.plugins.Kind`
(a factory and a settings model), adds it to the part's registry, writes its settings table in
nightlab.toml (``[agent.tiny]``, ``[policy.first_ok]``), and runs ``nightlab run`` end to end
through the real entry point, in this process (so the registration is seen).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import Field

from helpers import TOY_TOML, make_workspace
from nightlab.agents.base import Agent, AgentSetup
from nightlab.agents.registry import AGENTS
from nightlab.cli.app import main
from nightlab.code.knobs import knob_values, set_knobs
from nightlab.plugins import Kind, Settings
from nightlab.research.policy import POLICIES, Decision, Evidence, Policy
from nightlab.types import Context, Edit, HistoryEntry, Proposal


# -- a tiny agent: walks one knob in fixed steps ----------------------------------------------
class TinySettings(Settings):
    knob: str = "LR"
    step: float = Field(default=0.1, gt=0)
    moves: int = Field(default=3, ge=1)


class TinyAgent(Agent):
    name = "tiny"

    def __init__(self, settings: TinySettings) -> None:
        self.settings = settings
        self.seen: list[int] = []

    def propose(self, context: Context) -> Proposal | None:
        if len(self.seen) >= self.settings.moves + 1:  # the baseline, then `moves` proposals
            return None
        knob, text = self.settings.knob, context.files["train.py"]
        old = knob_values(text)[knob]
        new = round(old + self.settings.step, 6)
        return Proposal(
            description=f"{knob} {old} -> {new}",
            hypothesis=f"a step of {self.settings.step}",
            edits=[Edit(path="train.py", replace=set_knobs(text, {knob: new}, "train.py"))],
        )

    def observe(self, entry: HistoryEntry) -> None:
        if entry.id not in self.seen:
            self.seen.append(entry.id)


def _make_tiny(settings: TinySettings, setup: AgentSetup) -> Agent:
    return TinyAgent(settings)


# -- a tiny policy: keep whatever beats the incumbent's mean by a set margin --------------------
class MarginSettings(Settings):
    margin: float = 0.0


class MarginPolicy(Policy):
    name = "margin"

    def __init__(self, margin: float) -> None:
        self.margin = margin

    def decide(self, evidence: Evidence) -> Decision:
        candidate, incumbent = evidence.scores()
        gain = sum(candidate) / len(candidate) - sum(incumbent) / len(incumbent)
        action = "keep" if gain > self.margin else "discard"
        return Decision(action, f"gain {gain:+.4f} against a margin of {self.margin:g}", gain, None, None)


@pytest.fixture
def registered() -> Iterator[None]:
    AGENTS.add(Kind("tiny", _make_tiny, TinySettings, "walks one knob"))
    POLICIES.add(Kind("margin", lambda settings, section: MarginPolicy(settings.margin), MarginSettings))
    try:
        yield
    finally:
        AGENTS.remove("tiny")
        POLICIES.remove("margin")


def _workspace(tmp_path: Path, agent_table: str, policy: str = "confirm", policy_table: str = "") -> Path:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy=policy)
    toml = toml.replace('kind = "replay"\nfile = "proposals.jsonl"', 'kind = "tiny"')
    toml += f"\n[agent.tiny]\n{agent_table}\n"
    if policy_table:
        toml += f"\n[policy.{policy}]\n{policy_table}\n"
    return make_workspace(tmp_path / "ws", toml=toml)


def nightlab_here(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str
) -> tuple[int, str]:
    """``nightlab ARGS`` through the real entry point, in this process: (exit code, output)."""
    monkeypatch.setattr(sys, "argv", ["nightlab", *args])
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _rows(root: Path) -> list[dict]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM experiments ORDER BY id")]
    con.close()
    return rows


def test_an_agent_kind_from_this_module_runs_end_to_end(
    tmp_path: Path, registered: None, monkeypatch, capsys
) -> None:
    root = _workspace(tmp_path, "step = 0.1\nmoves = 3", policy="margin", policy_table="margin = 0.01")
    code, output = nightlab_here(monkeypatch, capsys, "run", str(root), "--plain", "--tag", "t")
    assert code == 0, output
    assert "the tiny agent has nothing left to propose" in output
    rows = _rows(root)
    candidates = [r for r in rows if r["kind"] == "candidate"]
    # LR 0.1 -> 0.2 -> 0.3 gain (the toy's optimum is 0.3), 0.3 -> 0.4 loses: the policy keeps
    # the first two and discards the third, with its own reasons.
    assert [(r["agent"], r["description"], r["decision"]) for r in candidates] == [
        ("tiny", "LR 0.1 -> 0.2", "keep"),
        ("tiny", "LR 0.2 -> 0.3", "keep"),
        ("tiny", "LR 0.3 -> 0.4", "discard"),
    ]
    assert all("against a margin of 0.01" in r["reason"] for r in candidates)
    assert json.loads(candidates[0]["proposal_json"])["hypothesis"] == "a step of 0.1"
    assert "LR 0.2 -> 0.3" in (root / ".nightlab" / "results.tsv").read_text()


def test_the_kind_table_is_validated_like_the_rest_of_nightlab_toml(
    tmp_path: Path, registered: None, monkeypatch, capsys
) -> None:
    root = _workspace(tmp_path, "step = -1")
    code, output = nightlab_here(monkeypatch, capsys, "run", str(root), "--plain", "--tag", "t")
    assert code == 2
    assert output.strip() == "error: nightlab.toml: [agent.tiny] step: Input should be greater than 0"
    root = _workspace(tmp_path / "b", "stepp = 0.2")
    code, output = nightlab_here(monkeypatch, capsys, "run", str(root), "--plain", "--tag", "t")
    assert code == 2 and output.strip() == (
        "error: nightlab.toml: unknown key 'stepp' in [agent.tiny] (did you mean 'step'?)"
    )
    root = _workspace(tmp_path / "c", "step = 0.1", policy="margin", policy_table="margin = 'wide'")
    code, output = nightlab_here(monkeypatch, capsys, "run", str(root), "--plain", "--tag", "t")
    assert code == 2 and "[policy.margin] margin: Input should be a valid number" in output
    assert not (root / ".nightlab" / "runs").exists()  # nothing ran


def test_an_unknown_kind_names_the_known_ones(tmp_path: Path, monkeypatch, capsys) -> None:
    root = _workspace(tmp_path, "step = 0.1")  # no fixture: "tiny" is not registered here
    code, output = nightlab_here(monkeypatch, capsys, "run", str(root), "--plain", "--tag", "t")
    assert code == 2
    assert "[agent] kind 'tiny' is not one of command, llm, replay, search" in output
