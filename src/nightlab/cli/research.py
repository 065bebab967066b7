"""``nightlab init``, ``run``, ``status``, ``report`` and ``demo``: one research session, from the
workspace to the morning's report. Registered by :mod:`nightlab.cli.app`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from nightlab.cli.output import (
    KEPT_SHOWN,
    NEWEST_SHOWN,
    DirArg,
    assumed_metric,
    console,
    err_console,
    given,
    non_negative,
    positive,
    print_status_table,
    print_summary,
    run_research,
    undone_unless_finished,
    write_reports,
)
from nightlab.errors import shell_word
from nightlab.formatting import terminal_safe

if TYPE_CHECKING:
    from nightlab.research.session import Session


def register(app: typer.Typer) -> None:
    """Add ``init``, ``run``, ``status``, ``report`` and ``demo`` to the ``nightlab`` command."""
    app.command("init")(init)
    app.command("run")(run)
    app.command("status")(status)
    app.command("report")(report)
    app.command("demo")(demo)


def init(
    directory: Path = typer.Argument(..., help="Where to create the workspace."),
    template: str = typer.Option("gpt", callback=given, help="Which template to copy."),
    size: str = typer.Option(
        None, callback=given, help="cpu or gpu (default: gpu where a CUDA GPU is present)."
    ),
    dataset: str = typer.Option(
        None, "--dataset", help="What to train on: a dataset name or a path (sets the template's DATASET)."
    ),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty directory."),
    script: str = typer.Option(
        None, "--script", help="Your own training script in DIR: write a nightlab.toml for it instead."
    ),
    metric: str = typer.Option(None, "--metric", help="With --script: the metric's name as it prints it."),
) -> None:
    """Create a research workspace: a git repository with the template's files and a first commit
    (or, with --script, a nightlab.toml for your own training script)."""
    from nightlab.workspace.init import init_workspace, looks_like_a_path

    if script is not None:
        _init_script(directory, script, metric, size=size, dataset=dataset, force=force)
        return
    if metric is not None:
        raise typer.BadParameter("--metric goes with --script (your own training script)")

    with undone_unless_finished(directory):
        used, replaced = init_workspace(directory, template=template, size=size, force=force, dataset=dataset)
    console.print(f"created {directory} ({template}{', ' + used + ' size' if used else ''})")
    if dataset and looks_like_a_path(dataset) and not Path(dataset).expanduser().exists():
        console.print(
            f"note: --dataset {terminal_safe(dataset)} does not exist on this machine; the runs' setup "
            "looks for it where they run"
        )
    if replaced:
        shown = ", ".join(replaced[:8]) + (f" and {len(replaced) - 8} more" if len(replaced) > 8 else "")
        console.print(f"replaced {shown} with the template's; your versions are in git (git log -p -- FILE)")
    console.print(f"next: nightlab run {shell_word(directory)}")


def _init_script(directory: Path, script: str, metric: str | None, **template_options: object) -> None:
    """``init DIR --script train.py``: a nightlab.toml beside the user's script, committed."""
    from nightlab.config import load_config
    from nightlab.workspace.script_init import init_script, script_notes

    given = [f"--{k}" for k, v in template_options.items() if v not in (None, False)]
    if given:
        raise typer.BadParameter(f"{', '.join(given)} sets up the template; leave it out with --script")
    name, direction, committed = init_script(directory, script, metric)
    run = load_config(directory).target.run
    # Not wrapped at the terminal's width: a path cut in two cannot be pasted back.
    console.print(
        f"wrote {directory / 'nightlab.toml'}: runs {run}, reads {name} ({direction}) from its log; "
        f"committed {', '.join(committed)}",
        soft_wrap=True,
    )
    for note in script_notes(directory, script):
        console.print(note, soft_wrap=True)
    console.print(
        f"next: nightlab check {shell_word(directory)}  (then nightlab run {shell_word(directory)})",
        soft_wrap=True,
    )


def _workers(text: str | None) -> int | str | None:
    """``--workers``: a positive number or ``auto``, checked as the command line is read."""
    if text is None:
        return None
    if text.strip().lower() == "auto":
        return "auto"
    from nightlab.config import MAX_WORKERS

    if not text.strip().isdigit() or int(text) < 1:
        raise typer.BadParameter(f'{text!r}: give a number of at least 1, or "auto"', param_hint="--workers")
    if int(text) > MAX_WORKERS:  # each has a worktree: 10**11 of them were made until the disk was full
        raise typer.BadParameter(f'{text}: at most {MAX_WORKERS}, or "auto"', param_hint="--workers")
    return int(text)


