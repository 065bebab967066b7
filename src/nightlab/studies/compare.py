"""Two samples of one metric, compared: the difference, its confidence interval, and a verdict.

Used by ``nightlab validate`` (does the research branch's gain hold at another scale?) and by
``nightlab ablate`` (does a kept change still earn its place?). Welch's test, because the two
sides are different code and need not share a noise level.

The verdict reads the two-sided confidence interval of the improvement (B over A, positive
when B is better, whichever way the metric points):

- ``transfers``: the whole interval is above 0, B is really better;
- ``does not transfer``: the whole interval is below ``margin``, so B's gain is at most a
  negligible one (``margin`` 0: B is really worse);
- ``inconclusive``: neither; ``more_runs`` estimates how many extra runs per side would settle
  it if the observed difference is the true one.

Example::

    >>> c = compare("val_bpb", [1.00, 1.01, 1.005], [0.95, 0.955, 0.96], Direction.MINIMIZE)
    >>> c.verdict, round(c.improvement, 3)
    ('transfers', 0.05)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from nightlab.stats import mean, runs_to_settle, sample_sd, sum_squares, welch
from nightlab.types import Direction

TRANSFERS = "transfers"
DOES_NOT_TRANSFER = "does not transfer"
INCONCLUSIVE = "inconclusive"
FAILED = "failed"


@dataclass(frozen=True)
class MetricComparison:
    """Side A against side B on one metric; ``difference`` is ``mean_b - mean_a`` in metric units."""

    name: str
    direction: str
    values_a: list[float]
    values_b: list[float]
    mean_a: float | None
    sd_a: float | None
    mean_b: float | None
    sd_b: float | None
    difference: float | None
    ci_low: float | None  # of the difference
    ci_high: float | None
    p_value: float | None  # two-sided
    improvement: float | None  # positive when B is better
    confidence: float
    margin: float
    verdict: str
    more_runs: int | None
    note: str

    def improvement_interval(self) -> tuple[float, float] | None:
        """The confidence interval of the improvement (positive when B is better)."""
        if self.ci_low is None or self.ci_high is None or self.difference is None or self.improvement is None:
            return None
        sign = Direction(self.direction).sign
        low, high = sorted((sign * self.ci_low, sign * self.ci_high))
        return low, high

    def to_dict(self) -> dict:
        return asdict(self)


def compare(
    name: str,
    a: list[float],
    b: list[float],
    direction: Direction | str,
    confidence: float = 0.95,
    margin: float = 0.0,
) -> MetricComparison:
    """Compare the ok values of side A and side B (see the module docstring for the verdict)."""
    direction = Direction(direction)
    mean_a = mean(a) if a else None
    mean_b = mean(b) if b else None
    base = dict(
        name=name,
        direction=direction.value,
        values_a=list(a),
        values_b=list(b),
        mean_a=mean_a,
        sd_a=sample_sd(a),
        mean_b=mean_b,
        sd_b=sample_sd(b),
        confidence=confidence,
        margin=margin,
    )
    if not a or not b:
        side = "A" if not a else "B"
        return MetricComparison(
            **base, difference=None, ci_low=None, ci_high=None, p_value=None, improvement=None,
            verdict=FAILED, more_runs=None, note=f"side {side} has no successful run",
        )  # fmt: skip
    difference = mean_b - mean_a
    improvement = direction.sign * difference
    if len(a) < 2 or len(b) < 2:
        return MetricComparison(
            **base, difference=difference, ci_low=None, ci_high=None, p_value=None,
            improvement=improvement, verdict=INCONCLUSIVE, more_runs=max(0, 2 - min(len(a), len(b))),
            note="a test needs at least two successful runs per side",
        )  # fmt: skip
    test = welch(b, a, confidence)  # difference b - a
    # The interval of the improvement: flipped for a minimised metric.
    imp_low, imp_high = sorted((direction.sign * test.ci_low, direction.sign * test.ci_high))
    if imp_low > 0:
        verdict, more, note = TRANSFERS, None, "B is better"
    elif imp_high < margin:
        verdict, more = DOES_NOT_TRANSFER, None
        note = "B is worse" if imp_high < 0 else f"B's gain is below the margin {margin:.4g}"
    else:
        verdict = INCONCLUSIVE
        more, note = _more_runs(a, b, improvement, margin, confidence)
    return MetricComparison(
        **base, difference=difference, ci_low=test.ci_low, ci_high=test.ci_high, p_value=test.p_two_sided,
        improvement=improvement, verdict=verdict, more_runs=more, note=note,
    )  # fmt: skip


def _more_runs(
    a: list[float], b: list[float], improvement: float, margin: float, confidence: float
) -> tuple[int | None, str]:
    """Extra runs per side after which the observed difference would settle the question."""
    df = len(a) + len(b) - 2
    sd = math.sqrt((sum_squares(a) + sum_squares(b)) / df) if df > 0 else 0.0
    alpha = (1 - confidence) / 2  # the verdict reads a two-sided interval
    # Settle towards whichever verdict the observed difference is nearer to.
    towards_transfer = improvement >= margin / 2
    gap = improvement if towards_transfer else margin - improvement
    if gap == 0:
        return None, "no difference seen at all: more runs would not settle it"
    more = runs_to_settle(gap, sd, len(a), len(b), alpha=alpha)
    goal = TRANSFERS if towards_transfer else DOES_NOT_TRANSFER
    if more is None:
        return None, "the difference is too small to settle with any practical number of runs"
    more = max(1, more)  # the interval did not settle it: at least one more run is needed
    return more, f"about {more} more run{'s' if more != 1 else ''} per side would likely show '{goal}'"
