"""Early stopping on the cpu demo: false prunes, and research per hour with and without pruning.

Three copies of the demo workspace (`nightlab demo`'s: cpu GPT template, a token budget, the
search agent, the confirm policy, the same seeds) research in turns, a block of minutes each,
so that all three see the same load on a shared machine:

- ``off``: ``[policy] prune = false``: every run trains to the end, no checkpoints;
- ``on``: the default (``[pruner] kind = "incumbent"``);
- ``observe``: checkpoints and progress as ``on``, but a pruner that never stops a run. Every
  configuration runs to completion, so each rule (incumbent, median, halving) is replayed
  offline on the recorded curves, exactly as it would have judged them live (the same points,
  the incumbent's curves and the noise floor as they were when the run started). A false prune
  is a run a rule would have stopped whose experiment was kept; the share is given with its
  95% Clopper-Pearson interval. Also counted: stopped runs whose first run ended better than the
  incumbent's mean (kept or not), and the training time the rule would have saved.

Reported per arm: experiments and runs per hour, kept changes, the best val_bpb and its holdout
at the end of the same wall time.

    .venv/bin/python benchmarks/pruning.py --minutes 15 --blocks 3 --out /tmp/pruning
    .venv/bin/python benchmarks/pruning.py --replay /tmp/pruning/observe   # the replay only
    .venv/bin/python benchmarks/pruning.py --arms observe --minutes 105 --blocks 1 --budget demo \
        --out /tmp/prune_obs                     # false prunes at the demo's own FLOPs budget
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from nightlab.events import EventSink
from nightlab.plugins import Kind, Settings
from nightlab.research.loop import LoopLimits
from nightlab.research.progress import Point
from nightlab.research.prune_rules import HalvingPruner, MedianPruner
from nightlab.research.pruning import PRUNERS, IncumbentCurvePruner, Pruner, PruneSetup
from nightlab.research.session import build_loop, open_session
from nightlab.stats import noise_floor
from nightlab.types import Direction

TAG = "bench"
TOKENS = 393216  # 96 optimizer steps of the cpu size, ~20 s of training on 2 idle cores


class IncumbentOnly(IncumbentCurvePruner):
    """The first version of the default rule: the incumbent's curve and the noise, no median guard."""

    def judge(self, mine: float, checkpoint: float) -> dict | None:
        reference = self.margin(checkpoint)
        if reference is None:
            return None
        theirs, margin = reference
        gap = self.setup.direction.improvement(theirs, mine)
        return {"incumbent": theirs, "margin": margin, "gap": gap} if gap > margin else None


RULES = {
    "incumbent": lambda setup: IncumbentCurvePruner(setup, startup=5),
    "incumbent-only": lambda setup: IncumbentOnly(setup),
    "median": lambda setup: MedianPruner(setup, startup=5),
    "halving": lambda setup: HalvingPruner(setup, reduction=4),
}


class NeverPruner(Pruner):
    """Asks for checkpoints like any pruner and never stops a run (the observe arm)."""

    def should_stop(self, points: list[Point]) -> str | None:
        return None


def prepare(out: Path, arms: list[str], budget: str = "tokens") -> dict[str, Path]:
    """The demo workspace once, then one clone per arm with its pruning settings.

    ``budget`` is ``tokens`` (the issue's throughput comparison) or ``demo`` (the demo's own
    FLOPs budget, as ``make run`` researches: shorter, noisier runs).
    """
    from nightlab.cli.demo import prepare_demo_workspace
    from nightlab.workspace.init import commit_all, set_toml_value

    base = out / "base"
    if not base.exists():
        prepare_demo_workspace(base, Console(stderr=True))
    paths = {}
    for arm in arms:
        path = out / arm
        if not path.exists():
            subprocess.run(["git", "clone", "-q", str(base), str(path)], check=True)
            toml = path / "nightlab.toml"
            # A token budget, as the issue asks (the demo's is FLOPs): the same work per run
            # whatever the load, and the fraction of the budget is the fraction of tokens.
            text = toml.read_text()
            if budget == "tokens":
                text = re.sub(r"(?m)^flops = .*\n", "", text)
                text = set_toml_value(text, "budget", "tokens", TOKENS)
            if arm == "off":
                text = set_toml_value(text, "policy", "prune", False)
            if arm == "observe":
                text += '\n[pruner]\nkind = "never"\n'
            if text != toml.read_text():
                toml.write_text(text)
                commit_all(path, f"benchmark arm {arm}", paths=["nightlab.toml"])
        paths[arm] = path
    return paths


