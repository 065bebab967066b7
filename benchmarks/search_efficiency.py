"""Search efficiency: the search agent against random search, Optuna TPE and Optuna CMA-ES.

Same target, same knobs and domains (the search agent's own :class:`Space`), same seeds, and
the same budget counted in **training runs**: a confirmation replicate costs the search agent
a run, exactly as it costs a night. Every method is an :class:`~nightlab.agents.base.Agent`
driven by the in-process loop of ``search_loop.py`` with nightlab's own decision policy: the
search agent under the harness's default (``confirm``: a change is kept only once significant,
up to 4 runs), the baselines one run per trial under ``greedy`` (their best measured
configuration is what they report, as Optuna's ``best_trial``). The curves show the noise-free
loss of what each method reports after every run, so luck on one noisy run earns nothing.

Run::

    .venv/bin/python benchmarks/search_efficiency.py                # synthetic target
    .venv/bin/python benchmarks/search_efficiency.py --seeds 3 --runs 40
    .venv/bin/python benchmarks/search_efficiency.py --methods search-greedy,random,tpe \\
        --baseline-runs 3 --runs 80                                 # the earlier per-experiment table

The built-in cpu template (real training, the harness's full loop) is ``search_cpu.py``; its
workspaces are summarised here with ``--collect DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scipy.stats import mannwhitneyu  # noqa: E402

from nightlab.agents.registry import AGENTS  # noqa: E402
from nightlab.agents.search.agent import SearchAgent  # noqa: E402
from nightlab.code.knobs import knob_values  # noqa: E402
from nightlab.config import Config, load_config  # noqa: E402
from nightlab.research.policy import ConfirmPolicy, GreedyPolicy, Policy  # noqa: E402
from search_baselines import CMAESAgent, RandomAgent, TPEAgent  # noqa: E402
from search_loop import NeutralNames, drive, load_target  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "tests" / "fixtures" / "synthetic_target"
METHODS = ("search", "search-greedy", "random", "tpe", "cmaes")
CLASSICAL = ("random", "tpe", "cmaes")
CHECKPOINTS = (10, 20, 30, 42, 60, 80, 120, 160)


def make_agent(kind: str, config: Config, seed: int) -> Any:
    if kind.startswith("search"):
        settings = AGENTS.settings(config.agent, "search").model_copy(update={"seed": seed})
        return SearchAgent(settings)
    return {"random": RandomAgent, "tpe": TPEAgent, "cmaes": CMAESAgent}[kind](config, seed)


def make_policy(kind: str, config: Config) -> Policy:
    """The harness's default policy for the search agent; one run per trial for the others."""
    if kind == "search":
        section = config.policy
        return ConfirmPolicy(
            section.confidence, section.max_runs, section.complexity_penalty, section.futility
        )
    return GreedyPolicy()


def run_synthetic(
    seeds: int,
    runs: int,
    methods: list[str],
    neutral: bool = False,
    baseline_runs: int = 2,
    first_seed: int = 0,
) -> dict:
    config = load_config(SYNTHETIC)
    text = (SYNTHETIC / "train.py").read_text()
    target: Any = load_target(SYNTHETIC / "train.py")
    if neutral:
        target = NeutralNames(target, text, config)
        text, config = target.text, target.config
    traces: dict[str, list] = {m: [] for m in methods}
    seconds: dict[str, float] = {m: 0.0 for m in methods}
    for seed in range(first_seed, first_seed + seeds):
        for method in methods:
            started = time.perf_counter()
            agent, policy = make_agent(method, config, seed), make_policy(method, config)
            trace = drive(agent, target, text, runs, seed, policy, config, baseline_runs)
            seconds[method] += time.perf_counter() - started
            traces[method].append(trace)
            print(
                f"seed {seed} {method:13s} final {trace.by_run[-1]:.4f} "
                f"({len(trace.runs_per_experiment)} experiments)",
                file=sys.stderr,
                flush=True,
            )
    result = summarise(
        {m: [t.by_run for t in ts] for m, ts in traces.items()},
        "synthetic, neutral knob names" if neutral else "synthetic",
        {"baseline_loss": target.true_loss(knob_values(text)), "optimum_loss": target.optimum_loss},
    )
    for m, ts in traces.items():
        experiments = [len(t.runs_per_experiment) for t in ts]
        result["methods"][m].update(
            experiments_median=statistics.median(experiments),
            runs_per_experiment=sum(sum(t.runs_per_experiment) for t in ts) / max(sum(experiments), 1),
            keeps=sum(t.keeps for t in ts),
            false_keeps=sum(t.false_keeps for t in ts),
            seconds_per_run=seconds[m] / (seeds * runs),
        )
    return result


