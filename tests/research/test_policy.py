"""Keep/discard/confirm decisions, including the false-keep rate on noise-only candidates."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from nightlab.config import PolicySection
from nightlab.research.policy import (
    ConfirmPolicy,
    Decision,
    Evidence,
    GreedyPolicy,
    Policy,
    make_policy,
    review,
)
from nightlab.types import Direction

MIN, MAX = Direction.MINIMIZE, Direction.MAXIMIZE


def decide(policy: Policy, candidate, incumbent, noise_sd, direction, **kwargs) -> Decision:  # noqa: ANN001
    """One look, with the evidence built as the loop builds it."""
    return policy.decide(Evidence(candidate, incumbent, direction, noise_sd=noise_sd, **kwargs))


def test_greedy_keeps_any_strict_improvement() -> None:
    greedy = GreedyPolicy()
    assert decide(greedy, [0.9999], [1.0, 1.0], None, MIN).action == "keep"
    assert decide(greedy, [1.0], [1.0], None, MIN).action == "discard"  # equal is not better
    assert decide(greedy, [1.0001], [1.0], None, MIN).action == "discard"
    assert decide(greedy, [0.51], [0.5], None, MAX).action == "keep"
    # Only the first run counts, as in autoresearch.
    d = decide(greedy, [0.99, 5.0], [1.0], 0.1, MIN)
    assert d.action == "keep" and d.delta == pytest.approx(0.01) and d.p_value is None
    assert d.reason.startswith("Δ −0.0") and d.reason.endswith("kept")


def test_confirm_asks_for_confirmation_then_keeps_a_real_effect() -> None:
    policy = ConfirmPolicy(confidence=0.95, max_runs=4)
    incumbent = [1.000, 1.002]
    first = decide(policy, [0.997], incumbent, 0.002, MIN, noise_df=10)
    assert first.action == "confirm" and "confirming" in first.reason
    runs = [0.997, 0.996, 0.9965]
    final = decide(policy, runs, incumbent, 0.002, MIN, noise_df=10)
    assert final.action == "keep", final.reason
    assert final.delta == pytest.approx(1.001 - sum(runs) / 3)
    assert final.p_value is not None and final.p_value <= policy.look_alpha(3)
    assert final.reason.startswith("Δ −0.0045 ± 0.0") and "(3 runs, p=" in final.reason
    assert final.reason.endswith("kept")


def test_confirm_discards_what_does_not_look_better_at_once() -> None:
    d = decide(ConfirmPolicy(), [1.003], [1.000, 1.002], 0.002, MIN, noise_df=10)
    assert d.action == "discard" and "not better" in d.reason and "1 run" in d.reason
    d = decide(ConfirmPolicy(), [0.49], [0.50, 0.51], 0.01, MAX, noise_df=10)
    assert d.action == "discard"


def test_confirm_discards_an_unconfirmed_candidate_at_max_runs() -> None:
    policy = ConfirmPolicy(max_runs=2)
    d = decide(policy, [0.9995, 1.0003], [1.000, 1.002], 0.002, MIN, noise_df=10)
    assert d.action == "discard" and "not significant, discarded" in d.reason and "(2 runs, p=" in d.reason


def test_a_clear_effect_is_kept_on_its_first_run() -> None:
    d = decide(ConfirmPolicy(), [0.90], [1.000, 1.002, 1.001], 0.002, MIN, noise_df=30)
    assert d.action == "keep" and "1 run" in d.reason


def test_without_any_noise_estimate_it_asks_for_another_run() -> None:
    policy = ConfirmPolicy(max_runs=3)
    d = decide(policy, [0.9], [1.0], None, MIN)
    assert d.action == "confirm" and d.delta_se is None and "no noise estimate" in d.reason
    d = decide(ConfirmPolicy(max_runs=1), [0.9], [1.0], None, MIN)
    assert d.action == "discard"
    # With two candidate runs the two samples give the spread (df = 1).
    d = decide(policy, [0.9, 0.91], [1.0], None, MIN)
    assert d.delta_se is not None and d.p_value is not None


def test_noise_sd_without_df_is_treated_conservatively() -> None:
    policy = ConfirmPolicy()
    with_df = decide(policy, [0.996, 0.996], [1.0, 1.0], 0.002, MIN, noise_df=50)
    without = decide(policy, [0.996, 0.996], [1.0, 1.0], 0.002, MIN)
    assert without.p_value > with_df.p_value


def test_complexity_penalty_flips_a_marginal_decision() -> None:
    runs, incumbent = [0.9955, 0.9957, 0.9956], [1.000, 1.001]
    plain = decide(ConfirmPolicy(complexity_penalty=0.0001), runs, incumbent, 0.001, MIN, noise_df=20)
    assert plain.action == "keep"
    bloated = decide(
        ConfirmPolicy(complexity_penalty=0.0001), runs, incumbent, 0.001, MIN, lines_added=40, noise_df=20
    )
    assert bloated.action in ("discard", "confirm") and "complexity cost" in bloated.reason
    assert bloated.delta == pytest.approx(plain.delta)  # the raw improvement is unchanged
    # Lines removed earn: a change that is slightly worse but deletes a lot is kept.
    simpler = decide(
        ConfirmPolicy(complexity_penalty=0.0001),
        [1.0003, 1.0004, 1.0002],
        [1.000, 1.0006],
        0.0002,
        MIN,
        lines_removed=60,
        noise_df=20,
    )
    assert simpler.action == "keep", simpler.reason
    greedy = GreedyPolicy(complexity_penalty=0.001)
    assert decide(greedy, [0.9995], [1.0], None, MIN).action == "keep"
    assert decide(greedy, [0.9995], [1.0], None, MIN, lines_added=3).action == "discard"


def test_look_levels_spend_exactly_alpha() -> None:
    policy = ConfirmPolicy(confidence=0.9, max_runs=5)
    levels = [policy.look_alpha(k) for k in range(1, 6)]
    assert sum(levels) == pytest.approx(0.1)
    assert levels == sorted(levels)
    assert policy.look_alpha(9) == policy.look_alpha(5)


def test_make_policy_and_bad_arguments() -> None:
    confirm = make_policy(PolicySection(kind="confirm", confidence=0.99, max_runs=6, complexity_penalty=0.01))
    assert isinstance(confirm, ConfirmPolicy)
    assert (confirm.confidence, confirm.max_runs, confirm.complexity_penalty) == (0.99, 6, 0.01)
    assert isinstance(make_policy(PolicySection(kind="greedy")), GreedyPolicy)
    with pytest.raises(ValueError):
        decide(ConfirmPolicy(), [], [1.0], None, MIN)
    with pytest.raises(ValueError):
        ConfirmPolicy(max_runs=0)


def run_candidate(policy, rng: random.Random, effect: float, incumbent: list[float], noise) -> Decision:  # noqa: ANN001
    """Feed a candidate's runs to a policy until it stops asking for more (sd 1 noise)."""
    runs: list[float] = []
    while True:
        runs.append(rng.gauss(-effect, 1.0))  # minimised metric, so better is lower
        d = decide(policy, runs, incumbent, noise[0], MIN, noise_df=noise[1])
        if d.action != "confirm":
            return d


