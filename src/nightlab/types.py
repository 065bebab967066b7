"""The shared words of nightlab: what agents, the loop, executors, the ledger and reports pass around.

This module imports nothing from nightlab, so any part may use it without pulling in another
part: the ledger stores a :class:`RunResult` without importing an executor, an edit is checked
without importing an agent, a report compares :class:`MetricValue` objects without knowing the
policy.

- :class:`Direction` and :class:`MetricValue`: a metric that knows which way is better, so no
  caller flips signs by hand (``max(values)`` is the best, whatever the direction).
- :class:`Edit`, :class:`Proposal`: what an agent wants tried.
- :class:`HistoryEntry`, :class:`Context`: what an agent may know when it proposes.
- :class:`RunSpec`, :class:`RunResult`, :class:`RunStatus`: one command to run, and how it went.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path


# -- metrics ----------------------------------------------------------------------------------
class Direction(str, Enum):
    """Which way a metric improves; the one place that knows what "better" means."""

    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"

    @property
    def sign(self) -> float:
        """+1 where larger is better, -1 where smaller is: ``sign * (a - b) > 0`` means a beats b."""
        return 1.0 if self is Direction.MAXIMIZE else -1.0

    @property
    def worst(self) -> float:
        return -math.inf if self is Direction.MAXIMIZE else math.inf

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b``."""
        return self.sign * (a - b) > 0

    def improvement(self, candidate: float, incumbent: float) -> float:
        """How much better ``candidate`` is than ``incumbent``, positive when better."""
        return self.sign * (candidate - incumbent)

    def scores(self, values: list[float]) -> list[float]:
        """``values`` turned into larger-is-better scores (the metric itself when maximised)."""
        return [self.sign * v for v in values]

    def of(self, number: float | None) -> MetricValue:
        """``number`` as a :class:`MetricValue` of this direction (None is the worst value)."""
        return MetricValue(number, self)


@functools.total_ordering
@dataclass(frozen=True)
class MetricValue:
    """A metric value that knows which way is better: ``a > b`` means *a is better than b*.

    ``None`` (a crash, no result) is worse than any number, so ``max(values)`` is the best and
    ``sorted(values)[-1]`` too, whichever way the metric goes. Only values of the same direction
    compare.
    """

    number: float | None
    direction: Direction = Direction.MINIMIZE

    def gain_over(self, other: MetricValue) -> float | None:
        """How much better this value is than ``other`` (positive when better); None when either is."""
        if self.number is None or other.number is None:
            return None
        return self.direction.improvement(self.number, other.number)

    def _score(self) -> float:
        if self.number is None or self.number != self.number:  # None and NaN are the worst
            return -math.inf
        return self.direction.sign * self.number

    def _check(self, other: object) -> MetricValue:
        if not isinstance(other, MetricValue):
            return NotImplemented  # type: ignore[return-value]
        if other.direction is not self.direction:
            raise ValueError("cannot compare a minimised metric with a maximised one")
        return other

    def __lt__(self, other: object) -> bool:
        checked = self._check(other)
        if checked is NotImplemented:
            return NotImplemented
        return self._score() < checked._score()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetricValue):
            return NotImplemented
        return self.direction is other.direction and self._score() == other._score()

    def __hash__(self) -> int:
        return hash((self.direction, self._score()))


# -- proposals --------------------------------------------------------------------------------
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
class ProposalCost:
    """What making a proposal cost (an LLM's tokens and dollars), kept in the ledger's cost column."""

    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    model: str = ""
    attempts: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Proposal:
    """What an agent wants tried: edits plus a one-line description and a hypothesis.

    ``refused`` is set by an agent that could not make a usable proposal but wants the attempt on
    record (the ledger shows it as ``invalid`` with this reason; nothing runs). ``lessons`` are
    one-line lessons the agent drew from earlier experiments (experiment id -> text), stored with
    those experiments. ``meta`` is free-form agent data kept in the ledger (the search agent's
    knob values, an LLM's proposal id); it must be JSON-serialisable.
    """

    description: str
    edits: list[Edit]
    hypothesis: str = ""
    meta: dict = field(default_factory=dict)
    refused: str | None = None
    lessons: dict[int, str] = field(default_factory=dict)
    cost: ProposalCost | None = None

    def to_dict(self) -> dict:
        """The whole proposal as the ledger keeps it (JSON-ready; lesson ids become strings)."""
        return {
            "description": self.description,
            "hypothesis": self.hypothesis,
            "edits": [e.to_dict() for e in self.edits],
            "meta": self.meta,
            "refused": self.refused,
            "lessons": {str(k): v for k, v in self.lessons.items()},
            "cost": self.cost.to_dict() if self.cost else None,
        }


