"""The agent kinds nightlab can build, and building the configured one.

Built-in kinds are named here with the module that declares them (imported only when used);
any other module can declare more (:mod:`nightlab.plugins`): ``AGENTS.add(Kind(...))`` at run
time, or an entry point in the group ``nightlab.agents``.
"""

from __future__ import annotations

from nightlab.agents.base import Agent, AgentSetup
from nightlab.errors import UserError
from nightlab.plugins import Registry

AGENTS = Registry(
    "agent",
    builtin={
        "search": "nightlab.agents.search",
        "llm": "nightlab.agents.llm",
        "command": "nightlab.agents.command",
        "replay": "nightlab.agents.replay",
    },
    entry_point_group="nightlab.agents",
)


def make_agent(setup: AgentSetup, kind: str | None = None) -> Agent:
    """The agent ``[agent] kind`` (or ``kind``) names, built from its validated settings."""
    section = setup.config.agent
    chosen = AGENTS.get(kind or section.kind)
    agent = chosen.factory(AGENTS.settings(section, chosen.name), setup)
    if not isinstance(agent, Agent):
        raise UserError(f"the {chosen.name} agent's factory returned {type(agent).__name__}, not an Agent")
    return agent