@pytest.mark.parametrize("floor_df", [1, 20])
def test_false_keep_rate_under_five_percent(floor_df: int) -> None:
    """2,000 candidates that change nothing, each against a freshly measured baseline."""
    rng = random.Random(1234 + floor_df)
    policy, greedy = ConfirmPolicy(confidence=0.95, max_runs=4), GreedyPolicy()
    kept = greedy_kept = 0
    trials = 2000
    for _ in range(trials):
        incumbent = [rng.gauss(0.0, 1.0) for _ in range(2)]
        # The noise floor: sum of squares of floor_df independent deviations (chi-square).
        sd = (sum(rng.gauss(0.0, 1.0) ** 2 for _ in range(floor_df)) / floor_df) ** 0.5
        kept += run_candidate(policy, rng, 0.0, incumbent, (sd, floor_df)).action == "keep"
        greedy_kept += decide(greedy, [rng.gauss(0.0, 1.0)], incumbent, None, MIN).action == "keep"
    assert kept / trials <= 0.05
    assert 0.4 < greedy_kept / trials < 0.6  # greedy keeps about half of all no-ops


def test_confirm_keeps_most_large_effects() -> None:
    rng = random.Random(7)
    policy = ConfirmPolicy(confidence=0.95, max_runs=4)
    kept = sum(
        run_candidate(policy, rng, 3.0, [rng.gauss(0.0, 1.0) for _ in range(2)], (1.0, 20)).action == "keep"
        for _ in range(300)
    )
    assert kept / 300 > 0.8