@dataclass
class HistoryEntry:
    """One finished experiment as agents see it (never the holdout metric)."""

    id: int
    description: str
    status: str  # ok | crash | timeout | oom | nan | invalid | skipped
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
    cost: dict = field(default_factory=dict)  # what its proposal cost (ProposalCost as a dict)


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
    direction: Direction
    best: float | None
    noise: float | None
    program: str = ""  # program.md, the human's research instructions
    frozen_files: dict[str, str] = field(default_factory=dict)
    experiments_left: int | None = None
    seconds_left: float | None = None
    incumbent_commit: str = ""
    # The editable and frozen globs from nightlab.toml, so agents can check edits before proposing.
    editable: list[str] = field(default_factory=lambda: ["*"])
    frozen: list[str] = field(default_factory=list)
    # Experiments proposed and not yet decided (running in other slots), oldest first: status
    # "running", no metric yet. Not to be proposed again.
    running: list[HistoryEntry] = field(default_factory=list)


# -- runs -------------------------------------------------------------------------------------
# The log files of a replicate in its run directory: training's, and the separate evaluation's.
TRAIN_LOG = "run.log"
EVAL_LOG = "eval.log"


class RunStatus(str, Enum):
    OK = "ok"
    CRASH = "crash"
    TIMEOUT = "timeout"
    OOM = "oom"
    NAN = "nan"
    INVALID = "invalid"
    PRUNED = "pruned"  # stopped early: its curve was hopeless against the incumbent's

    @property
    def failed(self) -> bool:
        return self is not RunStatus.OK


@dataclass
class RunSpec:
    """Everything needed to run one command (a replicate's training or evaluation, a coding CLI).

    ``command`` runs in ``cwd`` (the experiment's worktree) with ``env`` added on top of the
    scrubbed parent environment. ``run_dir`` receives the log and whatever the script writes.
    """

    command: str
    cwd: Path
    run_dir: Path
    seed: int
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    log_name: str = TRAIN_LOG
    # Names of secret-looking variables the user allows through (e.g. "WANDB_API_KEY").
    allow_env: list[str] = field(default_factory=list)
    # Slot resources, e.g. {"CUDA_VISIBLE_DEVICES": "0"}; the executor sets these.
    slot_env: dict[str, str] = field(default_factory=dict)
    # Asked while the command runs (a few times a second): a reason to stop it early, recorded
    # as ``pruned`` with that reason, or None to let it go on (the pruner watching its progress).
    stop_when: Callable[[], str | None] | None = field(default=None, compare=False, repr=False)


@dataclass
class RunResult:
    """How one command went. ``metrics`` holds every number read (metric, holdout, extras)."""

    status: RunStatus
    metrics: dict[str, float] = field(default_factory=dict)
    training_seconds: float | None = None
    total_seconds: float = 0.0
    peak_memory_mb: float | None = None
    log_tail: str = ""
    seed: int = 0
    exit_code: int | None = None
    reason: str = ""  # why the status is what it is, one line ("killed after 180 s timeout")
    log_path: str | None = None
    # The command as it ran: ``{flags:FILE}`` expanded, without the sandbox's wrapper.
    command: str = ""
    # Progress points while it trained (research.progress.Point as dicts), oldest first.
    progress: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RunResult:
        data = dict(data)
        data["status"] = RunStatus(data["status"])
        return cls(**data)
