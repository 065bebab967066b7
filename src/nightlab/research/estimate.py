"""What a decision weighs, and what a kept change is worth once it is kept.

A change is kept because its runs looked good; among many candidates, the kept ones are those
whose noise happened to help (the winner's curse). Their selecting runs overstate the gain, and
an incumbent valued on them makes every later comparison too hard and the headline too rosy:
on the demo, a change kept at 1.2121 measured 1.2331 on three fresh seeds.

Fresh runs are not enough on their own: the runs later candidates are compared with are
selected on too (a candidate is kept more easily when the incumbent's runs look bad). So with
``[policy] remeasure = k`` a kept change runs 2k more times with fresh seeds before it becomes
the incumbent: k ``compare`` runs, the values later candidates are compared with, and k
``report`` runs that no decision ever sees, on which its recorded value and improvement rest
(the baseline gets k ``report`` runs too). benchmarks/winners_curse.py shows the reported
improvements are then unbiased, and how far off they are without. The keep itself stands: the
fresh runs estimate, they do not select again.
"""

from __future__ import annotations

import math

from nightlab.config import Config
from nightlab.formatting import decimals_for, signed
from nightlab.research.policy import Decision, Evidence, noise_for
from nightlab.stats import mean, noise_floor
from nightlab.store.ledger import Ledger
from nightlab.store.schema import ExperimentRow, RunRow

COMPARE = "compare"  # a fresh run of a kept change: what later candidates are compared with
REPORT = "report"  # a fresh run no decision sees: what the ledger reports


def evidence_for(
    ledger: Ledger, config: Config, tag: str, row: ExperimentRow, values: list[float], current: ExperimentRow
) -> Evidence:
    """The candidate's deciding runs against the incumbent it was proposed on (``current`` when
    that one is lost), valued on runs that did not select it."""
    base = ledger.incumbent_of(row) or current
    inc_values = ledger.estimate_metrics(base.id)
    floor = noise_floor(ledger.replicate_groups(tag))
    sd, df, note = noise_for(floor, values, inc_values, config.policy)
    return Evidence(
        candidate=values,
        incumbent=inc_values,
        direction=config.metric.direction,
        noise_sd=sd,
        noise_df=df,
        lines_added=row.lines_added or 0,
        lines_removed=row.lines_removed or 0,
        noise_note=note,
        candidate_seconds=ledger.seconds_per_run(row.id),
        incumbent_seconds=ledger.seconds_per_run(base.id),
        candidate_wall=ledger.seconds_per_run(row.id, wall=True),
        incumbent_wall=ledger.seconds_per_run(base.id, wall=True),
    )


def report_count(runs: list[RunRow]) -> int:
    """How many ok ``report`` runs an experiment has."""
    return sum(1 for r in runs if r.role == REPORT and r.status == "ok")


def fresh_roles(runs: list[RunRow], k: int) -> list[str | None]:
    """The fresh runs a kept change still needs, ``compare`` and ``report`` taking turns."""
    have = {role: sum(1 for r in runs if r.role == role and r.status == "ok") for role in (COMPARE, REPORT)}
    need = {role: max(0, k - have[role]) for role in have}
    out: list[str | None] = []
    while need[COMPARE] or need[REPORT]:
        for role in (COMPARE, REPORT):
            if need[role]:
                out.append(role)
                need[role] -= 1
    return out


def remeasured(ledger: Ledger, config: Config, tag: str, row: ExperimentRow, decision: Decision) -> Decision:
    """The keep ``decision`` with its improvement taken from ``report`` runs (the kept change's
    against the incumbent's), and a reason that says both: what selected it, what it is worth."""
    base = ledger.incumbent_of(row)
    fresh = _reported(ledger, row.id)
    if base is None or not fresh:
        return decision
    inc = _reported(ledger, base.id) or ledger.estimate_metrics(base.id)
    delta = config.metric.direction.improvement(mean(fresh), mean(inc))
    floor = noise_floor(ledger.replicate_groups(tag))
    # The noise the decision used: measured, or declared/assumed when replicates came out
    # identical (a script that ignores its seed), never a spread of zero read as certainty.
    sd, _, _ = noise_for(floor, fresh, inc, config.policy)
    se = sd * math.sqrt(1 / len(fresh) + 1 / len(inc)) if sd else None
    change = mean(fresh) - mean(inc)
    d = decimals_for(se if se else abs(change) or 1.0)
    spread = f" ± {se:.{d}f}" if se is not None else ""
    runs = f"{len(fresh)} fresh run{'s' * (len(fresh) != 1)}"
    reason = f"{decision.reason}; on {runs} no decision saw: Δ {signed(change, d)}{spread}"
    return Decision("keep", reason, delta, se, decision.p_value)


def _reported(ledger: Ledger, experiment_id: int) -> list[float]:
    return [r.metric for r in ledger.ok_runs(experiment_id) if r.role == REPORT and r.metric is not None]
