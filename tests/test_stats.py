"""The statistics against textbook values (scipy's own tests) and by simulation."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats as sps

from nightlab.stats import (
    NoiseEstimate,
    conditional_power,
    mean,
    noise_floor,
    pooled_sd,
    pooled_test,
    runs_to_settle,
    sample_sd,
    sem,
    t_quantile,
    t_sf,
    welch,
)


def test_basic_moments() -> None:
    assert mean([1.0, 2.0, 3.0]) == 2.0
    assert sample_sd([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert sem([1.0, 2.0, 3.0]) == pytest.approx(1 / math.sqrt(3))
    assert sample_sd([5.0]) is None and sem([5.0]) is None
    with pytest.raises(ValueError):
        mean([])


def test_t_distribution_helpers_match_scipy() -> None:
    assert t_sf(2.0, 5) == pytest.approx(sps.t.sf(2.0, 5))
    assert t_quantile(0.975, 10) == pytest.approx(sps.t.ppf(0.975, 10))
    assert t_sf(1.96, math.inf) == pytest.approx(0.025, abs=1e-4)


def test_noise_floor_pools_within_group_spread_only() -> None:
    # Group means differ wildly; only the spread inside each group is noise.
    groups = [[1.0, 1.2], [5.0, 5.4, 5.2], [9.0], []]
    noise = noise_floor(groups)
    ss = 0.02 + 0.08
    assert noise == NoiseEstimate(sd=pytest.approx(math.sqrt(ss / 3)), df=3, groups=2)
    assert pooled_sd(groups) == (pytest.approx(math.sqrt(ss / 3)), 3)
    assert noise_floor([[1.0], [2.0]]) is None
    assert pooled_sd([]) == (None, 0)


def test_a_group_of_identical_runs_does_not_shrink_the_noise_floor() -> None:
    # A candidate collapsed to a constant output: four seeds, one value. It measured no noise.
    assert noise_floor([[1.0, 1.2], [0.5, 0.5, 0.5, 0.5]]) == NoiseEstimate(
        sd=pytest.approx(math.sqrt(0.02)), df=1, groups=1
    )
    # Every group identical (a script that ignores its seed): a floor of zero, as before.
    assert noise_floor([[1.0, 1.0], [2.0, 2.0, 2.0]]) == NoiseEstimate(sd=0.0, df=3, groups=2)


def test_welch_matches_scipy() -> None:
    a = [0.981, 0.984, 0.979, 0.983]
    b = [0.990, 0.995, 0.987]
    ours = welch(a, b, confidence=0.95)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert ours.diff == pytest.approx(mean(a) - mean(b))
    assert ours.t == pytest.approx(ref.statistic)
    assert ours.p_two_sided == pytest.approx(ref.pvalue)
    assert ours.p_greater == pytest.approx(sps.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
    ci = ref.confidence_interval(0.95)
    assert (ours.ci_low, ours.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    with pytest.raises(ValueError):
        welch([1.0], [1.0, 2.0])


def test_pooled_test_without_floor_is_students_t() -> None:
    a, b = [1.0, 1.3, 1.1], [0.8, 0.9]
    ours = pooled_test(a, b)
    ref = sps.ttest_ind(a, b, equal_var=True, alternative="greater")
    assert ours.t == pytest.approx(ref.statistic) and ours.p_greater == pytest.approx(ref.pvalue)
    assert ours.df == 3
    assert pooled_test([1.0], [2.0]) is None  # no spread anywhere


def test_pooled_test_uses_the_floor_and_the_candidates_spread() -> None:
    floor = NoiseEstimate(sd=0.01, df=20, groups=10)
    ours = pooled_test([1.02, 1.04], [1.0], floor)
    sd = math.sqrt((0.01**2 * 20 + 0.0002) / 21)
    assert ours.df == 21 and ours.se == pytest.approx(sd * math.sqrt(1 / 2 + 1))


def test_confidence_interval_covers_at_the_stated_rate() -> None:
    rng = random.Random(0)
    covered = 0
    trials = 2000
    for _ in range(trials):
        a = [rng.gauss(1.0, 1.0) for _ in range(3)]
        b = [rng.gauss(0.0, 2.0) for _ in range(4)]
        c = welch(a, b, confidence=0.9)
        covered += c.ci_low <= 1.0 <= c.ci_high
    assert 0.87 <= covered / trials <= 0.93


def test_runs_to_settle() -> None:
    # 1-sd effect, alpha 0.05, power 0.8: about 2*(1.645+0.842)^2 = 12.4 -> 13 runs a side.
    with pytest.raises(ValueError):
        runs_to_settle(1.0, 1.0, 0, 3)
    assert runs_to_settle(1.0, 1.0, 1, 1) == 12
    assert runs_to_settle(1.0, 1.0, 13, 13) == 0
    assert runs_to_settle(4.0, 1.0, 2, 2) == 0  # already settled
    assert runs_to_settle(0.0, 1.0, 2, 2) is None
    # Growing one side only cannot beat the other side's fixed error.
    assert runs_to_settle(0.5, 1.0, 1, 2, grow="a") is None
    more = runs_to_settle(1.0, 1.0, 1, 50, grow="a")
    assert more is not None and 1 / (1 + more) + 1 / 50 <= (1 / 2.486) ** 2 + 1e-9


def test_conditional_power_matches_a_simulation_of_the_remaining_runs() -> None:
    """The chance a comparison ends significant if the runs to come average what the runs so far
    did, against drawing those runs: 2 of 4 runs in, incumbent mean fixed on 3 runs."""
    import random

    gain, n, n_other, sd, final, critical = 0.007, 2, 3, 0.005, 4, 2.0
    predicted = conditional_power(gain, n, n_other, sd, final, 0.0, critical)
    rng = random.Random(3)
    se = sd * (1 / final + 1 / n_other) ** 0.5
    hits = 0
    trials = 20000
    for _ in range(trials):
        rest = [rng.gauss(gain, sd) for _ in range(final - n)]
        total = (gain * n + sum(rest)) / final
        hits += total >= critical * se
    assert 0.05 < predicted < 0.95
    assert abs(hits / trials - predicted) < 0.015
    # more of the same gain can only help; a larger threshold can only hurt
    assert conditional_power(2 * gain, n, n_other, sd, final, 0.0, critical) > predicted
    assert conditional_power(gain, n, n_other, sd, final, 0.002, critical) < predicted
