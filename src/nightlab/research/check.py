"""``nightlab check``: would a night on this target be honest? The first thing a new user runs.

It does what a night does, briefly: the setup, then the target twice with two seeds at a short
budget, through the same runner, frozen check and evaluation as ``nightlab run``. Each finding
says what is wrong and how to fix it; the night is honest only when every one passes:

- knobs: what the search agent would search, and where it found it;
- the metric: parsed from where the configuration says (or the log lines where it was expected);
- the seed: two seeds give two results (identical results mean ``NIGHTLAB_SEED`` is ignored);
- the budget: a run trains about as long as ``NIGHTLAB_BUDGET_SECONDS`` says, not longer (or the
  steps, tokens or FLOPs its summary block says it trained); where the run does not say how
  much it trained, the finding says it was not checked;
- the worktree: the run writes nothing outside its run directory and declared outputs;
- time: per run, per evaluation when there is one, and the share of a run's time that training
  gets (at the night's budget).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nightlab.agents.registry import AGENTS
from nightlab.agents.search.describe import why_empty
from nightlab.agents.search.space import build_space
from nightlab.code.knobs import find_knobs
from nightlab.config import BudgetConfig
from nightlab.executor import sandbox
from nightlab.formatting import with_status
from nightlab.research.context import editable_texts
from nightlab.research.runner import WARM_METRIC, Replicate
from nightlab.research.session import Session
from nightlab.types import TRAIN_LOG, RunStatus

CHECK_WORKTREE = "check"
SEEDS = (1, 2)
# A run may take this much longer than its budget (start-up, data, export, evaluation) before
# the budget counts as ignored.
BUDGET_SLACK = 3.0
BUDGET_GRACE_SECONDS = 30.0


@dataclass
class Finding:
    """One line of the check: what was looked at, whether it passed, and the fix when not.

    ``checked`` is False for a finding that fails nothing only because what it looks at could
    not be seen (a budget the runs print no count of): not a pass, and the report says so."""

    what: str
    ok: bool
    detail: str
    checked: bool = True


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)

    @property
    def honest(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def unchecked(self) -> list[str]:
        """What could not be checked (``budget``), in the order found."""
        return [f.what for f in self.findings if f.ok and not f.checked]

    def add(self, what: str, ok: bool, detail: str, checked: bool = True) -> None:
        self.findings.append(Finding(what, ok, detail, checked))


def check_target(session: Session, seconds: float) -> CheckReport:
    """Run the checks on the workspace's HEAD with a training budget of ``seconds``."""
    report = CheckReport()
    config = session.config
    session.check_runnable()
    head = session.workspace.head_commit()
    _knobs(session, head, report)
    budget = _short_budget(config.budget, seconds)
    runner = session.runner(CHECK_WORKTREE, head).with_config(config.model_copy(update={"budget": budget}))
    replicates = []
    for i, seed in enumerate(SEEDS):
        run_dir = session.workspace.state_dir / "check" / str(i)
        replicates.append(runner.run(0, i, head, seed, run_dir=run_dir))
    _runs(session, replicates, budget, report)
    _uncommitted(session, report)
    return report


def _names_seed(session: Session) -> bool:
    """Whether the run command or any committed file of the workspace names ``NIGHTLAB_SEED``."""
    return "NIGHTLAB_SEED" in session.config.target.run or session.workspace.mentions(
        session.workspace.head_commit(), "NIGHTLAB_SEED"
    )


def _seed_fix(session: Session) -> str:
    """How to get the seed into the script: through its own seed option where it has one (a
    frozen train.py with an editable arguments file cannot take the code edit), else in code."""
    run = session.config.target.run
    files = editable_texts(session.config, session.workspace, session.workspace.head_commit())
    for path, text in files.items():
        for knob in find_knobs(text, path):
            if not re.search(r"(?:^|[._])seed$", knob.name, re.IGNORECASE):
                continue
            flag = max((f for f in knob.flags if f.startswith("--")), key=len, default=None)
            if flag is None and knob.source == "dataclass":  # parsed into options by the script's parser
                flag = f"--{knob.name}"
            if flag is None:
                continue
            if re.search(rf"(?:^|\s){re.escape(flag)}(?:[=\s]|$)", run):
                return f"the run command sets {flag} to a fixed value: give it $NIGHTLAB_SEED instead"
            return f'pass it to the script\'s own option: run = "{run} {flag} $NIGHTLAB_SEED"'
    return "seed its random generators from it (e.g. torch.manual_seed(int(os.environ['NIGHTLAB_SEED'])))"


def _uncommitted(session: Session, report: CheckReport) -> None:
    """The check runs the committed files (as a night does) with the nightlab.toml on disk; a
    night refuses to start on uncommitted changes, so a pass would promise what it cannot keep."""
    dirty = session.workspace.dirty_files()
    if dirty:
        shown = ", ".join(dirty[:5]) + (f", and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        report.add(
            "commit",
            False,
            f"uncommitted changes ({shown}): the runs above used the committed files and the "
            "nightlab.toml on disk; commit them (nightlab run refuses to start until they are) and "
            "check again",
        )


