"""Early stopping: a run whose curve is hopeless is stopped at a checkpoint, with its evidence.

At checkpoints (``[policy] prune_at``, shares of the budget) a :class:`Pruner` compares the
run's progress so far with curves already measured (:class:`PruneSetup`) and may stop it; the
run is then recorded as ``pruned``, never used as a measurement of the final metric.

The default rule, ``incumbent``, compares with the incumbent's curve at the same share of the
budget and stops a run worse by more than the noise allows there: more than a one-sided t
quantile (``prune_confidence``, with the noise floor's degrees of freedom) times the noise sd
times sqrt(1 + 1/n), n being the number of the incumbent's curves. The noise sd at a
checkpoint is the larger of the spread of the incumbent's curves there and the noise floor of
final values: early points are noisier than final ones, so the floor alone would prune too
eagerly. Curves cross, though: on the cpu template a model twice as wide was behind the
incumbent by far more than the noise at a quarter of its budget, then ended ahead and was kept. So the rule
also asks what Optuna's MedianPruner asks: that the run be worse than the median of every
finished experiment at that point (once ``[pruner.incumbent] startup`` have finished there).
Behind the incumbent by more than the noise and behind most of what was tried is hopeless;
behind the incumbent alone is not. A candidate near the incumbent, the one that may be kept,
runs to the end. The anchors it was compared with (``median``, ``halving``) are in
:mod:`nightlab.research.prune_rules` (docs/BENCHMARKS.md has the comparison).

Never pruned: the baseline's runs, any replicate but a candidate's first (confirmation runs of
a promising candidate are not stopped on a worse start alone), and runs of a target whose
incumbent left no curve.

A new rule is a :class:`~nightlab.plugins.Kind` in ``PRUNERS`` (``[policy] pruner = "NAME"``,
or an installed package's ``nightlab.pruners`` entry point), built from a :class:`PruneSetup`.
"""

from __future__ import annotations

import math
import statistics
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pydantic import Field

from nightlab.config import Config
from nightlab.plugins import Kind, Registry, Settings
from nightlab.research.progress import Point, value_at
from nightlab.stats import NoiseEstimate, noise_floor, sample_sd, t_quantile
from nightlab.store.ledger import Ledger
from nightlab.store.schema import ExperimentRow
from nightlab.types import Direction


@dataclass
class PruneSetup:
    """What a pruner may compare a run with, gathered once before the run starts.

    ``reference`` holds the incumbent's curves (one per replicate), ``others`` one curve per
    finished experiment of the session (the baseline and the candidates whose first run trained
    to the end), ``floor`` the noise floor of final values.
    """

    reference: list[list[Point]]
    direction: Direction
    checkpoints: list[float]
    confidence: float = 0.99
    floor: NoiseEstimate | None = None
    metric_name: str = "metric"
    others: list[list[Point]] = field(default_factory=list)


class Pruner(ABC):
    """Decides, from a run's progress so far, whether to stop it.

    ``evidence`` holds, once it has stopped a run, what the ledger records about it (JSON-able):
    ``at`` (the budget share), ``value`` (the run's metric there), ``incumbent`` (what it was
    compared with there), ``margin`` (how much worse was allowed) and ``gap`` (how much worse
    it was).
    """

    evidence: dict | None = None

    @abstractmethod
    def should_stop(self, points: list[Point]) -> str | None:
        """A one-line reason to stop the run now (its evidence), or None to let it go on."""


class CheckpointPruner(Pruner):
    """Judges a run once at each checkpoint it passes; a rule implements :meth:`judge`."""

    def __init__(self, setup: PruneSetup) -> None:
        self.setup = setup
        self.checkpoints = sorted(setup.checkpoints)
        self._judged: set[float] = set()

    def should_stop(self, points: list[Point]) -> str | None:
        if not points:
            return None
        reached = points[-1].x
        for checkpoint in self.checkpoints:
            if checkpoint > reached or checkpoint in self._judged:
                continue
            self._judged.add(checkpoint)  # each checkpoint is judged once, when first passed
            mine = value_at(points, checkpoint)
            found = None if mine is None else self.judge(mine, checkpoint)
            if found is not None:
                self.evidence = {"at": checkpoint, "value": mine, **found}
                return self.reason(self.evidence)
        return None

    @abstractmethod
    def judge(self, mine: float, checkpoint: float) -> dict | None:
        """Evidence to stop (``incumbent``, ``margin``, ``gap`` and any more) or None."""

    def reason(self, evidence: dict) -> str:
        """The one line the ledger and the agent read."""
        return (
            f"at {evidence['at']:.0%} of the budget {self.setup.metric_name} was {evidence['value']:.4g} "
            f"against the incumbent's {evidence['incumbent']:.4g} there, worse by {evidence['gap']:.3g}, "
            f"more than the {evidence['margin']:.3g} the noise allows ({self.setup.confidence:.0%})"
        )


