"""Search efficiency: the search agent against random search and plain Optuna TPE.

Same target, same knobs and domains (the search agent's own :class:`Space`), same number of
experiments, several seeds. Every method is an :class:`~nightlab.agents.base.Agent` driven by the
same small in-process loop: propose -> apply the edits to the incumbent's text -> read the knobs
back with :func:`~nightlab.code.knobs.knob_values` -> run the target -> observe. A candidate is kept
when its measured metric beats the incumbent's (autoresearch's greedy rule), so for every method
the reported best is the configuration with the best measured value; the curves show that
configuration's *noise-free* loss, so luck on one noisy run earns nothing.

Run::

    .venv/bin/python benchmarks/search_efficiency.py                # synthetic target
    .venv/bin/python benchmarks/search_efficiency.py --seeds 3 --experiments 40

The version on the built-in cpu template runs the harness's full loop (real training, tens of
seconds an experiment on 2 cores), one process per method and seed (as many at a time as the
machine has cores to spare), then summarises the ledgers::

    printf "%s\\n" search-0 random-0 tpe-0 search-1 random-1 tpe-1 search-2 random-2 tpe-2 | \\
      xargs -P 2 -I{} sh -c 'm=${1%-*}; s=${1##*-}; OMP_NUM_THREADS=1 python \\
        benchmarks/search_efficiency.py --cpu-template /tmp/se --methods $m --seeds 1 \\
        --seed-start $s --experiments 16 --tokens 196608 --timeout 120' _ {}
    python benchmarks/search_efficiency.py --collect /tmp/se --experiments 16 --plot docs/search_efficiency_cpu.png
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nightlab.agents.registry import AGENTS  # noqa: E402
from nightlab.agents.search.agent import SearchAgent  # noqa: E402
from nightlab.agents.search.space import build_space  # noqa: E402
from nightlab.code.knobs import knob_values  # noqa: E402
from nightlab.config import Config, load_config  # noqa: E402
from nightlab.types import Context, Direction, Edit, HistoryEntry  # noqa: E402
from search_baselines import RandomAgent, TPEAgent  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "tests" / "fixtures" / "synthetic_target"
METHODS = ("search", "random", "tpe")


# ---------------------------------------------------------------------------------------------
# The in-process loop


def load_target(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"synthetic_target_{abs(hash(path))}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_edits(text: str, edits: list[Edit]) -> str:
    for edit in edits:
        if edit.search is None:
            text = edit.replace
        else:
            assert text.count(edit.search) == 1, f"edit does not apply exactly once: {edit.search!r}"
            text = text.replace(edit.search, edit.replace)
    return text


def drive(
    agent: Any, target: ModuleType, text: str, n: int, seed: int, baseline_runs: int = 3
) -> list[float]:
    """Run ``n`` experiments; the noise-free loss of the reported best after each one.

    The baseline is measured ``baseline_runs`` times (as the harness does) to give the noise
    floor every method sees; it is not counted as an experiment.
    """
    base_values = knob_values(text)
    base = [target.run(base_values, seed * 10_000 + r)[1] for r in range(baseline_runs)]
    noise = statistics.stdev(base) if len(base) > 1 else None
    incumbent_text, incumbent = text, statistics.fmean(base)
    best_value, best_config = incumbent, base_values
    history = [
        HistoryEntry(
            id=1,
            description="baseline",
            status="ok",
            decision="baseline",
            reason="",
            metric=incumbent,
            spread=None,
            runs=baseline_runs,
            delta=None,
        )
    ]
    agent.observe(history[0])
    if isinstance(agent, TPEAgent):
        agent.tell_baseline(build_space({"train.py": text}, agent.agent_config), incumbent)
    curve = []
    for i in range(n):
        context = Context(
            files={"train.py": incumbent_text},
            history=list(history),
            metric_name="val_loss",
            direction=Direction.MINIMIZE,
            best=incumbent,
            noise=noise,
            experiments_left=n - i,
        )
        proposal = agent.propose(context)
        if proposal is None:
            curve.append(target.true_loss(best_config))
            continue
        new_text = apply_edits(incumbent_text, proposal.edits)
        values = knob_values(new_text)
        status, metric, _ = target.run(values, seed * 10_000 + 100 + i)
        ok = status == "ok" and metric is not None and math.isfinite(metric)
        decision = "keep" if ok and metric < incumbent else ("discard" if ok else status)
        if decision == "keep":
            incumbent_text, incumbent = new_text, metric
        if ok and metric < best_value:
            best_value, best_config = metric, values
        entry = HistoryEntry(
            id=i + 2,
            description=proposal.description,
            status=status,
            decision=decision,
            reason="",
            metric=metric if ok else None,
            spread=None,
            runs=1,
            delta=(history[0].metric - metric) if ok else None,
            meta=json.loads(json.dumps(proposal.meta)),
        )
        history.append(entry)
        agent.observe(entry)
        curve.append(target.true_loss(best_config))
    return curve


def make_agent(kind: str, config: Config, seed: int) -> Any:
    if kind == "search":
        settings = AGENTS.settings(config.agent, "search").model_copy(update={"seed": seed})
        return SearchAgent(settings)
    if kind == "random":
        return RandomAgent(config, seed)
    return TPEAgent(config, seed)


def experiments_to_reach(curve: list[float], target_value: float, start: float | None = None) -> int | None:
    """1-based count of experiments after which ``curve`` is at or below ``target_value``;
    0 when ``start`` (the baseline, before any experiment) already is."""
    if start is not None and start <= target_value + 1e-12:
        return 0
    for i, value in enumerate(curve):
        if value <= target_value + 1e-12:
            return i + 1
    return None


class NeutralNames:
    """The synthetic target with its knobs renamed ``K1``, ``K2``, ...: no name tells the agent
    which knob is a learning rate or a ratio, so only the values and the results can guide it."""

    def __init__(self, target: ModuleType, text: str, config: Config) -> None:
        self.target = target
        self.names = {name: f"K{i + 1}" for i, name in enumerate(target.OPTIMUM)}
        self.back = {v: k for k, v in self.names.items()}
        self.optimum_loss = target.optimum_loss
        self.text = text
        for name, neutral in self.names.items():
            self.text = re.sub(rf"^{name} =", f"{neutral} =", self.text, flags=re.MULTILINE)
        settings = AGENTS.settings(config.agent, "search")
        space = {self.names.get(k, k): v for k, v in settings.space.items()}
        agent = config.agent.model_copy(deep=True)
        agent.model_extra.pop("space", None)
        agent.model_extra["search"] = {**settings.model_dump(exclude={"space"}), "space": space}
        self.config = config.model_copy(update={"agent": agent})

    def _original(self, values: dict) -> dict:
        return {self.back.get(k, k): v for k, v in values.items()}

    def run(self, values: dict, seed: int) -> tuple:
        return self.target.run(self._original(values), seed)

    def true_loss(self, values: dict) -> float:
        return self.target.true_loss(self._original(values))


def run_synthetic(seeds: int, experiments: int, methods: list[str], neutral: bool = False) -> dict:
    config = load_config(SYNTHETIC)
    text = (SYNTHETIC / "train.py").read_text()
    target: Any = load_target(SYNTHETIC / "train.py")
    if neutral:
        target = NeutralNames(target, text, config)
        text, config = target.text, target.config
    curves: dict[str, list[list[float]]] = {m: [] for m in methods}
    seconds: dict[str, float] = {m: 0.0 for m in methods}
    for seed in range(seeds):
        for method in methods:
            started = time.perf_counter()
            curves[method].append(drive(make_agent(method, config, seed), target, text, experiments, seed))
            seconds[method] += time.perf_counter() - started
            print(f"seed {seed} {method:7s} final {curves[method][-1][-1]:.4f}", file=sys.stderr, flush=True)
    return summarise(
        curves,
        experiments,
        "synthetic, neutral knob names" if neutral else "synthetic",
        {"baseline_loss": target.true_loss(knob_values(text)), "optimum_loss": target.optimum_loss},
        {m: seconds[m] / (seeds * experiments) for m in methods},
    )


def summarise(
    curves: dict[str, list[list[float]]],
    experiments: int,
    target: str,
    extra: dict,
    seconds_per_experiment: dict[str, float] | None = None,
) -> dict:
    """Median curves and experiments-to-reach-random's-final-best, per method, from per-seed curves."""
    methods = list(curves)
    seeds = min(len(cs) for cs in curves.values())
    median = {m: [statistics.median(c[i] for c in curves[m]) for i in range(experiments)] for m in methods}
    reference = median["random"][-1] if "random" in median else min(m[-1] for m in median.values())
    result = {"target": target, "seeds": seeds, "experiments": experiments, **extra}
    result.update({"random_final_median": reference, "methods": {}})
    start = extra.get("baseline_loss")  # random never beating the baseline makes this 0 for all
    for m in methods:
        per_seed = [experiments_to_reach(c, reference, start) for c in curves[m]]
        reached = [p for p in per_seed if p is not None]
        result["methods"][m] = {
            "median_curve": median[m],
            "final_median": median[m][-1],
            "to_reach_random_final_median_curve": experiments_to_reach(median[m], reference, start),
            "to_reach_per_seed": per_seed,
            "to_reach_per_seed_median": statistics.median(reached) if len(reached) > seeds / 2 else None,
            "seeds_reaching": len(reached),
            "seconds_per_experiment": (seconds_per_experiment or {}).get(m),
        }
    return result