def run(
    directory: Path = DirArg,
    max_experiments: int = typer.Option(
        None,
        "--max-experiments",
        "-n",
        min=0,
        help="Stop once the tag has N experiments after its baseline (earlier runs of the tag count; see --more).",
    ),
    more: int = typer.Option(None, "--more", min=0, help="Run N more experiments than the tag has now."),
    hours: float = typer.Option(None, "--hours", callback=non_negative, help="Stop proposing after H hours."),
    agent: str = typer.Option(
        None,
        "--agent",
        callback=given,
        help="The agent kind instead of the one in nightlab.toml: replay, search, llm, command.",
    ),
    tag: str = typer.Option(
        None, "--tag", help="Research branch nightlab/<tag> (default: last used, else today)."
    ),
    plain: bool = typer.Option(False, "--plain", help="Plain log lines instead of the live view."),
    workers: str = typer.Option(
        None,
        "--workers",
        "-w",
        callback=_workers,
        help='Replicates in flight at once: N, or "auto" (one per GPU; on CPU, per core share).',
    ),
) -> None:
    """Run the research loop; running it again continues where it stopped."""
    from nightlab.research.loop import LoopLimits
    from nightlab.research.session import open_session

    session = open_session(directory, tag=tag, agent_kind=agent)
    if workers is not None:
        session.config.run.workers = workers
    session.check_runnable()  # a busy workspace or a missing file: one line, before anything prints
    cfg = session.config
    from nightlab.store.trackers.registry import check_trackers

    check_trackers(cfg.trackers)  # an unknown [trackers] live name too (it came after the header)
    cap = max_experiments if max_experiments is not None else cfg.run.max_experiments
    cap_from = "" if max_experiments is not None else f"[run] max_experiments = {cap}"
    if more is not None:
        had = session.ledger.candidate_count(session.tag)
        cap, cap_from = had + more, f"--more {more}: {had} before this run"
    limits = LoopLimits(
        max_experiments=cap, hours=hours if hours is not None else cfg.run.hours, cap_from=cap_from
    )
    console.print(
        f"nightlab: workspace {session.root}, branch nightlab/{session.tag}, agent {cfg.agent.kind}"
    )
    note = assumed_metric(cfg)
    if note:
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    from nightlab.cli.watch import run_hooks

    with run_hooks(session) as hooks:  # the dashboard's pause/stop, the live trackers
        live = not plain and console.is_terminal
        outcome = run_research(
            session,
            limits,
            live,
            events=hooks.events,
            should_stop=hooks.should_stop,
            wants_quiet=hooks.wants_quiet,
        )
        hooks.ended(outcome.stopped_because)
    write_reports(session, quiet=True)
    console.print(f"stopped: {terminal_safe(outcome.stopped_because)}", markup=False, highlight=False)
    print_summary(session)
    if outcome.agent_failed:  # the results stand; a script running the night can tell it ended early
        raise typer.Exit(1)


