"""The offline search agent: knobs found in the code, a domain for each, and a Gaussian-process
model of the results so far that ranks the next move.

Declared here, with its light settings model, so that checking nightlab.toml does not import
numpy and scipy; the agent itself is imported when one is built.
"""

from __future__ import annotations

from nightlab.agents.base import Agent, AgentSetup
from nightlab.agents.search.settings import SearchSettings
from nightlab.plugins import Kind


def _make(settings: SearchSettings, setup: AgentSetup) -> Agent:
    from nightlab.agents.search.agent import SearchAgent

    return SearchAgent(settings, command=setup.config.target.run)


KINDS = (Kind("search", _make, SearchSettings, "knob search guided by a Gaussian process (no API key)"),)