def _short_budget(budget: BudgetConfig, seconds: float) -> BudgetConfig:
    """The configured budget cut to ``seconds`` of training, with a timeout that lets a run that
    ignores its budget show it without running for the whole night."""
    if budget.seconds is None:
        return budget  # a tokens or steps budget is already machine-independent: keep it
    short = min(budget.seconds, seconds)
    timeout = min(budget.timeout, max(BUDGET_SLACK * short, short + BUDGET_GRACE_SECONDS) + 60)
    return budget.model_copy(update={"seconds": short, "timeout": timeout})


def _knobs(session: Session, head: str, report: CheckReport) -> None:
    files = editable_texts(session.config, session.workspace, head)
    space = build_space(
        files, AGENTS.settings(session.config.agent, "search"), command=session.config.target.run
    )
    problem = why_empty(space, files)
    where = sorted({f"{k.path} ({k.source})" for k in space.knobs.values()})
    searched = ", ".join(d.key for d in space.dims[:12]) + (" ..." if len(space.dims) > 12 else "")
    detail = (
        problem
        or f"{len(space.dims)} searched ({searched}) in {', '.join(where)}; {len(space.pinned)} pinned"
    )
    report.add("knobs", problem is None, detail)


def _runs(session: Session, replicates: list[Replicate], budget: BudgetConfig, report: CheckReport) -> None:
    config = session.config
    failed = [r for r in replicates if r.result.status is not RunStatus.OK]
    for rep in failed:
        reason = with_status(rep.result.status.value, rep.result.reason)
        report.add("run", False, f"{reason} (log: {rep.run_dir / TRAIN_LOG})")
    ok = [r for r in replicates if r.ok]
    if len(failed) == len(replicates):
        return
    values = [r.metric for r in ok]
    source = f"{config.metric.file} in the run directory" if config.metric.source == "json" else "the log"
    report.add(
        "metric",
        bool(values),
        f"{config.metric.name} = {', '.join(f'{v:.6g}' for v in values)} from {source}",
    )
    if len(ok) == len(SEEDS):
        same = len(set(values)) == 1
        differ = f"two seeds gave two results (a difference of {abs(values[0] - values[1]):.3g})"
        # A fixed seed in a loop bounded by time still gives two results (timing, threads): the
        # seed can only reach the script through a file or the command that names it.
        unread = not same and not _names_seed(session)
        detail = (
            f"seeds {SEEDS[0]} and {SEEDS[1]} gave the identical {values[0]:.6g}: the script ignores "
            f"NIGHTLAB_SEED; {_seed_fix(session)}, or declare [policy] noise_sd"
            if same
            else f"{differ}, but neither the run command nor a committed file names NIGHTLAB_SEED, so "
            f"both ran the script's own seed and differ by timing, not seed: {_seed_fix(session)}"
            if unread
            else differ
        )
        report.add("seed", not (same or unread), detail)
    _budget(replicates, budget, report)
    if config.policy.prune:
        _progress(ok, report)
    walls = [r.result.total_seconds for r in replicates]
    evals = [r.result.metrics.get("eval_total_seconds") for r in replicates]
    timing = f"{max(walls):.1f} s per run"
    if any(e is not None for e in evals):
        timing += f", of which {max(e for e in evals if e is not None):.1f} s evaluation"
        warm = [r for r in replicates if r.result.metrics.get(WARM_METRIC)]
        if warm:
            timing += " (by the warm progress evaluator)"
        elif config.target.warm_evaluate:
            timing += " in a process of its own: warm_evaluate is set, but " + (
                "there is no sandbox ([run] sandbox)"
                if sandbox.check(config.run.sandbox) is None
                else f"the progress evaluator wrote no {config.metric.file} after progress.final "
                "(docs/CONFIG.md, warm_evaluate)"
            )
    share = _training_share(replicates, config.budget)
    if share:
        timing += f"; {share}"
    report.add("time", True, timing)


def _training_share(replicates: list[Replicate], night: BudgetConfig) -> str:
    """How much of a run's wall time training gets: the rest (start-up, checkpoints, export,
    evaluation) is paid once per run, so short runs spend most of a night outside training.
    Under a budget in seconds the check trained less than a night will, so the share is worked
    out for the night's budget from the time outside training measured here."""
    pairs = [
        (r.result.training_seconds, r.result.total_seconds)
        for r in replicates
        if r.result.training_seconds and r.result.total_seconds
    ]
    if not pairs:
        return ""
    trained, wall = min(pairs, key=lambda p: p[1] - p[0])  # the run least slowed by anything else
    outside = max(wall - trained, 0.0)
    if night.seconds is None:
        return f"training {trained:.1f} s of it ({trained / wall:.0%}); {outside:.1f} s outside training"
    share = night.seconds / (night.seconds + outside)
    return (
        f"{outside:.1f} s of a run is outside training (start-up, checkpoints, evaluation): at the "
        f"night's {night.seconds:g} s budget a run trains about {share:.0%} of its time"
    )


