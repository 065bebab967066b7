"""Keep, discard or run again: the rules that decide whether a candidate beats the incumbent.

A policy sees only numbers, gathered in one :class:`Evidence` (the candidate's metric per
finished run, the incumbent's, the noise floor, the change's size), and returns a
:class:`Decision`; the loop runs more replicates on ``"confirm"`` and asks again. Crashed and
invalid experiments never reach a policy. A new policy is a subclass of :class:`Policy`
declared as a :class:`~nightlab.plugins.Kind` (this module's ``KINDS`` shows how); its kind
table ``[policy.NAME]`` holds its own settings.

Example::

    >>> from nightlab.types import Direction
    >>> policy = ConfirmPolicy(confidence=0.95, max_runs=4)
    >>> evidence = Evidence([0.996], [1.000, 1.002], Direction.MINIMIZE, noise_sd=0.002, noise_df=10)
    >>> d = policy.decide(evidence)
    >>> d.action, d.reason
    ('confirm', 'Δ −0.0050 ± 0.0024 (1 run, p=0.034), looks better, confirming (needs p≤0.010)')
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Literal

from nightlab.config import PolicySection
from nightlab.formatting import decimals_for, signed
from nightlab.plugins import Kind, Registry, Settings
from nightlab.stats import (
    ZERO_SPREAD,
    Comparison,
    NoiseEstimate,
    conditional_power,
    mean,
    pooled_test,
    t_quantile,
    t_sf,
)
from nightlab.types import Direction

Action = Literal["keep", "discard", "confirm"]


@dataclass(frozen=True)
class Evidence:
    """Everything a policy may weigh for one look at one candidate.

    ``candidate`` and ``incumbent`` are the metric of each finished ok run, as the metric reads
    (the direction is applied here, in :meth:`scores`, and nowhere else). ``noise_sd`` and
    ``noise_df`` are the noise floor (:func:`nightlab.stats.noise_floor` over the finished
    replicate groups); ``noise_df`` None means only an sd is known, which the confirm policy
    treats conservatively. ``lines_added``/``lines_removed`` size the change for the
    complexity penalty.
    """

    candidate: list[float]
    incumbent: list[float]
    direction: Direction = Direction.MINIMIZE
    noise_sd: float | None = None
    noise_df: int | None = None
    lines_added: int = 0
    lines_removed: int = 0
    # How the noise was obtained when it was not measured (see :func:`noise_for`), for the reason.
    noise_note: str = ""
    # Mean seconds per run (training time when the script reports it, else wall time).
    candidate_seconds: float | None = None
    incumbent_seconds: float | None = None
    # Mean wall seconds per run: what a script's own report of its training time cannot hide.
    candidate_wall: float | None = None
    incumbent_wall: float | None = None

    def __post_init__(self) -> None:
        if not self.candidate or not self.incumbent:
            raise ValueError("a decision needs at least one candidate and one incumbent value")

    def scores(self) -> tuple[list[float], list[float]]:
        """Candidate and incumbent values as larger-is-better scores."""
        return self.direction.scores(self.candidate), self.direction.scores(self.incumbent)

    @property
    def net_lines(self) -> int:
        """Lines the change adds, net of those it removes (what the complexity penalty charges)."""
        return self.lines_added - self.lines_removed


@dataclass(frozen=True)
class Decision:
    """What to do with a candidate, and why in words a person can check.

    ``delta`` is the improvement over the incumbent in metric units, positive when better
    (before any complexity penalty, which the reason states); ``delta_se`` its standard error;
    ``p_value`` the one-sided p-value of "the candidate is better, penalty included".
    """

    action: Action
    reason: str
    delta: float | None
    delta_se: float | None
    p_value: float | None


class Policy(ABC):
    """Decides on a candidate; called after each of its finished runs until it is not "confirm"."""

    name: str = "policy"

    @abstractmethod
    def decide(self, evidence: Evidence) -> Decision:
        """Keep, discard, or confirm (run it again) on ``evidence``."""


def _p(p: float) -> str:
    return f"p={p:.2g}" if p >= 0.0001 else "p<0.0001"


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _change_text(change: float, se: float | None, scale: float) -> str:
    """``Δ −0.0042 ± 0.0011``: the raw change of the metric itself (sign as the metric moves).

    Decimals follow the uncertainty; a change smaller than that still shows its own first digit
    (``Δ −0.00019 ± 0.023``), since ``+0.000`` would hide which way it went."""
    d = decimals_for(se if se else scale)
    shown = max(d, decimals_for(abs(change), significant=1)) if change and round(change, d) == 0 else d
    return f"Δ {signed(change, shown)}" + (f" ± {se:.{d}f}" if se is not None else "")


class GreedyPolicy(Policy):
    """autoresearch's rule: keep when the first run is strictly better than the incumbent.

    One run, no noise model: about half of all changes that do nothing get kept when the
    metric is noisy (see docs/BENCHMARKS.md). Kept for comparison and for deterministic
    targets. The incumbent's value is the mean of its replicates. ``complexity_penalty``
    (default 0, as in autoresearch) is subtracted from the improvement.
    """

    name = "greedy"

    def __init__(self, complexity_penalty: float = 0.0) -> None:
        self.complexity_penalty = complexity_penalty

    def decide(self, evidence: Evidence) -> Decision:
        first, base = evidence.candidate[0], mean(evidence.incumbent)
        improvement = evidence.direction.improvement(first, base)
        penalty = self.complexity_penalty * evidence.net_lines
        text = _change_text(first - base, None, evidence.noise_sd or abs(first - base))
        extra = f", complexity cost {penalty:g}" if penalty else ""
        if improvement - penalty > 0:
            return Decision("keep", f"{text} (1 run{extra}), better, kept", improvement, None, None)
        return Decision("discard", f"{text} (1 run{extra}), not better, discarded", improvement, None, None)


class ConfirmPolicy(Policy):
    """Keep a change only once its improvement is statistically significant.

    A candidate whose runs so far look better than the incumbent is run again with a fresh
    seed ("confirm") until a one-sided t-test of "better by more than the complexity penalty"
    is significant, or until ``max_runs`` runs; one that does not look better is discarded at
    once (it cannot become significant without luck, and luck is what we guard against).

    The test: both sides are assumed to share the run-to-run noise (same script, a few lines
    apart). Its sd is pooled from the noise floor (``noise_sd`` with ``noise_df`` degrees of
    freedom, from replicate groups of finished experiments) and the candidate's own replicates;
    without a floor, from the two samples; with no estimate at all (one run each), the policy
    asks for another run. The incumbent's mean uses all its replicates.

    Sequential looks: the candidate is tested after each of its runs, up to ``max_runs`` looks,
    and every look is a chance for a false keep. The error is split over the looks with a
    weighted Bonferroni bound: look k may reject at ``alpha * k / (1 + 2 + ... + max_runs)``.
    The union bound holds whatever the correlation between looks, so the false-keep rate stays
    at most ``alpha = 1 - confidence`` per candidate, exactly when the noise is normal; weights
    grow with k because early looks have few runs and little power, so spending most of alpha
    on them would waste it. (Group-sequential boundaries such as O'Brien-Fleming are tighter,
    but need the joint law of the looks, which a noise floor that keeps being re-estimated and
    a complexity penalty make awkward; Bonferroni is simple and never optimistic.)

    Futility (``futility``, conditional power): a candidate that looks better but could only
    become significant by ``max_runs`` with luck (its chance, if its later runs gain what its
    runs so far did, is below ``futility``) is discarded at once rather than confirmed. The
    confirmation runs it saves go to new candidates; the keep boundary is unchanged.

    ``noise_df`` is optional for callers that only know an sd; then the floor is trusted as if
    it came from the incumbent's own replicates alone (df = n_incumbent - 1, at least 1), which
    is conservative.
    """

    name = "confirm"

    def __init__(
        self,
        confidence: float = 0.95,
        max_runs: int = 4,
        complexity_penalty: float = 0.0,
        futility: float = 0.0,
    ) -> None:
        if not 0.5 < confidence < 1:
            raise ValueError("confidence must be between 0.5 and 1")
        if max_runs < 1:
            raise ValueError("max_runs must be at least 1")
        if not 0 <= futility < 1:
            raise ValueError("futility must be at least 0 and below 1")
        self.confidence = confidence
        self.max_runs = max_runs
        self.complexity_penalty = complexity_penalty
        self.futility = futility

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence

    def look_alpha(self, look: int) -> float:
        """The significance level of the ``look``-th test (1-based); they sum to ``alpha``."""
        look = min(max(look, 1), self.max_runs)
        return self.alpha * look / (self.max_runs * (self.max_runs + 1) / 2)

    def decide(self, evidence: Evidence) -> Decision:
        n = len(evidence.candidate)
        # Scores are "larger is better", so one one-sided test serves both directions.
        a, b = evidence.scores()
        noise = self._noise(evidence.noise_sd, evidence.noise_df, len(evidence.incumbent))
        test = pooled_test(a, b, noise, self.confidence)
        improvement = mean(a) - mean(b)
        change = mean(evidence.candidate) - mean(evidence.incumbent)
        penalty = self.complexity_penalty * evidence.net_lines
        net = improvement - penalty
        se = test.se if test is not None else None
        text = _change_text(change, se, abs(change))
        cost = f", complexity cost {penalty:g} for {evidence.net_lines:+d} lines" if penalty else ""
        can_confirm = n < self.max_runs

        if net <= 0:
            why = "not better" if improvement <= 0 else "not better after the complexity cost"
            p = t_sf(net / se, test.df) if test is not None and se else None
            return Decision("discard", f"{text} ({_runs(n)}{cost}), {why}, discarded", improvement, se, p)
        if test is None:
            if can_confirm:
                return Decision(
                    "confirm",
                    f"{text} ({_runs(n)}{cost}), looks better, no noise estimate yet, confirming",
                    improvement,
                    None,
                    None,
                )
            return Decision(
                "discard", f"{text} ({_runs(n)}{cost}), no noise estimate, discarded", improvement, None, None
            )
        p = t_sf(net / test.se, test.df) if test.se > 0 else 0.0
        level = self.look_alpha(n)
        stats_text = f"{_runs(n)}, {_p(p)}{cost}"
        if p <= level:
            return Decision("keep", f"{text} ({stats_text}), kept", improvement, se, p)
        chance = (
            self._chance(improvement, len(a), len(b), test, penalty) if can_confirm and self.futility else 1.0
        )
        if chance < self.futility:
            return Decision(
                "discard",
                f"{text} ({stats_text}), too small to become significant in {self.max_runs} runs "
                f"(a {chance:.0%} chance if it holds), discarded",
                improvement,
                se,
                p,
            )
        if can_confirm:
            return Decision(
                "confirm",
                f"{text} ({stats_text}), looks better, confirming (needs p≤{self.look_alpha(n + 1):.3f})",
                improvement,
                se,
                p,
            )
        return Decision("discard", f"{text} ({stats_text}), not significant, discarded", improvement, se, p)

    def _chance(self, improvement: float, n: int, n_inc: int, test: Comparison, penalty: float) -> float:
        """Conditional power: how likely the last look keeps the candidate if its later runs
        gain what its runs so far did. Futility stopping (``futility``) discards a candidate
        whose chance is below it, instead of spending runs on a gain too small for ``max_runs``
        runs to show; it only ever discards, so the false-keep bound is untouched."""
        sd = test.se / math.sqrt(1.0 / n + 1.0 / n_inc)
        df = test.df + (self.max_runs - n)
        critical = t_quantile(1.0 - self.look_alpha(self.max_runs), df)
        return conditional_power(improvement, n, n_inc, sd, self.max_runs, penalty, critical)

    def _noise(self, noise_sd: float | None, noise_df: int | None, n_incumbent: int) -> NoiseEstimate | None:
        if noise_sd is None:
            return None
        df = noise_df if noise_df is not None else max(1, n_incumbent - 1)
        if df <= 0:
            return None
        return NoiseEstimate(sd=noise_sd, df=df, groups=0)


# Assumed run-to-run sd, as a share of the incumbent's value, when replicates are identical.
DEFAULT_NOISE_SHARE = 0.01
# Runs must differ by at least this much before one counts as slower (start-up jitter aside).
MIN_SLOWER_SECONDS = 1.0


def noise_for(
    floor: NoiseEstimate | None, candidate: list[float], incumbent: list[float], section: PolicySection
) -> tuple[float | None, int | None, str]:
    """The noise (sd, degrees of freedom, and a note when it was not measured) a decision rests on.

    A spread of exactly zero is never certainty: replicates with different seeds that agree to
    the last digit mean the script ignores ``NIGHTLAB_SEED``, not that it has no noise. Then the
    sd the user declared (``[policy] noise_sd``) is used, or, failing that, a conservative 1% of
    the incumbent's value; the note says which, for the decision's reason.
    """
    identical = any(len(side) > 1 and max(side) == min(side) for side in (candidate, incumbent))
    scale = abs(mean(incumbent)) or 1.0
    if floor is not None and floor.sd > ZERO_SPREAD * scale:  # rounding leaves ~1e-16, not zero
        return floor.sd, floor.df, ""
    if floor is None and not identical:
        return None, 0, ""
    why = "replicates with different seeds gave identical results (does the script ignore NIGHTLAB_SEED?)"
    if section.noise_sd is not None:
        return section.noise_sd, None, f"noise sd {section.noise_sd:g} from [policy] noise_sd: {why}"
    assumed = DEFAULT_NOISE_SHARE * abs(mean(incumbent)) or DEFAULT_NOISE_SHARE
    return (
        assumed,
        None,
        f"noise sd {assumed:.3g} assumed (1% of the incumbent; set [policy] noise_sd): {why}",
    )


def review(decision: Decision, evidence: Evidence, section: PolicySection) -> Decision:
    """What every policy's keep or confirm gets on top: how the noise was obtained when it was
    not measured, and a flag (or, with ``refuse_slower``, a refusal) when the candidate's runs
    take clearly longer than the incumbent's, so a gain bought with compute is seen."""
    reason = decision.reason + (f"; {evidence.noise_note}" if evidence.noise_note else "")
    if decision.action == "discard":  # an assumed noise decides discards too: said there as well
        return replace(decision, reason=reason)
    cand, inc = evidence.candidate_seconds, evidence.incumbent_seconds
    if cand and inc and cand / inc > section.slower_ratio and cand - inc >= MIN_SLOWER_SECONDS:
        ratio = cand / inc
        slower = f"its runs take {ratio:.1f}x as long as the incumbent's ({cand:.1f} s against {inc:.1f} s)"
        if decision.action == "keep" and section.refuse_slower:
            return replace(
                decision, action="discard", reason=f"{reason}; {slower}: refused ([policy] refuse_slower)"
            )
        reason += f"; {slower}"
    hidden = _unreported_time(evidence, section)
    if hidden:
        reason += f"; {hidden}"
    return replace(decision, reason=reason)


