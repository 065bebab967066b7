"""What several commands share: the two consoles, the workspace argument, the research loop run
under the live view or the plain log, the reports and summary printed at its end, and the
status table.

``run`` and ``demo`` both research and then report, ``report`` reports alone; writing those
steps once keeps the three printing the same lines. Only typer and rich are imported at the
top, so ``nightlab --help`` stays fast; everything else is imported when a command runs.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from nightlab.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Callable

    from nightlab.config import Config
    from nightlab.events import EventSink
    from nightlab.research.loop import LoopLimits, LoopOutcome
    from nightlab.research.session import Session

# No rich markup in anything printed: the lines carry paths, tags and run-written text, and a
# workspace in a folder named `w[red]` printed as `w`, one in `a[/b]` was a MarkupError traceback.
# Styles go in as Text and style=, never as [markup] inside a string.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)

DirArg = typer.Argument(Path("."), help="The research workspace (a git repository with nightlab.toml).")


def finite(value: float | None) -> float | None:
    """An option's callback: infinity and NaN are no number of hours, seconds or metric units
    (typer's ``min=`` lets infinity through, and a bare float option NaN too)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value:g} is not a finite number")
    return value


def non_negative(value: float | None) -> float | None:
    """An option's callback: a finite number of 0 or more (with typer's ``min=0``, NaN read
    "Input should be greater than or equal to 0")."""
    if finite(value) is not None and value < 0:  # type: ignore[operator]
        raise typer.BadParameter(f"{value:g}: give 0 or more")
    return value


def positive(value: float | None) -> float | None:
    """An option's callback: a finite number above 0."""
    if finite(value) is not None and value <= 0:  # type: ignore[operator]
        raise typer.BadParameter(f"{value:g}: give a number above 0")
    return value


def given(value: str | list[str] | None) -> str | list[str] | None:
    """An option's callback: an empty string (or one of spaces) is no value. Left to the command,
    ``--agent ""`` ran the configured agent, ``--a ""`` the default revision, ``--host ""``
    listened on every interface and ``--template ""`` copied every template; a ``--flag "$VAR"``
    whose variable is unset reads so."""
    for item in [value] if isinstance(value, str) else value or []:
        if not item.strip():
            raise typer.BadParameter("is empty: give a value, or leave the option out for its default")
    return value


@contextlib.contextmanager
def undone_unless_finished(directory: Path) -> Iterator[None]:
    """What ``init`` (or the demo's set-up) made goes again when it fails or is interrupted before
    its first commit: a
    half-written folder (files, no commit) was refused by the next ``init`` as not empty and
    researched by ``run`` as it was. Only what was not there before goes: a folder it created
    (and the parents it made), or what it wrote into an empty one; over a folder's files
    (``--force``) a note says where to look. A folder it cannot create is one line, not a traceback."""
    made = directory
    while not made.parent.exists() and made.parent != made:
        made = made.parent  # the topmost folder init creates
    existed = directory.exists()
    empty_before = directory.is_dir() and not any(directory.iterdir())
    try:
        yield
    except BaseException as exc:
        if not existed:
            shutil.rmtree(made, ignore_errors=True)
        elif empty_before:
            for child in list(directory.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        elif not isinstance(exc, UserError):
            err_console.print(
                f"note: {directory} may now hold some of the template's files; `git -C {directory} status` "
                "shows which",
                highlight=False,
                soft_wrap=True,
            )
        if isinstance(exc, OSError):
            where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(directory) else ""
            raise UserError(
                f"{directory}: cannot create the workspace there{where}: {exc.strerror or exc}; "
                "choose a folder you can write in"
            ) from None
        raise


def help_when_bare(ctx: typer.Context) -> None:
    """A group called without a command (``nightlab``, ``nightlab agent``): its help on stdout
    and exit code 0, the same under every click (8.2 made that an error, exit 2)."""
    if ctx.invoked_subcommand is not None or ctx.resilient_parsing:
        return
    text = ctx.get_help()  # rich help prints itself and hands back nothing; plain help is text
    if text.strip():
        typer.echo(text)
    raise typer.Exit(0)


def assumed_metric(config: Config) -> str | None:
    """A note when nightlab.toml has no [metric] table: what nightlab assumes instead, said once
    at the start so a run that reads the wrong number is not a surprise in the morning."""
    if "metric" in config.model_fields_set:
        return None
    m = config.metric
    where = f"{m.file} in the run directory" if m.source == "json" else f"pattern {m.pattern!r} over the log"
    return (
        f'note: nightlab.toml has no [metric] table; assuming name = "{m.name}", '
        f'direction = "{m.direction.value}", read from {where} (docs/CONFIG.md, [metric])'
    )


def run_research(
    session: Session,
    limits: LoopLimits,
    live: bool,
    console: Console = console,
    events: EventSink | None = None,
    should_stop: Callable[[], bool] | None = None,
    wants_quiet: Callable[[], bool] | None = None,
) -> LoopOutcome:
    """Run the research loop until ``limits``; ``live`` shows the refreshing terminal view,
    otherwise one timestamped line per event (for logs, CI, and output that is not a terminal).
    ``events`` may come with subscribers already (live trackers); ``should_stop`` is asked between
    experiments (the dashboard's pause and stop, :func:`nightlab.cli.watch.run_hooks`)."""
    from nightlab.cli.view import LiveView, RunView, plain_printer
    from nightlab.events import EventSink
    from nightlab.research.session import build_loop

    cfg = session.config
    events = events if events is not None else EventSink()
    view = RunView(cfg.budget.seconds, cfg.budget.timeout, cfg.metric.name)
    events.subscribe(view.on_event)
    if not live:
        events.subscribe(plain_printer(console))
    loop = build_loop(session, events=events, should_stop=should_stop, wants_quiet=wants_quiet)
    if not live:
        return loop.run(limits)
    with LiveView(view, console):
        return loop.run(limits)


def write_reports(session: Session, quiet: bool) -> dict[str, Path]:
    """results.tsv, progress.png, the study figures and report.html; ``{label: path}`` of those
    written. A figure that cannot be drawn is skipped (with a warning unless ``quiet``): a
    plotting problem must never hide the results.

    Nothing is written for a tag without a baseline (``{}``): the files are the workspace's, not
    the tag's, and empty ones would replace the report of the night that has results.
    """
    from nightlab.report.plot import plot_progress
    from nightlab.store.export import export_tsv

    if not session.ledger.research_tags().get(session.tag):
        return {}
    state = session.workspace.state_dir
    paths: dict[str, Path] = {}
    tsv = state / "results.tsv"
    export_tsv(session.ledger, tsv, session.tag, session.config.metric.name)
    paths["results"] = tsv
    try:
        paths["plot"] = plot_progress(
            session.ledger,
            session.tag,
            state / "progress.png",
            session.config.metric.name,
            session.config.metric.direction,
        )
    except Exception as exc:  # noqa: BLE001 - a plotting problem must not hide the results
        if not quiet:
            err_console.print(f"warning: could not draw progress.png ({exc})", markup=False, highlight=False)
    try:  # validate/ablate figures (validation.png, ablation.png), when those studies ran
        from nightlab.report.validation import write_study_plots

        paths.update(write_study_plots(session.ledger, state, session.config))
    except Exception as exc:  # noqa: BLE001 - a plotting problem must not hide the results
        if not quiet:
            err_console.print(
                f"warning: could not draw the validation/ablation figures ({exc})",
                markup=False,
                highlight=False,
            )
    try:
        from nightlab.report.html import write_html_report

        paths["report"] = write_html_report(
            session.ledger, session.tag, session.config.metric, state / "report.html"
        )
    except ImportError:
        pass
    return paths


def print_summary(session: Session, console: Console = console) -> None:
    """The research summary as plain text (descriptions are agent-written: never rich markup)."""
    from nightlab.formatting import terminal_safe
    from nightlab.report.summary import render_summary
    from nightlab.studies.resume import harness_kind

    cfg = session.config
    kind = harness_kind(session.workspace.state_dir)
    # Laid out at the console's width and printed as it is: printing a summary laid out wider
    # wrapped its lines a second time, breaking the table's columns.
    text = render_summary(
        session.ledger,
        session.tag,
        cfg.metric.name,
        cfg.metric.direction,
        width=console.width,
        live=kind is not None,
        harness_kind=kind,
    )
    console.print(terminal_safe(text, allow="\n"), markup=False, highlight=False, soft_wrap=True)


# ``status`` without ``--all``: the newest experiments and the newest kept ones (besides the
# baseline, the best and whatever has not finished). A table of all 10,000 experiments of two
# nights took 10 s to lay out and scrolled away everything but its last screen.
NEWEST_SHOWN = 20
KEPT_SHOWN = 10


def shown_experiments(experiments: list[dict], best_id: int | None) -> list[dict]:
    """The rows ``status`` shows by default, oldest first: the baseline, the best, every
    experiment not finished (running, interrupted), the newest ``KEPT_SHOWN`` kept ones and the
    newest ``NEWEST_SHOWN`` of any outcome. All of them when there are no more than that."""
    if len(experiments) <= NEWEST_SHOWN + KEPT_SHOWN:
        return experiments
    chosen = {id(e) for e in experiments[-NEWEST_SHOWN:]}
    chosen |= {id(e) for e in [e for e in experiments if e.get("decision") == "keep"][-KEPT_SHOWN:]}
    for e in experiments:
        if e.get("decision") == "baseline" or e.get("id") == best_id or e.get("status") in UNFINISHED:
            chosen.add(id(e))
    return [e for e in experiments if id(e) in chosen]


UNFINISHED = ("running", "interrupted")
# How the counts of every outcome are listed (status_dict's words): the results first.
OUTCOME_ORDER = ("baseline", "keep", "discard", "crash", "invalid", "pruned", "skipped", *UNFINISHED)


def left_out_line(data: dict, shown: list[dict], command: str) -> str | None:
    """What the table leaves out, the outcome of every experiment, and how to see them all."""
    experiments = data.get("experiments") or []
    if len(shown) == len(experiments):
        return None
    kept = sum(1 for e in shown if e.get("decision") == "keep")
    counts = data.get("counts") or {}
    order = sorted(
        counts, key=lambda o: (OUTCOME_ORDER.index(o) if o in OUTCOME_ORDER else len(OUTCOME_ORDER), o)
    )
    every = ", ".join(f"{counts[outcome]:,} {outcome}" for outcome in order)
    return (
        f"{len(experiments) - len(shown):,} of {len(experiments):,} experiments not shown "
        f"(of all {len(experiments):,}: {every}); "
        f"shown: the baseline, the best, any not finished, the newest {kept} kept and the newest "
        f"{min(NEWEST_SHOWN, len(experiments))}. Every one: `{command} --all` (or --json)"
    )


def print_status_table(
    data: dict, metric_name: str, every: bool = True, command: str = "nightlab status"
) -> None:
    """``nightlab status``: one row per experiment of the ledger's status dict (with ``every``
    False, those of :func:`shown_experiments` and a line saying what is not shown), then the
    best. Run- and agent-written text (reasons, descriptions, warnings) goes through
    :func:`~nightlab.formatting.terminal_safe`: rich passes escape sequences through as they are."""
    from rich.table import Table
    from rich.text import Text

    from nightlab.formatting import fixed
    from nightlab.formatting import terminal_safe as safe

    experiments = data.get("experiments") or []
    best_id = (data.get("best") or {}).get("id")
    rows = experiments if every else shown_experiments(experiments, best_id)
    table = Table(title=Text(f"nightlab status ({safe(data.get('tag', ''))})"))
    for col in ("id", "status", "decision", metric_name, "±", "runs", "description", "reason"):
        table.add_column(col, overflow="fold")
    for e in rows:
        metric = e.get("metric")
        spread = e.get("spread")
        table.add_row(
            safe(e.get("id")),
            safe(e.get("status")),
            safe(e.get("decision") or ""),
            f"{metric:.6f}" if isinstance(metric, (int, float)) else "-",
            f"{spread:.4f}" if isinstance(spread, (int, float)) else "",
            str(e.get("runs") or 0),
            # Agent-written text goes in as Text: a str would be parsed for [markup].
            Text(safe(e.get("description") or "")),
            Text(safe(str(e.get("reason") or "") + "".join(f" (audit: {a})" for a in e.get("audit") or []))),
        )
    console.print(table)
    left_out = left_out_line(data, rows, command)
    if left_out:
        console.print(safe(left_out), markup=False, highlight=False, soft_wrap=True)
    for run in data.get("running") or []:
        where = f"slot {run['slot']} ({run['device']})" if run.get("slot") is not None else "running"
        since = f" since {run['started_at']}" if run.get("started_at") else ""
        line = f"{where}: #{run['experiment']} run {run['replicate'] + 1}{since}: {run['description']}"
        console.print(safe(line), markup=False, highlight=False, soft_wrap=True)
    best = data.get("best")
    if best:
        console.print(
            safe(
                f"best: #{best.get('id')} {metric_name} {fixed(best.get('metric'))} ({best.get('description')})"
            ),
            markup=False,
            highlight=False,
        )
    for study in data.get("studies") or []:  # one cut off by kill -9 stayed "running" for ever
        if study["state"] in ("running", "interrupted"):
            scale = f" at scale {study['scale']}" if study.get("scale") else ""
            line = f"{study['kind']} {study['study']}{scale}: {study['state']}, {study['runs']} runs recorded"
            line += f"; {study['resume']}" if study.get("resume") else ""
            console.print(safe(line), markup=False, highlight=False, soft_wrap=True)
    for text in data.get("warnings") or []:  # what makes the night less honest than it looks
        console.print(f"warning: {safe(text)}", markup=False, highlight=False, soft_wrap=True)
