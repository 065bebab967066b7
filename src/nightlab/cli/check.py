"""``nightlab check DIR``: the first thing to run on a new target; see :mod:`nightlab.research.check`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from nightlab.cli.output import DirArg, console, finite
from nightlab.errors import shell_word


def register(app: typer.Typer) -> None:
    """Add ``check`` to the ``nightlab`` command."""
    app.command("check")(check_command)


def check_command(
    directory: Path = DirArg,
    seconds: float = typer.Option(
        10.0, "--seconds", min=1.0, callback=finite, help="Training seconds per check run."
    ),
) -> None:
    """Would a night be honest? Setup, then two short runs with two seeds: knobs, metric, seed,
    budget, files written, time. Exit 0 when nothing is marked FIX (?? marks what could not
    be checked)."""
    from nightlab.formatting import terminal_safe
    from nightlab.research.check import check_target
    from nightlab.research.session import open_session

    session = open_session(directory)
    session.check_runnable()  # a busy workspace, a stale NIGHTLAB_BUDGET_*: one line, before the header
    budget = session.config.budget
    short = f"{min(budget.seconds, seconds):g} s" if budget.seconds is not None else "the configured budget"
    console.print(f"checking {session.root}: setup, then 2 runs of {short} with seeds 1 and 2 ...")
    report = check_target(session, seconds)
    for finding in report.findings:
        if not finding.ok:
            mark = Text("FIX ", style="bold red")
        elif finding.checked:
            mark = Text("ok  ", style="green")
        else:  # nothing failed because nothing could be seen: not a pass
            mark = Text("??  ", style="yellow")
        # A finding's detail quotes the run (its log, its errors): shown, never obeyed by the terminal.
        what, detail = terminal_safe(finding.what), terminal_safe(finding.detail, allow="\n")
        console.print(Text.assemble(mark, Text(f"{what}: ", style="bold"), Text(detail)))
    if report.honest and report.unchecked:
        console.print(
            f"nothing to fix, but not everything was checked ({', '.join(report.unchecked)}: see ??); "
            f"a night on this target would be honest as far as checked: nightlab run {shell_word(directory)}"
        )
        return
    if report.honest:
        console.print(f"a night on this target would be honest: nightlab run {shell_word(directory)}")
        return
    console.print("fix what is marked FIX, then run `nightlab check` again")
    raise typer.Exit(1)
