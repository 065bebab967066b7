"""Build the configured agent. One line per kind: a new agent is one new entry here."""

from __future__ import annotations

from pathlib import Path

from nightlab.agents.base import Agent
from nightlab.config import Config
from nightlab.errors import UserError

KINDS = ("replay", "search", "llm", "command")


def make_agent(config: Config, root: Path) -> Agent:
    """The agent named by ``[agent] kind`` (or ``--agent``), configured from ``[agent]``."""
    kind = config.agent.kind
    if kind == "replay":
        from nightlab.agents.replay import ReplayAgent

        if not config.agent.file:
            raise UserError('nightlab.toml: [agent] kind = "replay" needs file = "proposals.jsonl"')
        return ReplayAgent(root / config.agent.file)
    if kind == "search":
        from nightlab.agents.search.agent import SearchAgent

        return SearchAgent(config)
    if kind == "llm":
        from nightlab.agents.llm.agent import LLMAgent

        return LLMAgent(config)
    if kind == "command":
        from nightlab.agents.command import CommandAgent

        return CommandAgent(config, root)
    raise UserError(f"nightlab.toml: [agent] kind '{kind}' is not one of {', '.join(KINDS)}")
