"""What an agent spends outside any experiment reaches the tag's record, whatever the night did
with its proposals (store/spending.py): a proposal dropped because the best moved while it was
being written, spending the agent reports itself, and a restart that must count both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_plugins import _rows, nightlab_here

from helpers import TOY_TOML, make_workspace
from nightlab.agents.base import Agent
from nightlab.agents.registry import AGENTS
from nightlab.plugins import Kind, Settings
from nightlab.types import Context, Edit, Proposal, ProposalCost

PROPOSAL_COST = ProposalCost(tokens_in=100, tokens_out=10, cost_usd=0.001, model="m")
SIDE_COST = ProposalCost(tokens_in=7, tokens_out=3, cost_usd=0.0002, model="m", attempts=0)


class SpenderSettings(Settings):
    pass


class Spender(Agent):
    """Pipelined, so it is asked while a run trains: its second proposal edits the line the
    first (kept) one changes, so it no longer applies once the first is kept, and is dropped."""

    name = "spender"
    pipelined = True
    inherited: list[ProposalCost] = []

    def __init__(self) -> None:
        self.made = 0

    def propose(self, context: Context) -> Proposal | None:
        self.made += 1
        if self.made > 3:
            return None
        new = {1: "0.3", 2: "0.2", 3: "0.5"}[self.made]
        text = context.files["train.py"]
        old = next(line for line in text.splitlines() if line.startswith("LR = "))
        return Proposal(
            description=f"LR -> {new} ({self.made})",
            edits=[Edit(path="train.py", search=old, replace=f"LR = {new}" + old[len("LR = 0.1") :])],
            cost=PROPOSAL_COST,
        )

    def unreturned_cost(self) -> ProposalCost | None:
        return SIDE_COST

    def inherit_cost(self, cost: ProposalCost) -> None:
        Spender.inherited.append(cost)


@pytest.fixture
def spender() -> object:
    AGENTS.add(Kind("spender", lambda settings, setup: Spender(), SpenderSettings, "spends"))
    Spender.inherited = []
    try:
        yield
    finally:
        AGENTS.remove("spender")


def test_dropped_proposals_and_side_spending_are_on_the_tags_record(
    tmp_path: Path, spender: None, monkeypatch, capsys
) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    toml = toml.replace('kind = "replay"\nfile = "proposals.jsonl"', 'kind = "spender"')
    root = make_workspace(tmp_path / "ws", toml=toml)
    code, output = nightlab_here(monkeypatch, capsys, "run", str(root), "--plain", "--tag", "t")
    assert code == 0, output
    said = " ".join(output.split())  # rich wraps long lines
    assert (
        "'LR -> 0.2 (2)' no longer applies: the best changed while the agent wrote it; not run, asking again"
        in said
    )
    candidates = [r for r in _rows(root) if r["kind"] == "candidate"]
    ran = [r["description"] for r in candidates]
    assert "LR -> 0.3 (1)" in ran and "LR -> 0.2 (2)" not in ran  # the second was dropped
    recorded = sum(json.loads(r["cost_json"])["tokens_in"] for r in candidates)
    assert recorded == PROPOSAL_COST.tokens_in * len(candidates)
    code, output = nightlab_here(monkeypatch, capsys, "status", str(root), "--json", "--tag", "t")
    outside = json.loads(output)["agent_cost_outside_experiments"]
    dropped = 3 - len(candidates)
    assert dropped >= 1 and outside == {
        "tokens_in": dropped * 100 + 7,
        "tokens_out": dropped * 10 + 3,
        "cost_usd": pytest.approx(dropped * 0.001 + 0.0002),
        "dropped": dropped,
    }
    # The next process counts it toward the agent's caps before it proposes anything.
    assert Spender.inherited[0] == ProposalCost(0, 0, 0.0, attempts=0)  # the first night had none
    code, output = nightlab_here(monkeypatch, capsys, "run", str(root), "--plain", "--tag", "t")
    assert code == 0, output
    last = Spender.inherited[-1]
    assert (last.tokens_in, last.tokens_out) == (outside["tokens_in"], outside["tokens_out"])