def summarise(curves: dict[str, list[list[float]]], target: str, extra: dict) -> dict:
    """Quartiles over seeds at every run count, and how each method compares with the search agent.

    "Ahead" is judged on the whole distribution over seeds, not on one lucky seed: the median
    and the quartiles, and ``P(search < other)`` (the Mann-Whitney probability that a search
    seed ends truly better than another method's seed, ties counting half) with its one-sided
    p-value, at each checkpoint.
    """
    methods = list(curves)
    runs = min(len(c) for cs in curves.values() for c in cs)
    seeds = min(len(cs) for cs in curves.values())
    result: dict[str, Any] = {"target": target, "seeds": seeds, "runs": runs, **extra, "methods": {}}
    for m in methods:
        quartiles = [
            statistics.quantiles([c[i] for c in curves[m]], n=4, method="inclusive") for i in range(runs)
        ]
        result["methods"][m] = {
            "median_curve": [q[1] for q in quartiles],
            "q1_curve": [q[0] for q in quartiles],
            "q3_curve": [q[2] for q in quartiles],
            "final_per_seed": [c[runs - 1] for c in curves[m]],
        }
    classical = [m for m in methods if m in CLASSICAL]
    if classical:
        best = min(classical, key=lambda m: result["methods"][m]["median_curve"][-1])
        reference = result["methods"][best]["median_curve"][-1]
        result["reference"] = {"method": best, "value": reference}
        for m in methods:
            curve = result["methods"][m]["median_curve"]
            reached = next((i + 1 for i, v in enumerate(curve) if v <= reference + 1e-12), None)
            result["methods"][m]["runs_to_reference"] = reached
    checkpoints = sorted({c for c in CHECKPOINTS if c < runs} | {runs})
    result["checkpoints"] = checkpoints
    if "search" in curves:
        for m in methods:
            if m == "search":
                continue
            rows = []
            for c in checkpoints:
                ours, theirs = [x[c - 1] for x in curves["search"]], [x[c - 1] for x in curves[m]]
                test = mannwhitneyu(ours, theirs, alternative="less")
                wins = sum((a < b) + 0.5 * (a == b) for a in ours for b in theirs)
                rows.append({"runs": c, "p_better": wins / (len(ours) * len(theirs)), "p": test.pvalue})
            result["methods"][m]["against_search"] = rows
    return result