def test_a_change_smaller_than_its_uncertainty_still_shows_which_way_it_went() -> None:
    # A metric near 0.001 with noise 0.02: three decimals would print the change as +0.000.
    d = decide(ConfirmPolicy(max_runs=1), [0.00081], [0.001, 0.001], 0.02, MIN)
    assert d.reason.startswith("Δ −0.0002 ± 0.02"), d.reason


def test_futility_discards_a_gain_too_small_for_max_runs_to_show() -> None:
    """A candidate ahead by a tenth of the noise after one run would need luck to become
    significant within 4 runs: with futility on it is discarded at once, saying why, where
    without it the policy spends 3 more runs; a gain that can become significant is confirmed."""
    incumbent = [1.000, 1.002]
    small = [0.9998]  # 0.0003 better than the incumbent's mean, noise sd 0.002
    off = decide(ConfirmPolicy(futility=0.0), small, incumbent, 0.002, MIN, noise_df=10)
    on = decide(ConfirmPolicy(futility=0.1), small, incumbent, 0.002, MIN, noise_df=10)
    assert off.action == "confirm"
    assert on.action == "discard" and "too small to become significant in 4 runs" in on.reason, on.reason
    assert on.delta == off.delta and on.p_value == off.p_value
    promising = decide(ConfirmPolicy(futility=0.1), [0.997], incumbent, 0.002, MIN, noise_df=10)
    assert promising.action == "confirm"
    assert make_policy(PolicySection()).futility == 0.1  # on by default in the harness


def test_futility_only_ever_turns_a_confirm_into_a_discard() -> None:
    """Whatever the evidence, the keep boundary is the same with and without futility stopping,
    so the false-keep bound of the sequential test is untouched."""
    rng = random.Random(7)
    changed = 0
    for _ in range(3000):
        n = rng.randint(1, 3)
        incumbent = [rng.gauss(1.0, 0.01) for _ in range(rng.randint(1, 4))]
        candidate = [rng.gauss(1.0 - rng.uniform(0, 0.02), 0.01) for _ in range(n)]
        args = (candidate, incumbent, 0.01, MIN)
        plain = decide(ConfirmPolicy(futility=0.0), *args, noise_df=8)
        futile = decide(ConfirmPolicy(futility=0.3), *args, noise_df=8)
        if plain.action != futile.action:
            assert (plain.action, futile.action) == ("confirm", "discard")
            changed += 1
    assert changed > 100  # the rule does act


def test_time_a_script_does_not_report_as_training_is_flagged() -> None:
    """A script that under-reports its own training clock (5x the training, 1x reported) looks
    no slower by the training time it prints; the wall time says otherwise, and the reason says so."""
    section = PolicySection()
    evidence = Evidence(
        [0.5], [1.0, 1.0], MIN, noise_sd=0.01, noise_df=10,
        candidate_seconds=8.0, incumbent_seconds=8.0, candidate_wall=45.4, incumbent_wall=13.3,
    )  # fmt: skip
    decision = review(Decision("keep", "Δ −0.5, kept", 0.5, 0.01, 0.001), evidence, section)
    assert decision.action == "keep"
    assert decision.reason.endswith(
        "its runs take 3.4x the incumbent's wall time (45.4 s against 13.3 s), 32.1 s more outside "
        "the training time they report"
    )
    honest = replace(evidence, candidate_wall=14.0)  # a second more to export a bigger model
    assert review(Decision("keep", "kept", 0.5, 0.01, 0.001), honest, section).reason == "kept"
