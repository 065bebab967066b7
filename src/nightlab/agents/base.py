"""The agent interface: :class:`Context` in, :class:`Proposal` out.

An agent never touches git, runs anything or decides what is kept: the loop does. That keeps a
new agent (an LLM, a coding CLI, a search strategy) to one small module.

Example, an agent that always proposes the same edit::

    class Doubler:
        name = "doubler"
        def propose(self, context: Context) -> Proposal | None:
            return Proposal(
                description="LR 0.01 -> 0.02",
                hypothesis="the baseline LR is too low",
                edits=[Edit(path="train.py", search="LR = 0.01", replace="LR = 0.02")],
            )
        def observe(self, entry: HistoryEntry) -> None:
            pass
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class Edit:
    """One change to one editable file.

    Either a SEARCH/REPLACE pair (``search`` must occur exactly once in the file) or, with
    ``search`` left as None, a whole-file replacement by ``replace``.
    """

    path: str
    replace: str
    search: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Proposal:
    """What an agent wants tried: edits plus a one-line description and a hypothesis."""

    description: str
    edits: list[Edit]
    hypothesis: str = ""
    # Free-form agent data kept in the ledger (e.g. the search agent's parameter values,
    # an LLM's token counts and cost); must be JSON-serialisable.
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "description": self.description,
            "hypothesis": self.hypothesis,
            "edits": [e.to_dict() for e in self.edits],
            "meta": self.meta,
        }


@dataclass
class HistoryEntry:
    """One finished experiment as agents see it (never the holdout metric)."""

    id: int
    description: str
    status: str  # ok | crash | timeout | oom | nan | invalid
    decision: str  # keep | discard | invalid | crash | baseline
    reason: str
    metric: float | None  # mean over replicates
    spread: float | None  # standard error of the mean
    runs: int
    delta: float | None  # improvement over the incumbent at decision time, positive = better
    diff: str = ""
    hypothesis: str = ""
    log_tail: str = ""
    meta: dict = field(default_factory=dict)
    lesson: str = ""


@dataclass
class Context:
    """What an agent may know when it proposes.

    ``files`` are the incumbent's editable files (path -> text). ``frozen_files`` are read-only
    interfaces the script uses (e.g. prepare.py), for agents that read code. ``history`` is every
    finished experiment, oldest first. ``noise`` is the measured standard deviation of one run's
    metric (None until measured).
    """

    files: dict[str, str]
    history: list[HistoryEntry]
    metric_name: str
    direction: str  # "minimize" | "maximize"
    best: float | None
    noise: float | None
    program: str = ""  # program.md, the human's research instructions
    frozen_files: dict[str, str] = field(default_factory=dict)
    experiments_left: int | None = None
    seconds_left: float | None = None
    incumbent_commit: str = ""
    # The editable globs from nightlab.toml, so agents can check edits before proposing them.
    editable: list[str] = field(default_factory=lambda: ["*"])


@runtime_checkable
class Agent(Protocol):
    """Proposes experiments. ``propose`` returns None when it has nothing left to try."""

    name: str

    def propose(self, context: Context) -> Proposal | None: ...

    def observe(self, entry: HistoryEntry) -> None:
        """Told about every finished experiment (its own or, after a restart, past ones)."""
        ...