def _plot(result: dict, out: Path) -> None:
    """Median best-so-far curves with quartile bands; a log-scale gap where the optimum is known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offset = result.get("optimum_loss", 0.0)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = {
        "search": "tab:green",
        "search-greedy": "tab:olive",
        "tpe": "tab:blue",
        "cmaes": "tab:orange",
        "random": "tab:grey",
    }
    for m, r in result["methods"].items():
        xs = range(1, len(r["median_curve"]) + 1)
        colour = colours.get(m)
        ax.step(xs, [v - offset for v in r["median_curve"]], where="post", label=m, color=colour)
        low, high = ([v - offset for v in r[k]] for k in ("q1_curve", "q3_curve"))
        ax.fill_between(xs, low, high, step="post", color=colour, alpha=0.12, lw=0)
    ax.set_xlabel("training runs (confirmation replicates included; baseline runs excluded)")
    if "optimum_loss" in result:
        ax.set_yscale("log")
        ax.set_ylabel("true loss of the reported best − optimum")
    else:
        ax.axhline(result["baseline_loss"], color="black", ls="--", lw=1, label="baseline")
        ax.set_ylabel("measured metric of the reported best")
    ax.set_title(f"{result['target'].capitalize()}: median and quartiles of {result['seeds']} seeds")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _count(n: int | None) -> str:
    return "never" if n is None else str(n)


def markdown(result: dict) -> str:
    """The tables docs/BENCHMARKS.md quotes."""
    optimum = f", optimum {result['optimum_loss']:.4f}" if "optimum_loss" in result else ""
    checkpoints = result["checkpoints"]
    ref = result.get("reference")
    lines = [
        f"{result['target'].capitalize()}: {result['seeds']} seeds, {result['runs']} training runs each "
        f"after the baseline{optimum}; baseline {result['baseline_loss']:.4f}.",
        "",
        "Median [quartiles] of the reported best after N runs:",
        "",
        "| method | " + " | ".join(str(c) for c in checkpoints) + " |",
        "|---|" + "---|" * len(checkpoints),
    ]
    for m, r in result["methods"].items():
        cells = [
            f"{r['median_curve'][c - 1]:.4f} [{r['q1_curve'][c - 1]:.4f}, {r['q3_curve'][c - 1]:.4f}]"
            for c in checkpoints
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if ref:
        lines += [
            "",
            f"| method | runs for the median to reach {ref['method']}'s final median ({ref['value']:.4f}) "
            "| experiments (median) | runs per experiment | keeps (truly no better) | agent seconds / run |",
            "|---|---|---|---|---|---|",
        ]
        for m, r in result["methods"].items():
            if "keeps" not in r:
                lines.append(f"| {m} | {_count(r['runs_to_reference'])} | | | | |")
                continue
            lines.append(
                f"| {m} | {_count(r['runs_to_reference'])} | {r['experiments_median']:g} | "
                f"{r['runs_per_experiment']:.2f} | {r['keeps']} ({r['false_keeps']}) | {r['seconds_per_run']:.3f} |"
            )
    against = {m: r["against_search"] for m, r in result["methods"].items() if "against_search" in r}
    if against:
        lines += [
            "",
            "P(a search-agent seed ends truly better than one of METHOD), one-sided Mann-Whitney p:",
            "",
            "| against | " + " | ".join(str(c) for c in checkpoints) + " |",
            "|---|" + "---|" * len(checkpoints),
        ]
        for m, rows in against.items():
            lines.append(
                f"| {m} | " + " | ".join(f"{r['p_better']:.2f} (p={r['p']:.2g})" for r in rows) + " |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds first-seed .. first-seed+seeds-1 (other seeds: a check)",
    )
    parser.add_argument("--runs", type=int, default=80, help="training runs per method and seed")
    parser.add_argument("--methods", default="search,random,tpe,cmaes", help=f"from {', '.join(METHODS)}")
    parser.add_argument(
        "--baseline-runs", type=int, default=2, help="replicates of the baseline (not counted)"
    )
    parser.add_argument("--plot", type=Path, default=None, help="where to draw the median curves")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument(
        "--collect", type=Path, default=None, metavar="DIR", help="summarise search_cpu.py's workspaces"
    )
    parser.add_argument(
        "--neutral-names", action="store_true", help="rename the knobs K1..K9 so names give no hints"
    )
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r} (choose from {', '.join(METHODS)})")
    if args.collect is not None:
        from search_cpu import collect_cpu_template

        curves, extra = collect_cpu_template(args.collect, args.runs)
        result, plot = summarise(curves, "built-in cpu template, token budget", extra), args.plot
    else:
        result = run_synthetic(
            args.seeds, args.runs, methods, args.neutral_names, args.baseline_runs, args.first_seed
        )
        plot = args.plot or ROOT / "docs" / "search_efficiency.png"
    if plot:
        _plot(result, plot)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
