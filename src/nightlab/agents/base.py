"""The agent interface: :class:`~nightlab.types.Context` in, :class:`~nightlab.types.Proposal` out.

An agent never touches git, runs anything on its own or decides what is kept: the loop does.
That keeps a new agent (an LLM, a coding CLI, a search strategy) to one small module: a subclass
of :class:`Agent` that implements :meth:`Agent.propose`, plus whichever optional hooks it needs
(each has a do-nothing default and says when the loop calls it), declared as a
:class:`~nightlab.plugins.Kind` in its module's ``KINDS``.

An agent that edits files itself (a coding CLI) gets what it needs from the session through
:class:`AgentSetup`: :class:`AgentTools` lends it a scratch checkout and runs a process with a
timeout, so the agent imports neither the executor nor git.

Example, an agent that always proposes the same edit::

    class Doubler(Agent):
        name = "doubler"

        def propose(self, context: Context) -> Proposal | None:
            return Proposal(
                description="LR 0.01 -> 0.02",
                hypothesis="the baseline LR is too low",
                edits=[Edit(path="train.py", search="LR = 0.01", replace="LR = 0.02")],
            )

    KINDS = (Kind("doubler", lambda settings, setup: Doubler()),)
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nightlab.config import Config
from nightlab.types import Context, HistoryEntry, Proposal, ProposalCost, RunResult, RunSpec

# The longest hypothesis an agent hands the loop: the ledger, `status --json`, the lessons call
# and later prompts carry it, and one runaway answer must not make them all grow without bound.
MAX_HYPOTHESIS = 2000


def bounded_hypothesis(text: str) -> str:
    """``text`` stripped, and cut to :data:`MAX_HYPOTHESIS` characters (marked) when longer."""
    text = text.strip()
    if len(text) <= MAX_HYPOTHESIS:
        return text
    return text[: MAX_HYPOTHESIS - 4].rstrip() + " ..."


class Agent(ABC):
    """Proposes experiments. ``propose`` returns None when it has nothing left to try.

    The session calls :meth:`check` before anything runs. The loop calls, in this order:
    :meth:`observe` for every experiment already in the ledger
    (a resumed session rebuilds the agent's state this way), then :meth:`propose` and
    :meth:`observe` in turn for each new experiment, :meth:`stop_reason` when ``propose``
    returned None, and :meth:`final_lessons` once when the session stops.
    """

    #: The name recorded in the ledger as the experiment's agent.
    name: str = "agent"
    #: True when :meth:`propose` may be called while another experiment trains (with a context
    #: that does not know that experiment's result yet). Slow agents (LLMs) set it so the
    #: hardware does not idle while they think; an agent whose proposals are whole files must
    #: not, or a proposal could silently undo a change kept in the meantime.
    pipelined: bool = False

    @abstractmethod
    def propose(self, context: Context) -> Proposal | None:
        """The next experiment against ``context``'s incumbent, or None when out of ideas."""

    def check(self, files: dict[str, str]) -> None:  # noqa: B027 - an optional hook
        """Called once before the baseline runs, with the start commit's editable files: raise a
        :class:`~nightlab.errors.UserError` saying what to change when this agent cannot work
        on them (a search agent that finds nothing to search), so no night starts in vain."""

    def observe(self, entry: HistoryEntry) -> None:  # noqa: B027 - an optional hook
        """Called once per finished experiment (its own or, after a restart, past ones); may be
        called again for the same id, so it must be idempotent."""

    def stop_reason(self) -> str | None:
        """Why :meth:`propose` returned None, in one line (a cap reached, the API gone); None
        means it simply has nothing left to propose."""
        return None

    def failed(self) -> bool:
        """Whether that stop is a failure (the API gone, its CLI failing round after round) rather
        than an end the user set (a cap) or ran into (nothing left): ``nightlab run`` then exits
        non-zero, so a script running it can tell."""
        return False

    def interrupt(self) -> None:  # noqa: B027 - an optional hook
        """Called from the loop's thread when nightlab stops at once (Ctrl-C, SIGTERM, an error)
        while :meth:`propose` may still be running on the desk's thread: stop what it runs (a
        coding CLI and its processes) so the process can exit now rather than at its timeout.
        ``propose`` may then raise; it is never called again. Must be quick and thread-safe."""

    def final_lessons(self) -> dict[int, str]:
        """Called once when the session stops: lessons still owed (experiment id -> one line),
        e.g. about the last experiment, which no later proposal could carry."""
        return {}

    def unreturned_cost(self) -> ProposalCost | None:
        """Spending no returned proposal carries, since the last call: a conversation that ended
        without a proposal (a cap reached in it, the request abandoned at Ctrl-C) and the final
        lessons. The loop adds it to the tag's record, so the morning's cost is the whole bill."""
        return None

    def inherit_cost(self, cost: ProposalCost) -> None:  # noqa: B027 - an optional hook
        """After a restart: what earlier processes spent outside any experiment (the tag's
        record), which counts toward this agent's caps as the experiments' own costs do."""


class Scratch(Protocol):
    """A checkout of one commit lent to an agent that edits files itself (a coding CLI)."""

    path: Path

    def changed(self) -> list[str]:
        """Files changed, created or deleted since the checkout (relative POSIX paths)."""
        ...

    def reset(self, keep: Path) -> list[str]:
        """Back to the commit: every change undone, every new file removed. Also undoes, where
        safe, what the round did outside the checkout (a branch it created, a file it wrote in
        the user's checkout; a changed file is moved under ``keep`` first) and returns one line
        per such thing, undone or not."""
        ...


class AgentTools(Protocol):
    """What the session lends an agent that needs more than the context."""

    def scratch(self, commit: str) -> Scratch:
        """The agent's own checkout of ``commit`` (never the user's tree, never a run's)."""
        ...

    def run(self, spec: RunSpec, stop: threading.Event | None = None) -> RunResult:
        """Run a command to its end or its timeout; its whole process tree is killed either way.
        Setting ``stop`` kills it at once, and ``run`` then raises instead of returning."""
        ...

    def log_dir(self) -> Path:
        """Where the agent keeps its logs (under .nightlab/)."""
        ...


@dataclass
class AgentSetup:
    """What an agent's factory receives besides its own settings."""

    config: Config
    root: Path
    tools: AgentTools | None = None
