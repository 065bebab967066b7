"""Research agents: anything that turns the history so far into the next proposal.

A new agent is one module: a subclass of :class:`~nightlab.agents.base.Agent` registered with
its factory and settings model (:mod:`nightlab.agents.registry`).
"""