def _unreported_time(evidence: Evidence, section: PolicySection) -> str:
    """A flag when the candidate's runs take clearly longer in wall time than the incumbent's
    while the training time they report does not say so: time spent outside what the script
    calls training (a script that under-reports its own clock trains past its budget unseen)."""
    cand_wall, inc_wall = evidence.candidate_wall, evidence.incumbent_wall
    cand_trained, inc_trained = evidence.candidate_seconds, evidence.incumbent_seconds
    if cand_wall is None or not inc_wall or cand_trained is None or inc_trained is None:
        return ""
    if (cand_wall, inc_wall) == (cand_trained, inc_trained):
        return ""  # no separate training time reported: the wall time is all there is
    extra = (cand_wall - cand_trained) - (inc_wall - inc_trained)
    ratio = cand_wall / inc_wall
    if ratio <= section.slower_ratio or extra < max(
        MIN_SLOWER_SECONDS, (section.slower_ratio - 1) * inc_wall
    ):
        return ""
    return (
        f"its runs take {ratio:.1f}x the incumbent's wall time ({cand_wall:.1f} s against "
        f"{inc_wall:.1f} s), {extra:.1f} s more outside the training time they report"
    )


POLICIES = Registry("policy", {"confirm": __name__, "greedy": __name__}, "nightlab.policies")


def make_policy(section: PolicySection) -> Policy:
    """The policy ``[policy] kind`` names, with the common ``[policy]`` settings and its own."""
    kind = POLICIES.get(section.kind)
    return kind.factory(POLICIES.settings(section), section)


KINDS = (
    Kind(
        "confirm",
        lambda settings, section: ConfirmPolicy(
            section.confidence, section.max_runs, section.complexity_penalty, section.futility
        ),
        Settings,
        "keep only a significant improvement, confirming with more runs (noise-aware)",
    ),
    Kind(
        "greedy",
        lambda settings, section: GreedyPolicy(section.complexity_penalty),
        Settings,
        "autoresearch's rule: keep when the first run is better",
    ),
)
