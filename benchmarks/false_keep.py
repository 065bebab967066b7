"""How often does each policy keep a change that does nothing, and how often a real one?

Simulates whole nights the way the loop runs them: a baseline measured ``baseline_runs`` times,
then a stream of candidates; each candidate runs until the policy stops asking for more; a kept
candidate becomes the incumbent (its replicates are the incumbent's estimate from then on); the
noise floor is pooled from the replicate groups of finished experiments, as
``Ledger.replicate_groups`` + ``stats.noise_floor`` do in a real run.

The noise model is deliberately not textbook-normal: run-to-run noise is Student-t with 5 degrees
of freedom (heavier tails than GPU nondeterminism usually shows), scaled to unit sd, and 2% of
runs are outliers with three times the spread (a slow node, a bad data shard).

    python benchmarks/false_keep.py                 # the figures in docs/BENCHMARKS.md
    python benchmarks/false_keep.py --nights 50     # quicker

Reports, for greedy and confirm (confidence 0.95, max_runs 4, as configured by default):
  * the false-keep rate: the share of no-effect candidates kept, over many nights;
  * the power: the share of candidates with a true improvement of 1 and 2 noise sd kept;
  * the runs spent per candidate.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass

from nightlab.research.policy import ConfirmPolicy, Evidence, GreedyPolicy
from nightlab.stats import noise_floor
from nightlab.types import Direction

DIRECTION = Direction.MINIMIZE  # like val_bpb: lower is better


def noise(rng: random.Random) -> float:
    """One run's deviation from the code's true metric: unit sd, heavy tails, rare outliers."""
    nu = 5
    chi2 = sum(rng.gauss(0.0, 1.0) ** 2 for _ in range(nu))
    t = rng.gauss(0.0, 1.0) / math.sqrt(chi2 / nu) / math.sqrt(nu / (nu - 2))
    return t * (3.0 if rng.random() < 0.02 else 1.0)


@dataclass
class Tally:
    candidates: int = 0
    kept: int = 0
    runs: int = 0

    @property
    def rate(self) -> float:
        return self.kept / self.candidates if self.candidates else 0.0

    @property
    def runs_per_candidate(self) -> float:
        return self.runs / self.candidates if self.candidates else 0.0


def run_candidate(
    policy, rng: random.Random, true_value: float, incumbent: list[float], groups, pass_df: bool
):  # noqa: ANN001
    """Run one candidate until the policy stops asking for more; (decision, its runs)."""
    runs: list[float] = []
    while True:
        runs.append(true_value + noise(rng))
        floor = noise_floor(groups)
        evidence = Evidence(
            list(runs),
            incumbent,
            DIRECTION,
            noise_sd=floor.sd if floor else None,
            noise_df=(floor.df if floor and pass_df else None),
        )
        decision = policy.decide(evidence)
        if decision.action != "confirm":
            return decision, runs


def decisions(
    policy, trials: int, effect: float, floor_pairs: int, seed: int, incumbent_runs: int = 2
) -> Tally:  # noqa: ANN001
    """Independent decisions: a fresh incumbent, a floor of ``floor_pairs`` replicate groups
    (the incumbent's included), one candidate truly better by ``effect`` noise sd."""
    rng = random.Random(seed)
    tally = Tally()
    for _ in range(trials):
        incumbent = [noise(rng) for _ in range(incumbent_runs)]
        groups = [incumbent] + [[noise(rng), noise(rng)] for _ in range(floor_pairs - 1)]
        decision, runs = run_candidate(policy, rng, -effect, incumbent, groups, pass_df=True)
        tally.candidates += 1
        tally.runs += len(runs)
        tally.kept += decision.action == "keep"
    return tally


def nights(policy, count: int, candidates: int, seed: int, pass_df: bool = True) -> Tally:  # noqa: ANN001
    """Whole nights of no-op candidates from a cold start (the floor is the baseline pair).

    A kept no-op becomes the incumbent with its lucky replicates, which makes the next no-ops
    harder to keep (the winner's curse works against later false keeps): that is why greedy's
    rate per night is far below its 50% per decision.
    """
    rng = random.Random(seed)
    tally = Tally()
    for _ in range(count):
        incumbent = [noise(rng) for _ in range(2)]
        groups = [list(incumbent)]
        for _ in range(candidates):
            decision, runs = run_candidate(policy, rng, 0.0, incumbent, groups, pass_df)
            tally.candidates += 1
            tally.runs += len(runs)
            if len(runs) >= 2:
                groups.append(runs)
            if decision.action == "keep":
                tally.kept += 1
                incumbent = runs
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10000, help="independent decisions per cell")
    parser.add_argument("--nights", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=50, help="candidates per night")
    parser.add_argument("--floor-pairs", type=int, default=10, help="replicate pairs in the noise floor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()

    policies = {
        "greedy": GreedyPolicy(),
        "confirm (0.95, max_runs 4)": ConfirmPolicy(confidence=0.95, max_runs=4),
        "confirm (0.95, max_runs 4, futility 0.1)": ConfirmPolicy(confidence=0.95, max_runs=4, futility=0.1),
        "confirm (0.95, max_runs 8)": ConfirmPolicy(confidence=0.95, max_runs=8),
    }
    started = time.perf_counter()
    results: dict[str, dict] = {}
    for name, policy in policies.items():
        row = {}
        for label, effect in (("null", 0.0), ("1sd", 1.0), ("2sd", 2.0)):
            row[label] = decisions(policy, args.trials, effect, args.floor_pairs, args.seed)
        row["cold_null"] = decisions(policy, args.trials, 0.0, 1, args.seed)
        if name != "greedy":  # how much a better-measured incumbent buys
            for label, effect in (("null_inc4", 0.0), ("1sd_inc4", 1.0), ("2sd_inc4", 2.0)):
                row[label] = decisions(
                    policy, args.trials, effect, args.floor_pairs, args.seed, incumbent_runs=4
                )
        row["night"] = nights(policy, args.nights, args.candidates, args.seed)
        row["night_no_df"] = nights(policy, args.nights, args.candidates, args.seed, pass_df=False)
        results[name] = {k: {"rate": t.rate, "candidates": t.candidates, "runs_per_candidate": t.runs_per_candidate}
                         for k, t in row.items()}  # fmt: skip
    elapsed = time.perf_counter() - started

    if args.json:
        print(json.dumps({"args": vars(args), "seconds": elapsed, "results": results}, indent=2))
        return
    print(f"{args.trials} decisions per cell (floor of {args.floor_pairs} pairs); {args.nights} nights x "
          f"{args.candidates} no-op candidates; seed {args.seed}; {elapsed:.0f} s")  # fmt: skip
    print()
    print("| policy | false keeps, per decision | cold floor (1 pair) | per night, no-ops only "
          "| power, +1 sd | power, +2 sd | runs per no-op | runs per +2 sd |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['null']['rate']:.1%} | {r['cold_null']['rate']:.1%} | {r['night']['rate']:.1%} "
            f"| {r['1sd']['rate']:.1%} | {r['2sd']['rate']:.1%} | {r['null']['runs_per_candidate']:.2f} "
            f"| {r['2sd']['runs_per_candidate']:.2f} |"
        )
    print()
    for name, r in results.items():
        if name != "greedy":
            print(f"{name}, loop passing no noise_df: {r['night_no_df']['rate']:.1%} false keeps per night")
            print(f"{name}, incumbent measured 4 times: false keeps {r['null_inc4']['rate']:.1%}, "
                  f"power +1 sd {r['1sd_inc4']['rate']:.1%}, +2 sd {r['2sd_inc4']['rate']:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
