"""How far the improvement nightlab reports for a kept change is from the true one, with and
without fresh re-measurements of kept changes (``[policy] remeasure``).

Simulates whole nights the way the loop runs them (benchmarks/false_keep.py's noise model:
Student-t with 5 df, 2% outliers at three times the spread, unit sd): a baseline measured twice,
then candidates whose true effect is 0 for most and a real improvement for some; each runs until
the policy stops asking; a kept one becomes the incumbent. Before: a kept change's value is the
mean of the runs that selected it (what nightlab recorded until now). After: it runs
``remeasure`` more times with fresh seeds and its value is the mean of those alone; the keep
decision is the same. For every keep, the reported improvement over the incumbent it replaced is
compared with the true one; and at the end of each night, the headline (best against baseline).

    python benchmarks/winners_curse.py                # the figures in docs/BENCHMARKS.md
    python benchmarks/winners_curse.py --nights 100   # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from false_keep import noise  # noqa: E402
from nightlab.research.policy import ConfirmPolicy, Evidence, GreedyPolicy, Policy  # noqa: E402
from nightlab.stats import noise_floor  # noqa: E402
from nightlab.types import Direction  # noqa: E402

DIRECTION = Direction.MINIMIZE


def true_effect(rng: random.Random, share_real: float) -> float:
    """A candidate's true change of the metric (negative = better): most do nothing, some help
    by 0.5 to 2 noise sd, a few hurt."""
    roll = rng.random()
    if roll < share_real:
        return -rng.uniform(0.5, 2.0)
    if roll < share_real + 0.1:
        return rng.uniform(0.5, 2.0)
    return 0.0


def night(
    policy: Policy,
    rng: random.Random,
    candidates: int,
    remeasure: int,
    share_real: float,
    apart: bool = False,
) -> dict:
    """One night; the errors (reported minus true improvement) of its keeps and of its headline.

    ``apart``: the values reported come from runs of their own, never seen by the policy (the
    baseline's and each kept change's), besides the fresh runs later candidates are compared with.
    """
    true_incumbent = 0.0
    incumbent_runs = [noise(rng) for _ in range(2)]
    report_runs = [noise(rng) for _ in range(remeasure)] if apart else incumbent_runs
    baseline_value = statistics.mean(report_runs)
    groups = [list(incumbent_runs)]
    errors, runs_used = [], 2 + (remeasure if apart else 0)
    for _ in range(candidates):
        true_value = true_incumbent + true_effect(rng, share_real)
        runs: list[float] = []
        while True:
            runs.append(true_value + noise(rng))
            floor = noise_floor(groups)
            evidence = Evidence(
                list(runs), incumbent_runs, DIRECTION,
                noise_sd=floor.sd if floor else None, noise_df=floor.df if floor else None,
            )  # fmt: skip
            decision = policy.decide(evidence)
            if decision.action != "confirm":
                break
        runs_used += len(runs)
        if len(runs) >= 2:
            groups.append(list(runs))
        if decision.action != "keep":
            continue
        value_runs = runs
        if remeasure:
            value_runs = [true_value + noise(rng) for _ in range(remeasure)]
            runs_used += remeasure
            groups.append(runs + value_runs)
        new_report = value_runs
        if apart:
            new_report = [true_value + noise(rng) for _ in range(remeasure)]
            runs_used += remeasure
        reported = statistics.mean(report_runs) - statistics.mean(new_report)  # improvement > 0
        errors.append(reported - (true_incumbent - true_value))
        true_incumbent, incumbent_runs, report_runs = true_value, value_runs, new_report
    headline_reported = baseline_value - statistics.mean(report_runs)
    headline_true = 0.0 - true_incumbent
    return {"errors": errors, "headline_error": headline_reported - headline_true, "runs": runs_used,
            "headline_true": headline_true}  # fmt: skip


def summary(values: list[float]) -> dict:
    n = len(values)
    mean = statistics.mean(values) if values else float("nan")
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    return {"n": n, "mean": round(mean, 4), "ci95": [round(mean - 1.96 * se, 4), round(mean + 1.96 * se, 4)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=400)
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--share-real", type=float, default=0.2, help="candidates that truly help")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    policies = {"greedy": GreedyPolicy(), "confirm": ConfirmPolicy(confidence=0.95, max_runs=4)}
    out = {}
    for name, policy in policies.items():
        for remeasure, apart in ((0, False), (2, False), (3, False), (1, True), (2, True), (3, True)):
            rng = random.Random(args.seed)
            results = [
                night(policy, rng, args.candidates, remeasure, args.share_real, apart)
                for _ in range(args.nights)
            ]
            keeps = [e for r in results for e in r["errors"]]
            row = {
                "policy": name,
                "remeasure": remeasure,
                "reported_on_runs_apart": apart,
                "keep_error_sd_units": summary(keeps),
                "headline_error_sd_units": summary([r["headline_error"] for r in results]),
                "headline_true_mean": round(statistics.mean(r["headline_true"] for r in results), 3),
                "runs_per_night": round(statistics.mean(r["runs"] for r in results), 1),
            }
            out[f"{name}/{remeasure}/{apart}"] = row
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