class IncumbentSettings(Settings):
    # Finished experiments needed at a checkpoint before anything is stopped there (Optuna's
    # n_startup_trials): the guard against curves that cross needs to know where runs stand.
    startup: int = Field(default=5, ge=1)


class IncumbentCurvePruner(CheckpointPruner):
    """Stops a run whose curve is worse than the incumbent's by more than the noise allows, and
    worse than the median of the finished experiments at the same point."""

    def __init__(self, setup: PruneSetup, startup: int = 5) -> None:
        super().__init__(setup)
        self.reference = [curve for curve in setup.reference if curve]
        self.startup = startup

    def margin(self, checkpoint: float) -> tuple[float, float] | None:
        """(the incumbent's value at ``checkpoint``, the margin a candidate may be worse by)."""
        values = [v for v in (value_at(curve, checkpoint) for curve in self.reference) if v is not None]
        if not values:
            return None
        floor = self.setup.floor
        sd = max(sample_sd(values) or 0.0, floor.sd if floor is not None else 0.0)
        if sd <= 0:
            return None  # no measured noise: nothing says how far is too far
        df = max(1, floor.df if floor is not None else len(values) - 1)
        quantile = t_quantile(self.setup.confidence, df)
        return sum(values) / len(values), quantile * sd * math.sqrt(1 + 1 / len(values))

    def judge(self, mine: float, checkpoint: float) -> dict | None:
        reference = self.margin(checkpoint)
        if reference is None:
            return None
        theirs, margin = reference
        gap = self.setup.direction.improvement(theirs, mine)  # > 0: the run is worse
        if gap <= margin:
            return None
        # Curves cross: a wider model or a slower schedule starts behind and ends ahead, by far
        # more than the noise (measured on the cpu template, docs/BENCHMARKS.md). A run is
        # only stopped while it is also behind the median of the finished experiments there, most
        # of which the incumbent beat: behind the incumbent alone is not hopeless.
        values = [v for v in (value_at(c, checkpoint) for c in self.setup.others) if v is not None]
        if len(values) < self.startup:
            return None
        median = statistics.median(values)
        if self.setup.direction.improvement(median, mine) <= 0:
            return None
        return {
            "incumbent": theirs,
            "margin": margin,
            "gap": gap,
            "median": median,
            "experiments": len(values),
        }

    def reason(self, evidence: dict) -> str:
        text = super().reason(evidence)
        if "median" not in evidence:
            return text
        return (
            f"{text}, and worse than the median {evidence['median']:.4g} of the "
            f"{evidence['experiments']} finished experiments there"
        )


PRUNERS = Registry(
    "pruner",
    {
        "incumbent": __name__,
        "median": "nightlab.research.prune_rules",
        "halving": "nightlab.research.prune_rules",
    },
    "nightlab.pruners",
)

KINDS = (
    Kind(
        "incumbent",
        lambda settings, setup: IncumbentCurvePruner(setup, settings.startup),
        IncumbentSettings,
        "stop a run worse than the incumbent's curve by more than the noise allows (default)",
    ),
)


def completed_curves(ledger: Ledger, tag: str) -> list[list[Point]]:
    """One curve per finished experiment of ``tag`` (its first run that trained to the end and
    left points), oldest first.

    One per experiment, as Optuna's pruners count trials: the baseline's five replicates are one
    configuration, and counted five times they would make the median the incumbent itself early
    in a session, when the median guard matters most. The first run is what a judged run is (a
    candidate's replicate 0), so the comparison is like with like."""
    curves = []
    for e in ledger.research(tag):
        if e.status == "running":
            continue
        for run in ledger.ok_runs(e.id):
            curve = [Point.from_dict(p) for p in run.progress]
            if any(p.value is not None for p in curve):
                curves.append(curve)
                break
    return curves


def pruner_for(config: Config, ledger: Ledger, tag: str, row: ExperimentRow, replicate: int) -> Pruner | None:
    """The pruner for one replicate, or None where nothing may be pruned (see the docstring)."""
    policy = config.policy
    if not policy.prune or row.kind != "candidate" or replicate != 0:
        return None
    incumbent = ledger.incumbent(tag)
    if incumbent is None:
        return None
    curves = [[Point.from_dict(p) for p in run.progress] for run in ledger.ok_runs(incumbent.id)]
    curves = [curve for curve in curves if any(p.value is not None for p in curve)]
    if not curves:
        return None
    setup = PruneSetup(
        reference=curves,
        direction=config.metric.direction,
        checkpoints=list(policy.prune_at),
        confidence=policy.prune_confidence,
        floor=noise_floor(ledger.replicate_groups(tag)),
        metric_name=config.metric.name,
        others=completed_curves(ledger, tag),
    )
    return make_pruner(config, setup)


def make_pruner(config: Config, setup: PruneSetup) -> Pruner:
    """The rule ``[pruner] kind`` names, with its ``[pruner.NAME]`` settings."""
    kind = PRUNERS.get(config.pruner.kind)
    return kind.factory(PRUNERS.settings(config.pruner), setup)
