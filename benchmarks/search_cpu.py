"""The search-efficiency comparison on the built-in cpu template: real training, the harness's loop.

For each method and seed it writes a cpu-size workspace ``DIR/METHOD-SEED`` with ``nightlab
init``, sets ``[budget] tokens`` (so results do not depend on the machine's load) and a run
timeout, and runs the harness's own loop (real git, executor, separate evaluation, ledger) with
that method's agent until ``--runs`` training runs are spent after the baseline. The search
agent runs under the harness's default policy (``confirm``: its confirmation replicates count as
runs); the baselines under ``greedy``, one run per trial. Pruning is switched off for every
method, so each run is a whole training run. A workspace that already exists is resumed.

One training process at a time (one method and seed after another)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/search_cpu.py /tmp/se --methods search,tpe,cmaes \\
        --seeds 2 --runs 12 --tokens 196608 --timeout 120
    .venv/bin/python benchmarks/search_efficiency.py --collect /tmp/se --runs 12 \\
        --plot docs/search_efficiency_cpu.png

There is no noise-free truth for real training, so ``collect_cpu_template`` reports the
*measured* metric of each method's incumbent after every run: the mean of its replicates for the
search agent, one run for a baseline's best trial (a greedy best is the luckiest of its trials,
which flatters the baselines by about a noise sd).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nightlab.config import PolicySection  # noqa: E402
from nightlab.store.ledger import Ledger  # noqa: E402
from search_efficiency import make_agent  # noqa: E402


def run_on_cpu_template(
    workdir: Path,
    methods: list[str],
    seeds: list[int],
    runs: int,
    tokens: int,
    timeout: float | None,
) -> None:
    """Each (seed, method) session in turn, until ``runs`` runs after the baseline are spent."""
    from nightlab.research.loop import LoopLimits
    from nightlab.research.session import build_loop, open_session
    from nightlab.workspace.init import init_workspace

    for seed in seeds:
        for method in methods:
            root = Path(workdir) / f"{method}-{seed}"
            if not (root / "nightlab.toml").exists():
                init_workspace(root, size="cpu")
                toml = (root / "nightlab.toml").read_text()
                budget = {"tokens": str(tokens)} | ({"timeout": str(timeout)} if timeout else {})
                toml = set_table(toml, "budget", budget, drop=("seconds",))
                policy = {"kind": '"confirm"' if method == "search" else '"greedy"'}
                if "prune" in PolicySection.model_fields:
                    policy["prune"] = "false"
                toml = set_table(toml, "policy", policy)
                toml = set_table(toml, "agent", {"seed": str(seed)})
                (root / "nightlab.toml").write_text(toml)
                _git(root, "commit", "-qam", f"benchmark: {method}, seed {seed}, {tokens} tokens")
            session = open_session(root, tag=f"bench-{method}-{seed}")
            loop = build_loop(session, agent=make_agent(method, session.config, seed))
            tag = session.tag
            # A loop runs once (its agent's desk closes at the end): one run, which also stops
            # proposing once `runs` training runs are spent (an experiment in flight finishes).
            limit = loop._why_stop

            def why_stop(idle: bool, limit=limit, session=session, tag=tag) -> str | None:
                spent = runs_spent(session.ledger, tag)
                return limit(idle) or (f"{spent} runs spent" if spent >= runs else None)

            loop._why_stop = why_stop  # type: ignore[method-assign]
            outcome = loop.run(LoopLimits(max_experiments=runs))
            spent = runs_spent(session.ledger, tag)
            session.close()
            print(f"{root.name}: {spent} runs ({outcome.stopped_because})", file=sys.stderr, flush=True)


def runs_spent(ledger: Ledger, tag: str) -> int:
    """Training runs of the tag's candidates (the baseline's replicates are not counted)."""
    return sum(len(ledger.runs(e.id)) for e in ledger.research(tag) if e.kind != "baseline")


def collect_cpu_template(workdir: Path, runs: int) -> tuple[dict[str, list[list[float]]], dict]:
    """Per-run curves of the measured metric of each workspace's incumbent, by method.

    After each training run the curve holds the incumbent's value (its replicates' mean); a
    decision moves it after the experiment's last run. Workspaces that have not spent ``runs``
    yet are cut to the shortest, so every method is compared on the same number of runs.
    """
    curves: dict[str, list[list[float]]] = {}
    baselines: list[float] = []
    for root in sorted(Path(workdir).iterdir()):
        ledger_path = root / ".nightlab" / "ledger.db"
        if not ledger_path.exists() or "-" not in root.name:
            continue
        method, seed = root.name.rsplit("-", 1)
        with Ledger(ledger_path) as ledger:
            curve, incumbent = [], math.inf
            for row in ledger.research(f"bench-{method}-{seed}"):
                if row.kind == "baseline":
                    incumbent = row.metric_mean if row.metric_mean is not None else math.inf
                    baselines.append(incumbent)
                    continue
                if not row.finished_at:
                    break
                curve += [incumbent] * len(ledger.runs(row.id))
                if row.decision == "keep" and row.metric_mean is not None:
                    incumbent = curve[-1] = row.metric_mean
        if curve:
            curves.setdefault(method, []).append(curve[:runs])
    if not curves:
        raise SystemExit(f"error: no benchmark workspaces with a ledger under {workdir}")
    shortest = min(len(c) for cs in curves.values() for c in cs)
    curves = {m: [c[:shortest] for c in cs] for m, cs in curves.items()}
    return curves, {"baseline_loss": statistics.fmean(baselines)}


def set_table(text: str, table: str, values: dict[str, str], drop: tuple = ()) -> str:
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
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="where the METHOD-SEED workspaces go")
    parser.add_argument("--methods", default="search,tpe,cmaes")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--seed-start", type=int, default=0)
    parser.add_argument("--runs", type=int, default=12, help="training runs per session after the baseline")
    parser.add_argument("--tokens", type=int, default=196_608, help="[budget] tokens of every run")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a run may take")
    args = parser.parse_args(argv)
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    run_on_cpu_template(args.workdir, args.methods.split(","), seeds, args.runs, args.tokens, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