def open_recorded(directory: Path, tag: str | None) -> Session:
    """The session of a workspace that has recorded something, for ``status`` and ``report``. A
    ledger with nothing in it (left by a ``validate`` or ``ablate`` refused before it ran) is
    said to be what it is, as a missing one is; it printed an empty table."""
    from nightlab.errors import UserError
    from nightlab.research.session import open_session

    session = open_session(directory, tag=tag, must_exist=True, view=True)
    if not session.ledger.research_tags() and not session.ledger.experiments():
        root = session.root
        raise UserError(f"{root}: no experiments yet; start with `nightlab run {shell_word(root)}`")
    last = session.ledger.get_meta("current_tag")
    if tag is None and last is not None and last != session.tag:
        # The last night stopped before its baseline (killed, or its target failing): the newest
        # night with results is shown, and nothing said so: it read as if last night did nothing.
        err_console.print(
            f"note: the last night, nightlab/{last}, has no baseline (it stopped or failed before one was "
            f"measured: `nightlab status {shell_word(session.root)} --tag {last}`); showing "
            f"nightlab/{session.tag}, the newest night with results",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return session


def status(
    directory: Path = DirArg,
    tag: str = typer.Option(
        None,
        "--tag",
        help="Research tag to show (default: the last one run; when it has no baseline, the newest that has).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (every experiment)."),
    every: bool = typer.Option(
        False,
        "--all",
        help="A row for every experiment; without it the table shows the baseline, the best, any not "
        f"finished, the newest {KEPT_SHOWN} kept and the newest {NEWEST_SHOWN}, and says how many it leaves out.",
    ),
) -> None:
    """The experiments so far and the current best."""
    from nightlab.store.export import status_dict
    from nightlab.studies.resume import harness_kind, study_states

    session = open_recorded(directory, tag)
    kind = harness_kind(session.workspace.state_dir)
    # An experiment still "running" in the ledger whose harness is gone was interrupted; a study
    # runs only under a harness of its own kind (validate, ablate).
    data = status_dict(session.ledger, session.tag, live=kind is not None)
    data["studies"] = study_states(session.ledger, session.tag, kind)
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    command = "nightlab status" + ("" if directory == Path(".") else f" {shell_word(session.root)}")
    command += f" --tag {shell_word(session.tag)}" if tag is not None else ""
    print_status_table(data, session.config.metric.name, every=every, command=command)


def report(
    directory: Path = DirArg,
    tag: str = typer.Option(
        None,
        "--tag",
        help="Research tag to report (default: the last one run; when it has no baseline, the newest that has).",
    ),
    html: bool = typer.Option(
        False, "--html", help="Also print where the self-contained HTML report is, as a file:// address."
    ),
    out: str = typer.Option(
        None,
        "--out",
        callback=given,
        help="Write the HTML report here too (implies --html); - prints it on stdout, the summary on stderr.",
    ),
) -> None:
    """Write progress.png, results.tsv and report.html (the dashboard's views in one file), and print the summary."""
    from nightlab.errors import UserError

    to_stdout = out is not None and is_stdout(out)
    if out == "-" and console.is_terminal:  # 130 kB of HTML with an inlined PNG, onto the screen
        raise UserError(
            "--out -: standard output is a terminal; redirect it (`--out - > report.html`) or give a file name"
        )
    if out is not None and not to_stdout and Path(out).is_dir():
        raise UserError(
            f"--out {out}: is a folder; give the report's file name, e.g. {Path(out) / 'report.html'}"
        )
    session = open_recorded(directory, tag)
    if session.ledger.read_only:
        return report_read_only(session, out, to_stdout)
    paths = write_reports(session, quiet=False)
    # With the page on stdout, everything else goes to stderr: `--out - > night.html` is the page.
    say = err_console if to_stdout else console
    if not paths:
        print_summary(session, say)  # its first lines name the tag and say that it has no baseline yet
        err_console.print(
            f"nothing written: nightlab/{session.tag} has no baseline yet, and the reports in "
            f"{session.workspace.state_dir} were left as they were",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        # Not an error: a baseline still running (or killed) is a state to show, not a mistake.
        return
    if out is not None:
        try:
            written = write_out(session, out, to_stdout)
        except OSError as exc:  # a folder that cannot be made or written: the workspace's reports stand
            raise UserError(
                f"--out {out}: cannot write the report there ({exc.strerror}); the workspace's reports "
                f"are in {session.workspace.state_dir}"
            ) from None
        if written is not None:
            paths["report"] = written
    print_summary(session, say)
    for label, path in paths.items():
        say.print(f"{label}: {path}", markup=False, highlight=False, soft_wrap=True)
    if (html or out is not None) and "report" in paths:
        say.print(
            f"open: {paths['report'].resolve().as_uri()}", markup=False, highlight=False, soft_wrap=True
        )


def is_stdout(out: str) -> bool:
    """Whether ``--out`` names this process's standard output: ``-``, or a path that is the same
    file (``/dev/stdout``, ``/dev/fd/1``, the file stdout is redirected to). Resolved as a path,
    ``/dev/stdout`` into a pipe became ``/proc/PID/fd/pipe:[N]``, a file that cannot be written."""
    import os

    if out == "-":
        return True
    try:
        mine, named = os.fstat(1), os.stat(out)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)


def write_out(session: Session, out: str, to_stdout: bool) -> Path | None:
    """The HTML report where ``--out`` says: onto stdout (``None``: no file to name) or into the
    file (its path)."""
    import sys

    from nightlab.report.html import report_page, write_html_report

    metric = session.config.metric
    if not to_stdout:
        return write_html_report(session.ledger, session.tag, metric, Path(out).resolve())
    sys.stdout.write(report_page(session.ledger, session.tag, metric))
    sys.stdout.flush()
    return None


def report_read_only(session: Session, out: str | None, to_stdout: bool) -> None:
    """``report`` on a workspace it cannot write: the summary, and the HTML report only where
    ``--out`` puts it (results.tsv and the figures belong in the workspace, which stays as it is)."""
    from nightlab.errors import UserError

    where = session.workspace.state_dir
    if out is None:
        raise UserError(
            f"{where} is read-only: give --out FILE to write the report elsewhere "
            "(`nightlab status` shows the table)"
        )
    if not session.ledger.research_tags().get(session.tag):
        raise UserError(f"nothing to report: nightlab/{session.tag} has no baseline yet")
    try:
        written = write_out(session, out, to_stdout)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write the report there ({exc.strerror})") from None
    say = err_console if to_stdout else console
    print_summary(session, say)
    if written is not None:
        say.print(f"report: {written}", markup=False, highlight=False, soft_wrap=True)
        say.print(f"open: {written.resolve().as_uri()}", markup=False, highlight=False, soft_wrap=True)


def demo(
    directory: Path = typer.Option(Path("nightlab-demo"), "--dir", help="Where the demo workspace goes."),
    minutes: float = typer.Option(10.0, "--minutes", callback=positive, help="About how long to research."),
) -> None:
    """The demo: a cpu-size GPT workspace, the offline search agent for ~10 minutes, a report."""
    from nightlab.cli.demo import run_demo

    run_demo(directory, minutes=minutes, console=console)
