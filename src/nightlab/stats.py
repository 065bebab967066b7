"""The statistics behind decisions: noise floor, tests on differences of means, run planning.

Shared by the keep/discard policy (:mod:`nightlab.research.policy`) and by ``nightlab validate``. Every
function takes plain lists of floats so it can be tested without a ledger, and returns a small
frozen dataclass rather than a tuple, so callers read ``result.p_value``, not ``result[3]``.

Distribution functions come from ``scipy.special`` (``stdtr``/``stdtrit``/``ndtri``): they are
scalar C routines, fast enough for the pure-Python false-keep simulations in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import special

# A spread this small relative to the metric is zero (identical results, not a measured noise).
ZERO_SPREAD = 1e-9

# Beyond this many extra runs a difference is "not settleable" in practice.
_MAX_RUNS = 100_000


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; raises ValueError on an empty sequence (a caller bug, not user input)."""
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def sum_squares(values: Sequence[float]) -> float:
    """Sum of squared deviations from the mean (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.fsum((v - m) ** 2 for v in values)


def sample_sd(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1), or None when fewer than two values exist."""
    if len(values) < 2:
        return None
    return math.sqrt(sum_squares(values) / (len(values) - 1))


def sem(values: Sequence[float]) -> float | None:
    """Standard error of the mean, or None when it cannot be estimated (one value)."""
    sd = sample_sd(values)
    return None if sd is None else sd / math.sqrt(len(values))


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (``df=inf`` is the normal)."""
    if math.isinf(df):
        return float(special.ndtr(-t))
    return float(special.stdtr(df, -t))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (``df=inf`` is the normal)."""
    if math.isinf(df):
        return float(special.ndtri(q))
    return float(special.stdtrit(df, q))


def conditional_power(
    gain: float, n: int, n_other: int, sd: float, n_final: int, threshold: float, critical: float
) -> float:
    """The chance that a comparison now at ``gain`` (mean of ``n`` runs minus the mean of
    ``n_other`` fixed runs, run-to-run ``sd``) ends at least ``critical`` standard errors above
    ``threshold`` once ``n_final`` runs are in, if the runs still to come average ``gain`` as
    those so far did (the "current trend" of group-sequential futility rules)."""
    if n_final <= n or sd <= 0:
        return 1.0 if gain - threshold >= critical * sd * math.sqrt(1 / max(n, 1) + 1 / n_other) else 0.0
    se_final = sd * math.sqrt(1.0 / n_final + 1.0 / n_other)
    need = (n_final * (threshold + critical * se_final) - n * gain) / (n_final - n)  # the rest's mean
    spread = sd / math.sqrt(n_final - n)
    return float(special.ndtr((gain - need) / spread))


@dataclass(frozen=True)
class NoiseEstimate:
    """The run-to-run standard deviation of the metric and how much evidence backs it.

    ``df`` (degrees of freedom) is the number of values minus the number of groups: two runs
    of the baseline give df=1, an estimate too shaky to trust on its own; every confirmed
    candidate adds more. Tests use ``df`` to widen their intervals while the floor is young.
    """

    sd: float
    df: int
    groups: int


def noise_floor(groups: Sequence[Sequence[float]]) -> NoiseEstimate | None:
    """The pooled within-group standard deviation over replicate groups.

    Each group holds the metric of several runs of the same code (different seeds), so the
    spread inside a group is pure run-to-run noise, whatever the groups' means. Groups with
    fewer than two values carry no information and are skipped; None when nothing is left.

    A group whose runs agree to the last digit measured no noise at all: the seed did not
    reach the metric for that code (a model collapsed to a constant output, a seed fixed in a
    change). Counted, it would add degrees of freedom of zero spread and shrink the floor every
    later decision rests on, so it is skipped while any group shows spread. When none does (a
    script that ignores its seed) the floor is zero, which the policy never reads as certainty.
    """
    groups = [g for g in groups if len(g) >= 2]
    if any(max(g) != min(g) for g in groups):
        groups = [g for g in groups if max(g) != min(g)]
    ss = 0.0
    df = 0
    used = 0
    for group in groups:
        ss += sum_squares(group)
        df += len(group) - 1
        used += 1
    if df == 0:
        return None
    return NoiseEstimate(sd=math.sqrt(ss / df), df=df, groups=used)


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float | None, int]:
    """:func:`noise_floor` as a pair ``(sd, degrees of freedom)``; ``(None, 0)`` without data."""
    noise = noise_floor(groups)
    return (noise.sd, noise.df) if noise else (None, 0)