def research(path: Path, minutes: float) -> float:
    """One block of research on ``path`` (resuming its session); returns its wall seconds."""
    session = open_session(path, tag=TAG, agent_kind="search")
    loop = build_loop(session, events=EventSink())
    started = time.perf_counter()
    try:
        loop.run(LoopLimits(hours=minutes / 60))
    finally:
        session.close()
    return time.perf_counter() - started


def _rows(path: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    con = sqlite3.connect(path / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    exps = [dict(r) for r in con.execute("SELECT * FROM experiments WHERE tag = ? ORDER BY id", (TAG,))]
    runs: dict[int, list[dict]] = {}
    for r in con.execute("SELECT * FROM runs ORDER BY experiment_id, replicate"):
        runs.setdefault(r["experiment_id"], []).append(dict(r))
    con.close()
    return exps, runs


def _curve(run: dict) -> list[Point]:
    return [Point.from_dict(p) for p in json.loads(run.get("progress_json") or "[]")]


def summarize(path: Path, wall: float) -> dict:
    """Experiments and runs per hour, kept changes, the best and its holdout, for one arm."""
    exps, runs = _rows(path)
    candidates = [e for e in exps if e["kind"] == "candidate" and e["status"] not in ("running", "skipped")]
    all_runs = [r for e in exps for r in runs.get(e["id"], [])]
    kept = [e for e in exps if e["decision"] == "keep"]
    best = kept[-1] if kept else next((e for e in exps if e["decision"] == "baseline"), None)
    training = sum(r["training_seconds"] or 0.0 for r in all_runs)
    return {
        "wall_minutes": round(wall / 60, 2),
        "experiments": len(candidates),
        "pruned": sum(1 for e in candidates if e["status"] == "pruned"),
        "runs": len(all_runs),
        "experiments_per_hour": round(len(candidates) / (wall / 3600), 1) if wall else None,
        "runs_per_hour": round(len(all_runs) / (wall / 3600), 1) if wall else None,
        "training_share": round(training / wall, 3) if wall else None,
        "kept": [e["description"] for e in kept],
        "best_val_bpb": best["metric_mean"] if best else None,
        "best_holdout": best["holdout_mean"] if best else None,
    }


def replay(path: Path) -> dict:
    """Each rule replayed on the observe arm's completed curves, as it would have judged live."""
    exps, runs = _rows(path)
    by_id = {e["id"]: e for e in exps}
    direction = Direction.MINIMIZE
    out: dict[str, dict] = {}
    for name, build in RULES.items():
        judged = stopped = false = better = 0
        saved = spent = 0.0
        cases = []
        for e in exps:
            if e["kind"] != "candidate" or not runs.get(e["id"]) or e["status"] in ("running", "skipped"):
                continue
            first = runs[e["id"]][0]
            curve = _curve(first)
            incumbent = by_id.get(e["incumbent_id"] or -1)
            if first["status"] != "ok" or not curve or incumbent is None:
                continue
            earlier = [
                x
                for x in exps
                if x["id"] < e["id"] and x["finished_at"] and x["finished_at"] <= e["created_at"]
            ]
            reference = [_curve(r) for r in runs.get(incumbent["id"], []) if r["status"] == "ok"]
            # One curve per finished experiment (its first complete run), as completed_curves.
            others = [
                next((c for r in runs.get(x["id"], []) if r["status"] == "ok" and (c := _curve(r))), [])
                for x in earlier
            ]
            groups = [[r["metric"] for r in runs.get(x["id"], []) if r["status"] == "ok"] for x in earlier]
            setup = PruneSetup(
                reference=[c for c in reference if c],
                direction=direction,
                checkpoints=[0.25, 0.5, 0.75],
                confidence=0.99,
                floor=noise_floor([g for g in groups if len(g) >= 2]),
                metric_name="val_bpb",
                others=[c for c in others if c],
            )
            pruner = build(setup)
            judged += 1
            spent += first["training_seconds"] or 0.0
            verdict = None
            for i in range(1, len(curve) + 1):
                verdict = pruner.should_stop(curve[:i])
                if verdict:
                    break
            if not verdict:
                continue
            stopped += 1
            at = (pruner.evidence or {}).get("at", 1.0)
            saved += (first["training_seconds"] or 0.0) * (1 - at)
            kept = e["decision"] == "keep"
            false += kept
            ahead = incumbent["metric_mean"] is not None and first["metric"] < incumbent["metric_mean"]
            better += ahead
            cases.append(
                {"id": e["id"], "description": e["description"], "at": at, "kept": kept, "ahead": ahead}
            )
        low, high = clopper_pearson(false, stopped)
        out[name] = {
            "judged": judged,
            "stopped": stopped,
            "false_prunes": false,
            "false_prune_share": round(false / stopped, 3) if stopped else None,
            "false_prune_95ci": [round(low, 3), round(high, 3)],
            "stopped_ahead_of_incumbent": better,
            "training_saved_share": round(saved / spent, 3) if spent else None,
            "cases": cases,
        }
    return out


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact binomial interval for k successes in n trials."""
    from scipy.stats import beta

    if n == 0:
        return 0.0, 1.0
    alpha = 1 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/nightlab-pruning"))
    parser.add_argument("--minutes", type=float, default=15, help="research minutes per arm, in all")
    parser.add_argument("--blocks", type=int, default=3, help="turns each arm gets")
    parser.add_argument("--arms", default="off,on,observe")
    parser.add_argument(
        "--budget", choices=("tokens", "demo"), default="tokens", help="a token budget, or the demo's FLOPs"
    )
    parser.add_argument("--replay", type=Path, help="only replay the rules on this observe workspace")
    args = parser.parse_args()
    PRUNERS.add(
        Kind("never", lambda settings, setup: NeverPruner(), Settings, "records curves, stops nothing")
    )
    if args.replay:
        print(json.dumps(replay(args.replay), indent=2))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [a for a in args.arms.split(",") if a]
    paths = prepare(args.out, chosen, args.budget)
    walls = dict.fromkeys(chosen, 0.0)
    for block in range(args.blocks):
        for arm in chosen:
            walls[arm] += research(paths[arm], args.minutes / args.blocks)
            print(f"block {block + 1}/{args.blocks} {arm}: {walls[arm] / 60:.1f} min so far", file=sys.stderr)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    result = {
        "minutes_per_arm": args.minutes,
        "budget": args.budget,
        "blocks": args.blocks,
        "loadavg_at_end": load,
        "arms": {arm: summarize(paths[arm], walls[arm]) for arm in chosen},
    }
    if "observe" in chosen:
        result["replay"] = replay(paths["observe"])
    if "on" in chosen and "off" in chosen:
        on, off = result["arms"]["on"], result["arms"]["off"]
        if off["experiments_per_hour"]:
            result["experiments_per_hour_ratio"] = round(
                on["experiments_per_hour"] / off["experiments_per_hour"], 2
            )
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    shutil.rmtree(args.out / "base" / ".nightlab" / "runs", ignore_errors=True)


if __name__ == "__main__":
    main()
