"""The LLM agent: a prompt built from the context, a chat model behind the official SDKs, and the
parsing of its answer into edits.

Declared here, with its light settings model; the SDKs are imported when an agent is built.
"""

from __future__ import annotations

from nightlab.agents.base import Agent, AgentSetup
from nightlab.agents.llm.settings import LLMSettings
from nightlab.plugins import Kind


def _make(settings: LLMSettings, setup: AgentSetup) -> Agent:
    from nightlab.agents.llm.agent import LLMAgent

    return LLMAgent(settings)


KINDS = (Kind("llm", _make, LLMSettings, "any OpenAI-compatible server or Anthropic"),)