@dataclass(frozen=True)
class Comparison:
    """The difference ``mean(a) - mean(b)`` with its uncertainty.

    ``p_greater`` is the one-sided p-value for "a is larger than b", ``p_two_sided`` the usual
    two-sided one; ``ci_low``/``ci_high`` bound the difference at ``confidence`` (two-sided).
    """

    diff: float
    se: float
    df: float
    t: float
    p_greater: float
    p_two_sided: float
    ci_low: float
    ci_high: float
    confidence: float
    n_a: int
    n_b: int


def _comparison(diff: float, se: float, df: float, confidence: float, n_a: int, n_b: int) -> Comparison:
    if se > 0:
        t = diff / se
        p_greater = t_sf(t, df)
        p_two = min(1.0, 2.0 * t_sf(abs(t), df))
    else:  # identical values on both sides: no noise seen, the sign decides
        t = math.copysign(math.inf, diff) if diff else 0.0
        p_greater = 0.0 if diff > 0 else (1.0 if diff < 0 else 0.5)
        p_two = 0.0 if diff else 1.0
    half = t_quantile(0.5 + confidence / 2.0, df) * se
    return Comparison(diff, se, df, t, p_greater, p_two, diff - half, diff + half, confidence, n_a, n_b)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Comparison:
    """Welch's t-test and confidence interval for ``mean(a) - mean(b)``.

    Welch (unequal variances, Satterthwaite degrees of freedom) is the right default for
    ``nightlab validate``, where the two sides are different code at a different scale and need
    not share a noise level. Both sides need at least two values.
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's test needs at least two values on each side")
    va = sum_squares(a) / (len(a) - 1) / len(a)
    vb = sum_squares(b) / (len(b) - 1) / len(b)
    se = math.sqrt(va + vb)
    if se > 0:
        denom = (va**2 / (len(a) - 1) if va else 0.0) + (vb**2 / (len(b) - 1) if vb else 0.0)
        df = (va + vb) ** 2 / denom
    else:
        df = float(len(a) + len(b) - 2)
    return _comparison(mean(a) - mean(b), se, df, confidence, len(a), len(b))


def pooled_test(
    a: Sequence[float],
    b: Sequence[float],
    noise: NoiseEstimate | None = None,
    confidence: float = 0.95,
) -> Comparison | None:
    """Student's t-test for ``mean(a) - mean(b)`` with one noise level shared by both sides.

    Used by the policy, where candidate and incumbent are the same training script a few lines
    apart, so one run-to-run sd is a fair assumption and lets a long-measured noise floor
    (``noise``) sharpen a test with only one or two runs per side. The candidate's own spread
    joins the floor (its runs are not yet in the ledger's finished groups). Without a floor, the
    two samples' pooled spread is used. None when no spread can be estimated at all (one run a
    side and no floor).
    """
    if not a or not b:
        raise ValueError("a test needs at least one value on each side")
    ss = sum_squares(a)
    df = len(a) - 1
    if noise is not None:
        ss += noise.sd**2 * noise.df
        df += noise.df
    else:
        ss += sum_squares(b)
        df += len(b) - 1
    if df <= 0:
        return None
    sd = math.sqrt(ss / df)
    se = sd * math.sqrt(1.0 / len(a) + 1.0 / len(b))
    return _comparison(mean(a) - mean(b), se, float(df), confidence, len(a), len(b))


def runs_to_settle(
    diff: float,
    sd: float,
    n_a: int,
    n_b: int,
    alpha: float = 0.05,
    power: float = 0.8,
    grow: str = "both",
) -> int | None:
    """How many more runs would likely settle whether ``diff`` is real.

    The normal-approximation sample size: the number of extra runs (per side when ``grow`` is
    "both", of side a only when it is "a") after which a true difference of ``diff`` would be
    significant at one-sided level ``alpha`` with probability ``power``. 0 means the current
    runs already suffice; None means it cannot be settled that way (no difference, or growing
    only side a can never shrink the error below side b's share).
    """
    if n_a < 1 or n_b < 1:
        raise ValueError("runs_to_settle needs at least one run on each side")
    if diff == 0 or sd <= 0:
        return None if diff == 0 else 0
    z = float(special.ndtri(1 - alpha) + special.ndtri(power))
    target = (abs(diff) / (sd * z)) ** 2  # the value 1/n_a + 1/n_b must reach
    if grow == "both":
        k = 0
        while 1.0 / (n_a + k) + 1.0 / (n_b + k) > target:
            k += 1
            if k > _MAX_RUNS:
                return None
        return k
    if grow == "a":
        room = target - 1.0 / n_b
        if room <= 0:
            return None
        need = max(0, math.ceil(1.0 / room) - n_a)
        return need if need <= _MAX_RUNS else None
    raise ValueError(f"grow must be 'both' or 'a', not {grow!r}")
