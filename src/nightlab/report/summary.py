"""The terminal summary of a research tag: where it started, where it got, and what got it there.

Every kept change is listed with its measured improvement, the standard error and the
confidence of its test, so a reader can tell a solid gain from a lucky one. Where a holdout
metric exists, it is set beside the validation metric: a kept change that helped on val but
not on holdout is flagged as possible overfitting to the validation split.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from nightlab.formatting import fixed, signed
from nightlab.stats import ZERO_SPREAD, noise_floor
from nightlab.store.export import holdout_checks, warnings
from nightlab.store.recorded import read_slot, recorded_run_dir
from nightlab.store.spending import outside_text, unrecorded_cost
from nightlab.studies.resume import study_states
from nightlab.types import Direction

if TYPE_CHECKING:
    from nightlab.store.ledger import ExperimentRow, Ledger


def _runs(e: ExperimentRow) -> str:
    """The value and how many runs stand behind it: for a kept change, its ``report`` runs, which
    no decision saw, when it has them (else the runs that selected it, which carry their luck)."""
    n = e.n_runs or 0
    spread = f" ± {e.metric_sem:.6f}" if e.metric_sem is not None else ""
    runs = f"{n} run{'s' if n != 1 else ''}"
    if e.decision == "baseline" and e.estimate_runs:
        runs = f"{e.estimate_runs} run{'s' * (e.estimate_runs != 1)} no decision saw, of {n}"
    if e.decision == "keep":
        fresh = e.estimate_runs or 0
        runs = (
            f"{fresh} run{'s' * (fresh != 1)} no decision saw, of {n}"
            if fresh
            else f"{runs} that selected it: the value carries their luck"
        )
    return f"{fixed(e.metric_mean)}{spread} ({runs})"


def _slots(ledger: Ledger, research: list[ExperimentRow]) -> str:
    """Where the runs ran, when several slots ran them at once: ``3 at once: 0 (gpu 0) 9 runs, ...``."""
    from nightlab.report.dashboard.data import LedgerReader

    state_dir = ledger.path.parent
    count: dict[tuple, int] = {}
    reader = LedgerReader(
        ledger.path
    )  # every replicate in one query: one per experiment took 0.5 s at 10,000
    try:
        replicates = reader.replicates(research[0].tag) if research else {}
    finally:
        reader.close()
    for e in research:
        for run in replicates.get(e.id, []):
            folder = recorded_run_dir(state_dir, run.run_dir)
            where = read_slot(folder) if folder is not None else {}
            if isinstance(where.get("slot"), int):
                key = (where["slot"], str(where.get("device") or "?"))
                count[key] = count.get(key, 0) + 1
    if len(count) < 2:
        return ""
    parts = [f"{slot} ({device}) {n} run{'s' * (n != 1)}" for (slot, device), n in sorted(count.items())]
    return f"{len({slot for slot, _ in count})} at once: " + ", ".join(parts)


def training_share(ledger: Ledger, tag: str) -> str:
    """How much of the runs' wall time was training (the rest: start-up, checkpoints, export,
    evaluation), so a night whose hardware mostly waits says so; empty before any run trained."""
    trained, total, count = ledger.run_time(tag)
    if trained <= 0 or total <= 0:
        return ""
    return (
        f"{100 * trained / total:.0f}% of the runs' wall time: {trained / 60:.1f} of {total / 60:.1f} min "
        f"in {count} run{'s' * (count != 1)} (the rest: start-up, checkpoints, evaluation)"
    )


def agent_cost(ledger: Ledger, tag: str, research: list[ExperimentRow]) -> str:
    """What the agent's model calls cost, the spending outside any experiment included; empty
    for an agent that spends nothing (the search agent, replays)."""
    outside = unrecorded_cost(ledger, tag)
    costs = [e.cost for e in research if isinstance(e.cost, dict)]
    tokens = sum(int(c.get("tokens_in") or 0) + int(c.get("tokens_out") or 0) for c in costs)
    usd = sum(float(c.get("cost_usd") or 0.0) for c in costs)
    extra = outside["tokens_in"] + outside["tokens_out"]
    if not tokens + extra:
        return ""
    return f"{tokens + extra:,} tokens, ${usd + outside['cost_usd']:.4f}" + outside_text(outside)


def summary_renderable(
    ledger: Ledger,
    tag: str,
    metric_name: str = "val_bpb",
    direction: Direction | str = Direction.MINIMIZE,
    live: bool = True,
    harness_kind: str | None = None,
) -> RenderableType:
    """The summary as rich renderables, for callers that print in colour. ``live``: a harness is
    working in the workspace (else an unfinished experiment is counted as interrupted);
    ``harness_kind``: its command (a study still running in the ledger runs only under its own)."""
    direction = Direction(direction)
    research = ledger.research(tag)
    better = "lower" if direction is Direction.MINIMIZE else "higher"
    head = Text(f"nightlab {tag}: {metric_name} ({better} is better)", style="bold")
    baseline = next((e for e in research if e.decision == "baseline"), None)
    if baseline is None:
        return Group(head, Text("no baseline yet: run `nightlab run` first"))

    best = ledger.incumbent(tag) or baseline
    overview = Table.grid(padding=(0, 2))
    overview.add_column(style="bold")
    overview.add_column()
    overview.add_row("Baseline", f"{_runs(baseline)}  #{baseline.id}")
    # Agent-written text goes in as Text, never as a str that rich would parse for [markup].
    best_text = f"{_runs(best)}  #{best.id} {best.description if best is not baseline else ''}"
    overview.add_row("Best", Text(best_text.rstrip()))
    if baseline.metric_mean is not None and best.metric_mean is not None:
        change = best.metric_mean - baseline.metric_mean
        pct = f" ({signed(100 * change / abs(baseline.metric_mean), 2)}%)" if baseline.metric_mean else ""
        overview.add_row("Improvement", f"{signed(change)}{pct}, {better} is better")
    noise = noise_floor(ledger.replicate_groups(tag))
    if noise and noise.sd <= ZERO_SPREAD * (abs(baseline.metric_mean or 0.0) or 1.0):
        # A spread of zero is a script that ignores its seed, never certainty (policy.noise_for).
        floor = "not measurable: replicates with different seeds gave identical results; decisions use [policy] noise_sd, else 1% of the incumbent"
    elif noise:
        floor = f"sd {noise.sd:.6f} per run ({noise.df} df from {noise.groups} replicate groups)"
    else:
        floor = "not measured"
    overview.add_row("Noise floor", floor)
    slots = _slots(ledger, research)
    if slots:
        overview.add_row("Slots", slots)
    share = training_share(ledger, tag)
    if share:
        overview.add_row("Training", share)
    spent = agent_cost(ledger, tag, research)
    if spent:
        overview.add_row("Agent cost", spent)
    for text in warnings(ledger, tag):  # what makes the night less honest than it looks, and the fix
        overview.add_row("Warning", Text(text))
    for line in unfinished_studies(ledger, tag, harness_kind):
        overview.add_row("Study", Text(line))
    counts: dict[str, int] = {}
    for e in research:
        key = (
            ("running" if live else "interrupted")
            if not e.finished
            else (e.status if e.status in ("skipped", "pruned") else e.decision or e.status)
        )
        counts[key] = counts.get(key, 0) + 1
    order = ["baseline", "keep", "discard", "pruned", "crash", "invalid", "skipped", "running", "interrupted"]
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    # `-n N` and "stopped: N experiments done" count the experiments after the baseline: the total
    # says how it is made up, so the two numbers agree at a glance.
    baselines = sum(e.kind == "baseline" for e in research)
    made_of = "the baseline" if baselines == 1 else f"{baselines} baselines"
    after = len(research) - baselines
    made_of += f" and {after} experiment{'s' * (after != 1)}"
    overview.add_row(
        "Experiments", f"{len(research)} total ({made_of}): " + " · ".join(f"{k} {counts[k]}" for k in keys)
    )

    kept = [e for e in research if e.decision == "keep"]
    if not kept:
        return Group(head, overview, Text("\nNo change kept yet."))
    checked = [c for c in holdout_checks(ledger, tag, direction, research) if c["holdout_delta"] is not None]
    if checked:
        flagged = [c for c in checked if c["overfit"]]
        text = f"{len(checked) - len(flagged)} of {len(checked)} kept changes also improved the holdout split"
        if flagged:
            ids = ", ".join(f"#{c['id']}" for c in flagged)
            text += f"; {ids}: a gain on val but not on holdout, possible overfitting to the validation split"
        overview.add_row("Holdout", Text(text))
    return Group(head, overview, Text(""), _kept_table(ledger, kept, baseline, direction))


def _kept_table(
    ledger: Ledger, kept: list[ExperimentRow], baseline: ExperimentRow, direction: Direction
) -> Table:
    with_holdout = any(e.holdout_mean is not None for e in kept)
    table = Table(title="Kept changes", title_justify="left", show_edge=False, pad_edge=False)
    for name, justify in (
        ("#", "right"),
        ("Δ", "right"),
        ("± se", "right"),
        ("conf.", "right"),
        ("runs", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)
    if with_holdout:
        table.add_column("holdout Δ", justify="right", no_wrap=True)
    table.add_column("description", overflow="fold")
    previous = baseline
    for e in kept:
        reference = ledger.incumbent_of(e) or previous
        change = None
        if e.metric_mean is not None and reference.metric_mean is not None:
            change = e.metric_mean - reference.metric_mean
        elif e.delta is not None:
            change = direction.sign * e.delta
        conf = f"{1 - e.p_value:.1%}" if e.p_value is not None else "—"
        row: list[str | Text] = [str(e.id), signed(change), fixed(e.delta_se), conf, str(e.n_runs or 0)]
        if with_holdout:
            row.append(_holdout_cell(e, reference, direction))
        row.append(Text(e.description or ""))
        table.add_row(*row)
        previous = e
    return table


def _holdout_cell(e: ExperimentRow, reference: ExperimentRow, direction: Direction) -> str:
    if e.holdout_mean is None or reference.holdout_mean is None:
        return "—"
    change = e.holdout_mean - reference.holdout_mean
    flag = "" if direction.improvement(e.holdout_mean, reference.holdout_mean) > 0 else " ⚠ not on holdout"
    return signed(change) + flag


def unfinished_studies(ledger: Ledger, tag: str, harness_kind: str | None) -> list[str]:
    """One line per validate or ablate study of ``tag`` still running, or cut off (its harness
    killed: it stayed "running" in the ledger) with what takes it up; finished ones are in the
    report's figures."""
    out = []
    for study in study_states(ledger, tag, harness_kind):
        if study["state"] not in ("running", "interrupted"):
            continue
        scale = f" at scale {study['scale']}" if study["scale"] else ""
        runs = f"{study['runs']} run{'s' * (study['runs'] != 1)} recorded"
        line = f"{study['kind']} {study['study']}{scale}: {study['state']}, {runs}"
        if study["state"] == "interrupted":
            line += f"; {study['resume']}"
        out.append(line)
    return out


def render_summary(
    ledger: Ledger,
    tag: str,
    metric_name: str = "val_bpb",
    direction: Direction | str = Direction.MINIMIZE,
    width: int = 110,
    live: bool = True,
    harness_kind: str | None = None,
) -> str:
    """The summary as plain text (no colour codes, no markup).

    Print it with ``print()`` or ``console.print(text, markup=False, highlight=False)``: the
    descriptions are agent-written and may contain square brackets that rich would take for
    markup.
    """
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True, legacy_windows=False)
    console.print(summary_renderable(ledger, tag, metric_name, direction, live, harness_kind))
    text = console.export_text(styles=False)
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines()) + "\n"
