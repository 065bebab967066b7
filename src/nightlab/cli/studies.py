"""``nightlab validate`` and ``nightlab ablate``: the commands, their tables and their JSON.

Thin like every command: parse, call :mod:`nightlab.studies.validate` / :mod:`nightlab.studies.ablate`,
print. Progress lines go to stderr, so ``--json`` output on stdout stays machine-readable.
Registered by :mod:`nightlab.cli.app`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from nightlab.cli.output import console, err_console, finite, given, non_negative
from nightlab.formatting import decimals_for, fixed, signed
from nightlab.formatting import terminal_safe as safe

if TYPE_CHECKING:  # imported when a command runs: `nightlab --help` stays fast
    from nightlab.research.runner import Replicate
    from nightlab.studies.ablate import AblationReport
    from nightlab.studies.study import Arm
    from nightlab.studies.validate import ValidationReport

_PATH = {"markup": False, "highlight": False, "soft_wrap": True}  # plain lines, never re-wrapped
_SHORT_STATUS = {
    "earns its place": "keep",
    "candidate to drop": "drop?",
    "does not revert cleanly": "no revert",
}
_VERDICT_STYLE = {"transfers": "bold green", "does not transfer": "bold red", "inconclusive": "yellow"}


def register(app: typer.Typer) -> None:
    """Add ``validate`` and ``ablate`` to the ``nightlab`` command."""
    app.command("validate")(validate)
    app.command("ablate")(ablate)


def _progress(quiet: bool):  # noqa: ANN202 - a RunCallback
    def on_run(arm: Arm, index: int, rep: Replicate) -> None:
        if quiet:
            return
        r = rep.result
        value = f"{rep.metric:.6g}" if rep.metric is not None else "-"
        why = f" ({safe(r.reason)})" if r.status.failed and r.reason else ""  # the run's own words
        earlier = " (recorded before the interruption)" if index < arm.resumed else ""
        err_console.print(
            f"  {arm.label}, seed {index + 1}: {r.status.value} {value} in {r.total_seconds:.1f}s{why}{earlier}",
            **_PATH,
        )

    return on_run


def _above_one(value: float) -> float:
    """``--cap``: a finite multiple of the budget above 1 and at most
    :data:`~nightlab.studies.time_to_target.MAX_CAP`, refused as a usage mistake (it was refused
    only after the study's header had printed; ``--cap 1e308`` made the hard timeout infinite)."""
    from nightlab.studies.time_to_target import MAX_CAP

    if finite(value) is not None and not 1 < value <= MAX_CAP:
        raise typer.BadParameter(f"{value:g}: give a multiple of the budget above 1, at most {MAX_CAP:g}")
    return value


def _seed_count(value: int) -> int:
    """``--seeds``: 2 to :data:`~nightlab.studies.study.MAX_SEEDS` runs per side, refused at
    parse time (``--seeds 100000000000000000000`` printed the header and hung building the list
    of seeds; ``--seeds 2000000`` started a study of weeks)."""
    from nightlab.studies.study import MAX_SEEDS

    if not 2 <= value <= MAX_SEEDS:
        raise typer.BadParameter(f"{value}: give 2 to {MAX_SEEDS} runs per side")
    return value


def validate(
    directory: Path = typer.Argument(Path("."), help="The research workspace."),
    scale: str = typer.Option(
        None,
        "--scale",
        callback=given,
        help="A scale defined in nightlab.toml as a scales.NAME table (default: the research scale).",
    ),
    a: str = typer.Option(
        None,
        "--a",
        callback=given,
        help="Side A: a revision or an experiment id (#3) (default: the research branch's start).",
    ),
    b: str = typer.Option(
        None,
        "--b",
        callback=given,
        help="Side B: a revision or an experiment id (#5) (default: the research branch's best).",
    ),
    seeds: int = typer.Option(
        3, "--seeds", callback=_seed_count, help="Runs per side (same seeds for both), 2 to 1000."
    ),
    tag: str = typer.Option(None, "--tag", help="Research branch nightlab/<tag> (default: last used)."),
    margin: float = typer.Option(
        None,
        "--margin",
        callback=non_negative,
        help="Smallest gain that matters, metric units (default: 1/4 of the research gain).",
    ),
    time_to_target: bool = typer.Option(
        False, "--time-to-target", help="Also measure each side's training time to reach a target value."
    ),
    target: float = typer.Option(
        None, "--target", callback=finite, help="The target value (default: side A's mean at the budget)."
    ),
    eval_interval: float = typer.Option(
        None,
        "--eval-interval",
        callback=non_negative,
        help="Seconds of training between periodic evaluations (curves).",
    ),
    cap: float = typer.Option(
        2.0,
        "--cap",
        callback=_above_one,
        help="Time-to-target runs stop at this multiple of the budget (above 1, at most 100).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Compare two commits at a named scale, interleaved runs with shared seeds; a verdict per metric."""
    from nightlab.research.session import open_session
    from nightlab.studies.scales import resolve_scale
    from nightlab.studies.validate import TIME_TO_TARGET, ValidateOptions, run_validation

    session = open_session(directory, tag=tag)
    session.check_runnable()  # the workspace lock first: a busy workspace is one line, nothing done
    resolve_scale(session.config, scale)  # an unknown --scale is the one line, before the header
    options = ValidateOptions(
        scale=scale, a=a, b=b, seeds=seeds, margin=margin, time_to_target=time_to_target,
        target=target, eval_interval=eval_interval or None, cap=cap,
    )  # fmt: skip
    if not as_json:
        err_console.print(
            f"nightlab validate: {session.root}, scale {scale or '(research scale)'}, {seeds} seeds"
        )
    report = run_validation(session, options, on_run=_progress(as_json))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        _print_validation(report)
    if TIME_TO_TARGET in report.failures:  # asked for and not measured: the verdict above stands
        raise typer.Exit(2)


def _print_validation(report: ValidationReport) -> None:
    from nightlab.studies.time_to_target import format_percent

    where = f"scale {report.scale}" if report.scale else "the research scale"
    console.print(f"nightlab validate at {where}", style="bold", **_PATH)
    console.print(f"  A = {report.a.rev} ({report.a.commit[:12]})", **_PATH)
    console.print(f"  B = {report.b.rev} ({report.b.commit[:12]})", **_PATH)
    # One column per metric: fits an 80-column terminal with val and holdout side by side.
    table = Table(show_header=True)
    table.add_column("", style="bold", no_wrap=True)
    for c in report.comparisons:
        table.add_column(c.name, no_wrap=True)
    rows = [
        ("A mean ± sd (runs)", lambda c: f"{fixed(c.mean_a)} ± {fixed(c.sd_a, 4)} ({len(c.values_a)})"),
        ("B mean ± sd (runs)", lambda c: f"{fixed(c.mean_b)} ± {fixed(c.sd_b, 4)} ({len(c.values_b)})"),
        ("Δ (B − A)", lambda c: signed(c.difference)),
        (f"{report.confidence:.0%} CI of Δ", lambda c: f"{signed(c.ci_low)} … {signed(c.ci_high)}"),
        ("p (two-sided)", lambda c: "—" if c.p_value is None else f"{c.p_value:.2g}"),
        ("verdict", lambda c: Text(c.verdict, style=_VERDICT_STYLE.get(c.verdict, ""))),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(c) for c in report.comparisons))
    if report.comparisons:
        console.print(table)
        for c in report.comparisons:
            console.print(safe(f"{c.name}: {c.verdict}, {c.note}"), **_PATH)
    if report.research_gain is not None:
        console.print(f"gain measured during research: {report.research_gain:.6g}", **_PATH)
    if report.target is not None:
        t = report.target
        console.print(
            f"time to {report.metric_name} {'≤' if report.direction == 'minimize' else '≥'} {t.target:.6g} "
            f"({t.target_source}; evaluated every {t.interval:g} s, cap {t.cap:g}x the budget):",
            **_PATH,
        )
        for sp in (t.time, t.tokens):
            if sp is None:
                continue
            ci = (
                f" ({report.confidence:.0%} CI {format_percent(sp.ci_low)} … {format_percent(sp.ci_high)}, p={sp.p_value:.2g})"
                if sp.ci_low is not None
                else ""
            )
            console.print(f"  {sp.quantity}: {sp.text}{ci}", **_PATH)
        for warning in t.warnings:
            console.print(f"  warning: {safe(warning)}", **_PATH)
    for side, text in report.failures.items():
        console.print(safe(f"{side}: {text}", allow="\n"), **_PATH)
    if report.plot:
        console.print(f"plot: {report.plot}", **_PATH)


def ablate(
    directory: Path = typer.Argument(Path("."), help="The research workspace."),
    seeds: int = typer.Option(
        3,
        "--seeds",
        callback=_seed_count,
        help="Runs of the best and of each variant (same seeds), 2 to 1000.",
    ),
    apply: bool = typer.Option(
        False, "--apply", help="Drop the candidates on the research branch after a confirming run."
    ),
    tag: str = typer.Option(None, "--tag", help="Research branch nightlab/<tag> (default: last used)."),
    scale: str = typer.Option(
        None,
        "--scale",
        callback=given,
        help="Run at a scale defined in nightlab.toml as a scales.NAME table: which changes carry over.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Leave each kept change out of the best; report each one's contribution and what to drop."""
    from nightlab.research.session import open_session
    from nightlab.studies.ablate import run_ablation
    from nightlab.studies.scales import resolve_scale

    session = open_session(directory, tag=tag, must_exist=True)
    session.check_runnable()  # the workspace lock first: a busy workspace is one line, nothing done
    resolve_scale(session.config, scale)  # an unknown --scale is the one line, before the header
    if not as_json:
        where = f", scale {scale}" if scale else ""
        err_console.print(f"nightlab ablate: {session.root}, nightlab/{session.tag}, {seeds} seeds{where}")
    report = run_ablation(session, seeds=seeds, apply=apply, on_run=_progress(as_json), scale=scale)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    _print_ablation(report)


def _print_ablation(report: AblationReport) -> None:
    full = report.full_values
    mean_full = sum(full) / len(full) if full else None
    where = f" at scale {report.scale}" if report.scale else ""
    table = Table(
        title=f"nightlab ablate: best #{report.best_id}{where} ({report.metric_name} {fixed(mean_full)})"
    )
    table.add_column("change", overflow="fold", min_width=14)
    for col in ("gain", f"{report.confidence:.0%} CI", "p", "lines", ""):
        table.add_column(col, no_wrap=True)
    widths = [abs(c.interval[1] - c.interval[0]) / 2 for c in report.contributions if c.interval]
    # three significant digits of the widest half-interval: enough to tell the gains apart
    digits = decimals_for(max(widths, default=0.0), significant=3, low=2, high=6, default=6)
    for c in report.contributions:
        interval = c.interval
        table.add_row(
            Text(safe(f"#{c.change.experiment_id} {c.change.description}")),
            signed(c.value, digits),
            "—" if interval is None else f"{signed(interval[0], digits)} … {signed(interval[1], digits)}",
            "—" if c.comparison is None or c.comparison.p_value is None else f"{c.comparison.p_value:.2g}",
            f"{c.change.net_lines:+d}",
            Text(
                _SHORT_STATUS.get(c.status, c.status),
                style="green" if c.status == "earns its place" else "yellow",
            ),
        )
    console.print(table)
    console.print(
        "gain: how much better the best is with the change than without it; keep = earns its place, "
        "drop? = not shown to earn it",
        **_PATH,
    )
    drop = report.drop_candidates
    if drop:
        names = ", ".join(f"#{c.change.experiment_id}" for c in drop)
        console.print(f"candidates to drop (not shown to earn their place): {names}", **_PATH)
    else:
        console.print("every measured change earns its place")
    if report.applied is not None:
        console.print(safe(report.applied.reason, allow="\n"), **_PATH)
    for note in report.notes:
        console.print(safe(note, allow="\n"), **_PATH)
    if report.plot:
        console.print(f"plot: {report.plot}", **_PATH)