def _progress(ok: list[Replicate], report: CheckReport) -> None:
    """Whether hopeless runs can be stopped early: only if runs leave progress points. Not a
    matter of honesty (a night without pruning is as honest, only slower), so never a failure."""
    counts = [sum(1 for p in r.result.progress if p.get("value") is not None) for r in ok]
    if counts and min(counts) > 0:
        shares = ", ".join(f"{p['x']:.0%}" for p in ok[0].result.progress if p.get("value") is not None)
        report.add(
            "progress",
            True,
            f"{min(counts)} points per run (at {shares}): hopeless runs can be stopped early",
        )
    else:
        report.add(
            "progress",
            True,
            "no progress points: every run trains to the end (write progress.jsonl lines in the run "
            "directory, or set [metric] progress_pattern; docs/CONFIG.md)",
        )


# What a summary block calls the amount trained, per kind of budget (and the unit it is in).
_COUNTS: dict[str, tuple[tuple[str, float], ...]] = {
    "steps": (("num_steps", 1), ("steps", 1), ("total_steps", 1), ("training_steps", 1), ("step", 1)),
    "tokens": (
        ("total_tokens", 1),
        ("tokens", 1),
        ("num_tokens", 1),
        ("training_tokens", 1),
        ("total_tokens_M", 1e6),
    ),
    "flops": (("total_flops", 1), ("flops", 1), ("training_flops", 1)),
}
# A run may train this share of a steps/tokens/flops budget and still follow it (the last batch
# or step overshoots; a step count rounds).
COUNT_LOW, COUNT_HIGH = 0.5, 1.25


def _budget(replicates: list[Replicate], budget: BudgetConfig, report: CheckReport) -> None:
    if budget.seconds is None:
        _counted_budget(replicates, budget, report)
        return
    limit = max(BUDGET_SLACK * budget.seconds, budget.seconds + BUDGET_GRACE_SECONDS)
    timed_out = any(r.result.status is RunStatus.TIMEOUT for r in replicates)
    trained = [r.result.training_seconds for r in replicates if r.result.training_seconds is not None]
    walls = [r.result.total_seconds for r in replicates]
    over = timed_out or max(walls) > limit or any(t > 1.5 * budget.seconds + 2 for t in trained)
    checked = True
    if over:
        detail = (
            f"with a budget of {budget.seconds:g} s a run took {max(walls):.0f} s"
            + (" and was killed at the timeout" if timed_out else "")
            + ": the script ignores NIGHTLAB_BUDGET_SECONDS; stop training when it is spent (or use "
            "[budget] steps/tokens that it reads), otherwise a kept change can buy its gain with compute"
        )
    elif trained:
        detail = f"with a budget of {budget.seconds:g} s a run trained {max(trained):.1f} s"
    elif max(walls) <= budget.seconds:
        detail = f"with a budget of {budget.seconds:g} s a run ran {max(walls):.1f} s in all, within it"
    else:
        # Start-up or a fixed amount of training: without training_seconds, no telling which.
        checked = False
        detail = (
            f"with a budget of {budget.seconds:g} s a run ran {max(walls):.1f} s in all, within the "
            f"{limit:g} s allowed for start-up and evaluation; whether it trains for "
            "NIGHTLAB_BUDGET_SECONDS or a fixed amount was not checked: it prints no training_seconds "
            "(print `training_seconds: S` in a summary block, after a `---` line)"
        )
    report.add("budget", not over, detail, checked)


def _counted_budget(replicates: list[Replicate], budget: BudgetConfig, report: CheckReport) -> None:
    """A steps, tokens or FLOPs budget: checked against what the run says it trained, when its
    summary block says it (``num_steps``, ``total_tokens``, ``total_flops``, ...)."""
    kind = next((k for k in ("steps", "tokens", "flops") if getattr(budget, k) is not None), None)
    if kind is None:
        return
    limit = float(getattr(budget, kind))
    env = f"NIGHTLAB_BUDGET_{kind.upper()}"
    trained = [_reported(r.result.metrics, kind) for r in replicates if r.ok]
    counts = [t for t in trained if t is not None]
    if not counts:
        report.add(
            "budget",
            True,
            f"a budget of {limit:g} {kind} ({env}) was not checked, only the {budget.timeout:g} s "
            f"timeout: the runs print no count of {kind} trained (print e.g. "
            f"`{_COUNTS[kind][0][0]}: N` in a summary block after a `---` line)",
            checked=False,
        )
        return
    low, high = min(counts), max(counts)
    if high > COUNT_HIGH * limit or low < COUNT_LOW * limit:
        report.add(
            "budget",
            False,
            f"with a budget of {limit:g} {kind} a run trained {low:g}"
            + (f" to {high:g}" if high != low else "")
            + f": the script does not follow {env}; stop training when it is spent",
        )
        return
    report.add("budget", True, f"with a budget of {limit:g} {kind} a run trained {high:g}")


def _reported(metrics: dict[str, float], kind: str) -> float | None:
    for name, unit in _COUNTS[kind]:
        value = metrics.get(name)
        if isinstance(value, (int, float)):
            return float(value) * unit
    return None
