"""The agent's desk: proposals are made on a thread of their own while slots train.

An agent is not thread-safe, and a slow one (an LLM, a coding CLI) thinks for a minute: the
loop must keep recording results and starting runs meanwhile. So the agent is only ever
called on the desk's one thread. Results that arrive while it thinks are queued and handed to
it (``observe``) on that thread just before its next proposal, which is when it needs them.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from nightlab.agents.base import Agent
from nightlab.types import Context, HistoryEntry, Proposal, ProposalCost


class AgentDesk:
    """Wraps ``agent``: :meth:`ask` starts a proposal in the background, :meth:`observe` queues.

    The loop's recorder talks to the desk as it would to the agent (``observe``, ``name``), so
    one agent object is never entered by two threads at once.
    """

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.name = agent.name
        self.pipelined = agent.pipelined
        self._pending: list[HistoryEntry] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nightlab-propose")
        self.asked: Future[Proposal | None] | None = None
        # The incumbent commit the proposal in progress was asked against.
        self.asked_against = ""

    def observe(self, entry: HistoryEntry) -> None:
        """Queue a finished experiment for the agent; it hears of it before its next proposal."""
        with self._lock:
            self._pending.append(entry)

    def ask(self, context: Context) -> None:
        """Start a proposal against ``context`` (one at a time)."""
        if self.asked is not None:
            raise RuntimeError("the agent is already proposing")
        self.asked_against = context.incumbent_commit
        self.asked = self._pool.submit(self._propose, context)

    def take(self) -> Proposal | None:
        """The finished proposal (raises what the agent raised); the desk is free again."""
        if self.asked is None:
            raise RuntimeError("nothing was asked")
        asked, self.asked = self.asked, None
        return asked.result()

    @property
    def busy(self) -> bool:
        return self.asked is not None

    @property
    def ready(self) -> bool:
        return self.asked is not None and self.asked.done()

    def propose_now(self, context: Context) -> Proposal | None:
        """Ask and wait (``nightlab try`` and the first proposal need no pipeline)."""
        self.ask(context)
        assert self.asked is not None
        self.asked.exception()  # wait
        return self.take()

    def _propose(self, context: Context) -> Proposal | None:
        self.flush()
        return self.agent.propose(context)

    def flush(self) -> None:
        """Hand the queued results to the agent (on the calling thread: the desk's, or the
        loop's once no proposal is in progress)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for entry in pending:
            self.agent.observe(entry)

    def interrupt(self) -> None:
        """nightlab is stopping at once: the agent stops what its proposal in progress runs (a
        coding CLI), so the process is not kept alive by the desk's thread until it ends."""
        if self.asked is not None and not self.asked.done():
            self.agent.interrupt()

    def unreturned_cost(self, timeout: float = 2.0) -> ProposalCost | None:
        """The agent's spending no proposal carries (``Agent.unreturned_cost``), once a proposal
        in progress has had a moment to end (an interrupted one ends at once)."""
        if self.asked is not None and not self.asked.done():
            with contextlib.suppress(Exception):
                self.asked.exception(timeout=timeout)
        unreturned = getattr(self.agent, "unreturned_cost", None)  # a plugin written before the hook
        return unreturned() if unreturned is not None else None

    def close(self) -> None:
        """Stop waiting for a proposal in progress (it finishes on its own) and deliver the queue."""
        if self.asked is not None:
            self.asked.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.asked is None or self.asked.done():
            self.flush()