def _plot(result: dict, out: Path) -> None:
    """Median best-so-far curves; as a log-scale gap to the optimum where the optimum is known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offset = result.get("optimum_loss", 0.0)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"search": "tab:green", "tpe": "tab:blue", "random": "tab:grey"}
    for m, r in result["methods"].items():
        curve = r["median_curve"]
        xs = range(1, len(curve) + 1)
        ax.step(xs, [v - offset for v in curve], where="post", label=m, color=colours.get(m))
    ax.axhline(
        result["random_final_median"] - offset, color="tab:grey", ls=":", lw=1, label="random's final best"
    )
    ax.set_xlabel("experiments")
    if "optimum_loss" in result:
        ax.set_yscale("log")
        ax.set_ylabel("true loss of the reported best − optimum")
    else:
        ax.axhline(result["baseline_loss"], color="black", ls="--", lw=1, label="baseline")
        ax.set_ylabel("measured val_bpb of the best so far")
    ax.set_title(f"{result['target'].capitalize()}: median of {result['seeds']} seeds")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _count(n: int | None) -> str:
    return "never" if n is None else str(n)


def markdown(result: dict) -> str:
    optimum = f", optimum {result['optimum_loss']:.4f}" if "optimum_loss" in result else ""
    lines = [
        f"{result['target'].capitalize()} ({result['seeds']} seeds, {result['experiments']} experiments each; baseline "
        f"{result['baseline_loss']:.4f}{optimum}; random search's final median best {result['random_final_median']:.4f}).",
        "",
        "| method | final median best | experiments to reach random's final best (median curve) "
        "| same, per seed | median over seeds (seeds reaching) | agent seconds / experiment |",
        "|---|---|---|---|---|---|",
    ]
    for m, r in result["methods"].items():
        per_seed = r["to_reach_per_seed_median"]
        seconds = r["seconds_per_experiment"]
        each = ", ".join(_count(n) for n in r["to_reach_per_seed"])
        lines.append(
            f"| {m} | {r['final_median']:.4f} | {_count(r['to_reach_random_final_median_curve'])} | {each} | "
            f"{per_seed if per_seed is not None else 'n/a'} ({r['seeds_reaching']}/{result['seeds']}) | "
            f"{f'{seconds:.3f}' if seconds is not None else 'n/a'} |"
        )
    if any("outcomes" in r for r in result["methods"].values()):
        lines += [
            "",
            "| method | final best per seed | first experiment better than the baseline by more than "
            "its sd, per seed | experiments: outcomes (all seeds) |",
            "|---|---|---|---|",
        ]
        for m, r in result["methods"].items():
            finals = ", ".join(f"{v:.4f}" for v in r["per_seed_final"])
            firsts = ", ".join(_count(n) for n in r["first_beyond_noise_per_seed"])
            counts = ", ".join(f"{k} {v}" for k, v in r["outcomes"].items())
            lines.append(f"| {m} | {finals} | {firsts} | {counts} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The built-in cpu template: needs the harness's full loop


def run_on_cpu_template(
    workdir: Path,
    seeds: int = 3,
    experiments: int = 20,
    tokens: int = 393_216,
    methods: tuple = METHODS,
    seed_start: int = 0,
    timeout: float | None = None,
) -> None:
    """The same comparison on the built-in cpu template under a token budget (real training).

    For each method and seed it writes a cpu-size workspace ``DIR/METHOD-SEED`` with
    ``nightlab init``, sets ``[budget] tokens`` (comparable across machines and loads) and the
    greedy policy (as the synthetic comparison does, so every method gets the same decisions),
    then runs the harness's own loop with that method's agent. Each experiment trains for real
    (about 35 s on 2 cores at the demo's 393,216 tokens), so the (method, seed) pairs are meant
    to run as separate processes side by side (``--seed-start`` / ``--methods``), and
    :func:`collect_cpu_template` reads the curves back from the workspaces' ledgers, finished
    or not. A workspace that already exists is resumed, not restarted. ``timeout`` caps each
    training run's wall time (``[budget] timeout``; the template's is 240 s): far-off random
    configurations (a 100M-parameter model) would otherwise take most of the benchmark's time.
    """
    from nightlab.research.loop import LoopLimits
    from nightlab.research.session import build_loop, open_session
    from nightlab.workspace.init import init_workspace

    for seed in range(seed_start, seed_start + seeds):
        for method in methods:
            root = Path(workdir) / f"{method}-{seed}"
            if not (root / "nightlab.toml").exists():
                init_workspace(root, size="cpu")
                toml = (root / "nightlab.toml").read_text()
                budget = {"tokens": str(tokens)} | ({"timeout": str(timeout)} if timeout else {})
                toml = _set_table(toml, "budget", budget, drop=("seconds",))
                toml = _set_table(toml, "policy", {"kind": '"greedy"'})
                toml = _set_table(toml, "agent", {"seed": str(seed)})
                (root / "nightlab.toml").write_text(toml)
                _git(root, "commit", "-qam", f"benchmark: {method}, seed {seed}, {tokens} tokens")
            session = open_session(root, tag=f"bench-{method}-{seed}")
            loop = build_loop(session)
            loop.agent = make_agent(method, session.config, seed)
            loop.run(LoopLimits(max_experiments=experiments))  # counts what a resumed tag already ran


def collect_cpu_template(workdir: Path, experiments: int) -> dict:
    """Median best-so-far curves from the ``METHOD-SEED`` workspaces under ``workdir``.

    The curve is the *measured* val_bpb of the best experiment so far (the baseline's mean
    before any experiment): there is no noise-free truth for a real training run. Workspaces
    that have not finished ``experiments`` yet count up to where they are.
    """
    from nightlab.store.ledger import Ledger

    curves: dict[str, list[list[float]]] = {}
    outcomes: dict[str, dict[str, int]] = {}
    firsts: dict[str, list[int | None]] = {}  # first experiment better than the baseline by > its sd
    baselines: list[float] = []
    for root in sorted(Path(workdir).iterdir()):
        ledger_path = root / ".nightlab" / "ledger.db"
        if not ledger_path.exists() or "-" not in root.name:
            continue
        method, seed = root.name.rsplit("-", 1)
        with Ledger(ledger_path) as ledger:
            history = ledger.history(f"bench-{method}-{seed}")
        best, curve, base, noise, first = math.inf, [], None, 0.0, None
        counts = outcomes.setdefault(method, {"beat the baseline": 0, "ok, not better": 0})
        for entry in history[: experiments + 1]:
            if entry.decision == "baseline":
                base, noise = entry.metric, entry.spread or 0.0
                baselines.append(base)
                best = min(best, base)  # the curve starts at the baseline
                continue
            if entry.status != "ok" or entry.metric is None:
                counts[entry.status] = counts.get(entry.status, 0) + 1
            else:
                better = base is not None and entry.metric < base
                counts["beat the baseline" if better else "ok, not better"] += 1
                if first is None and better and entry.metric < base - noise:
                    first = len(curve) + 1
                best = min(best, entry.metric)
            curve.append(best)
        if curve:
            curves.setdefault(method, []).append(curve)
            firsts.setdefault(method, []).append(first)
    n = min(len(c) for cs in curves.values() for c in cs)
    seeds = min(len(cs) for cs in curves.values())
    curves = {m: [c[:n] for c in cs[:seeds]] for m, cs in curves.items()}
    result = summarise(
        curves, n, "built-in cpu template, token budget", {"baseline_loss": statistics.fmean(baselines)}
    )
    for m, cs in curves.items():
        result["methods"][m]["per_seed_final"] = [c[-1] for c in cs]
        result["methods"][m]["outcomes"] = outcomes[m]
        result["methods"][m]["first_beyond_noise_per_seed"] = firsts[m][:seeds]
    return result


def _set_table(text: str, table: str, values: dict[str, str], drop: tuple = ()) -> str:
    """``key = value`` lines set (or added) inside ``[table]`` of a TOML text; ``drop`` keys removed."""
    lines, out, current, seen = text.splitlines(), [], None, set()

    def flush() -> None:
        if current == table:
            insert_at = len(out)
            while insert_at and not out[insert_at - 1].strip():
                insert_at -= 1
            out[insert_at:insert_at] = [f"{k} = {v}" for k, v in values.items() if k not in seen]

    for line in lines:
        header = line.strip().startswith("[") and line.strip().endswith("]")
        if header:
            flush()
            current = line.strip()[1:-1].strip()
        elif current == table and "=" in line:
            key = line.split("=", 1)[0].strip()
            if key in drop:
                continue
            if key in values:
                line, _ = f"{key} = {values[key]}", seen.add(key)
        out.append(line)
    flush()
    if table not in {ln.strip()[1:-1] for ln in lines if ln.strip().startswith("[")}:
        out += ["", f"[{table}]"] + [f"{k} = {v}" for k, v in values.items()]
    return "\n".join(out) + "\n"


def _git(root: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--experiments", type=int, default=80)
    parser.add_argument("--methods", default="search,random,tpe")
    parser.add_argument("--plot", type=Path, default=None, help="where to draw the median curves")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument(
        "--cpu-template",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the real-training comparison with workspaces in DIR (tens of seconds per experiment)",
    )
    parser.add_argument("--seed-start", type=int, default=0, help="first seed for --cpu-template")
    parser.add_argument("--timeout", type=float, default=None, help="seconds a --cpu-template run may take")
    parser.add_argument(
        "--collect",
        type=Path,
        default=None,
        metavar="DIR",
        help="summarise the --cpu-template workspaces in DIR",
    )
    parser.add_argument("--tokens", type=int, default=393_216, help="token budget per run for --cpu-template")
    parser.add_argument(
        "--neutral-names", action="store_true", help="rename the knobs K1..K9 so names give no hints"
    )
    args = parser.parse_args(argv)
    methods = tuple(args.methods.split(","))
    if args.cpu_template is not None:
        run_on_cpu_template(
            args.cpu_template,
            args.seeds,
            args.experiments,
            args.tokens,
            methods,
            args.seed_start,
            args.timeout,
        )
        return 0
    if args.collect is not None:
        result, plot = collect_cpu_template(args.collect, args.experiments), args.plot
    else:
        result = run_synthetic(args.seeds, args.experiments, list(methods), args.neutral_names)
        plot = args.plot or ROOT / "docs" / "search_efficiency.png"
    if plot:
        _plot(result, plot)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
