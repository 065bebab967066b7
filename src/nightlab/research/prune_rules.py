"""The classic pruning rules nightlab's default was measured against, usable as kinds too.

- ``median``: Optuna's MedianPruner. At a checkpoint, stop a run whose value is worse than the
  median of the values every finished experiment had there, once ``startup`` have finished.
  It knows nothing of noise: about half of all candidates are worse than the median early on,
  including ones that would end up kept.
- ``halving``: successive halving as in ASHA (Optuna's SuccessiveHalvingPruner). Each
  checkpoint is a rung; a run goes on only if it is among the best 1/``reduction`` of the runs
  that reached the rung (itself included; at least the best one goes on).

Both compare with ``PruneSetup.others`` (one curve per finished experiment of the session),
where the default rule compares with the incumbent's curve and the noise
(:mod:`nightlab.research.pruning`).
"""

from __future__ import annotations

import statistics

from pydantic import Field

from nightlab.plugins import Kind, Settings
from nightlab.research.progress import value_at
from nightlab.research.pruning import CheckpointPruner, PruneSetup


class MedianSettings(Settings):
    startup: int = Field(default=5, ge=1)  # Optuna's n_startup_trials


class HalvingSettings(Settings):
    reduction: int = Field(default=4, ge=2)  # Optuna's reduction_factor


class MedianPruner(CheckpointPruner):
    """Stops a run worse than the median of finished experiments at the same checkpoint."""

    def __init__(self, setup: PruneSetup, startup: int = 5) -> None:
        super().__init__(setup)
        self.startup = startup

    def judge(self, mine: float, checkpoint: float) -> dict | None:
        values = [v for v in (value_at(c, checkpoint) for c in self.setup.others) if v is not None]
        if len(values) < self.startup:
            return None
        median = statistics.median(values)
        gap = self.setup.direction.improvement(median, mine)
        return {"incumbent": median, "margin": 0.0, "gap": gap, "rule": "median"} if gap > 0 else None

    def reason(self, evidence: dict) -> str:
        return (
            f"at {evidence['at']:.0%} of the budget {self.setup.metric_name} was {evidence['value']:.4g}, "
            f"worse than the median {evidence['incumbent']:.4g} of the finished experiments there"
        )


class HalvingPruner(CheckpointPruner):
    """Lets a run go on at a rung only if it is among the best 1/reduction of those there."""

    def __init__(self, setup: PruneSetup, reduction: int = 4) -> None:
        super().__init__(setup)
        self.reduction = reduction

    def judge(self, mine: float, checkpoint: float) -> dict | None:
        values = [v for v in (value_at(c, checkpoint) for c in self.setup.others) if v is not None]
        if not values:
            return None
        direction = self.setup.direction
        ranked = sorted([*values, mine], key=lambda v: -direction.sign * v)  # best first
        keep = max(1, len(ranked) // self.reduction)
        cutoff = ranked[keep - 1]
        gap = direction.improvement(cutoff, mine)
        if gap <= 0:
            return None
        return {
            "incumbent": cutoff,
            "margin": 0.0,
            "gap": gap,
            "rule": "halving",
            "kept": keep,
            "of": len(ranked),
        }

    def reason(self, evidence: dict) -> str:
        return (
            f"at {evidence['at']:.0%} of the budget {self.setup.metric_name} was {evidence['value']:.4g}, "
            f"not among the best {evidence['kept']} of {evidence['of']} runs there "
            f"(the last of them: {evidence['incumbent']:.4g})"
        )


KINDS = (
    Kind(
        "median",
        lambda settings, setup: MedianPruner(setup, settings.startup),
        MedianSettings,
        "Optuna's MedianPruner: stop a run worse than the median of finished experiments",
    ),
    Kind(
        "halving",
        lambda settings, setup: HalvingPruner(setup, settings.reduction),
        HalvingSettings,
        "successive halving (ASHA): go on only among the best 1/reduction at each checkpoint",
    ),
)
