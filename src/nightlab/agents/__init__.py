"""Research agents: anything that turns the history so far into the next proposal."""

from nightlab.agents.base import Agent, Context, Edit, HistoryEntry, Proposal

__all__ = ["Agent", "Context", "Edit", "HistoryEntry", "Proposal"]
