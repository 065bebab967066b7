"""``nightlab try``, ``brief`` and ``mcp``: outside agents drive the harness; ``nightlab agent
show-space``: what the built-in search agent will search.

A coding agent in a terminal (Claude Code, Codex, ...) edits the training script itself and
asks the harness to judge each edit (``try``); ``brief`` tells it how to work that way; ``mcp``
offers the same through the Model Context Protocol. Registered by :mod:`nightlab.cli.app`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from nightlab.cli.output import DirArg, err_console

BRIEF = """\
# Working under nightlab

This workspace ({root}) is a research target run by nightlab, a harness that trains every
experiment under a fixed budget, evaluates it with frozen code, and keeps a change only when it
beats the best so far by more than the measured noise. You are the researcher; the harness
owns the budget, the evaluation, the decision and the record.

Goal: {arrow} {metric}. Research instructions: program.md (read it first).

Loop, one experiment at a time:
1. Read the state: `nightlab status {root}` (the experiments so far, the best) and program.md.
2. Edit only the editable files: {editable}. Make one focused change.
   Never edit the frozen files ({frozen}), nightlab.toml, or anything under .nightlab/;
   `nightlab try` refuses to run while other files have uncommitted changes.
3. Run it: `nightlab try -m "<one line: what you changed>" --hypothesis "<why>" {root}`
   It trains ({budget}), evaluates and decides; this can take a while: wait for it.
4. Read the block it prints after `---`: {metric}, delta (> 0 is better than the best),
   decision (keep or discard), reason. On keep, your edit stays and is the new best. On
   discard or crash the editable files are put back to the best code: start the next idea
   from there. Do not commit; nightlab records every experiment on the branch nightlab/<tag>.
5. Repeat. Small changes teach more than many at once; do not retry what the history shows
   already failed. Do not run the training script yourself: only `nightlab try` results count.
"""


def register(app: typer.Typer) -> None:
    """Add ``try``, ``brief``, ``mcp`` and the ``agent`` group to the ``nightlab`` command."""
    app.command("try")(try_command)
    app.command("brief")(brief_command)
    app.command("mcp")(mcp_command)
    agent_app = typer.Typer(no_args_is_help=True, help="Inspect the configured research agent.")
    agent_app.command("show-space")(show_space)
    app.add_typer(agent_app, name="agent")


def try_command(
    directory: Path = DirArg,
    message: str = typer.Option(..., "--message", "-m", help="One line: what the edit changes."),
    hypothesis: str = typer.Option("", "--hypothesis", help="Why it should help (kept in the ledger)."),
    tag: str = typer.Option(None, "--tag", help="Research branch nightlab/<tag> (default: last used)."),
) -> None:
    """Run your uncommitted edits to the editable files as one experiment; keep or revert them."""
    from nightlab.cli.view import plain_printer
    from nightlab.events import EventSink
    from nightlab.research.tryrun import result_block, try_working_tree

    events = EventSink()
    events.subscribe(plain_printer(err_console))  # progress on stderr; the result block on stdout
    session, outcome = try_working_tree(directory, message, hypothesis, tag=tag, events=events)
    typer.echo(result_block(session, outcome.row), nl=False)
    if outcome.restored:
        typer.echo(
            f"restored {', '.join(outcome.restored)} to the best code (#{session.ledger.incumbent(session.tag).id}); "
            f"your version is commit {outcome.row.commit[:12]} (git show {outcome.row.commit[:12]}:{outcome.restored[0]})"
        )
    elif outcome.left_in_place:
        typer.echo("nothing ran: your edits are left in place; fix them and try again")
    else:
        typer.echo(f"kept: your edits are the new best on branch nightlab/{session.tag}")


def brief_command(directory: Path = DirArg) -> None:
    """Instructions that tell a coding agent to work through `nightlab try`."""
    from nightlab.config import load_config

    root = Path(directory).resolve()
    config = load_config(root)
    budget = config.budget
    if budget.seconds is not None:
        spent = f"{budget.seconds:g} s of training per run"
    elif budget.tokens is not None:
        spent = f"{budget.tokens} tokens per run"
    else:
        spent = f"{budget.steps} steps per run"
    text = BRIEF.format(
        root=directory,
        metric=config.metric.name,
        arrow="lower" if config.metric.direction.value == "minimize" else "raise",
        editable=", ".join(config.target.editable),
        frozen=", ".join(config.target.frozen) or "none declared",
        budget=spent,
    )
    typer.echo(text, nl=False)


def mcp_command(
    directory: Path = DirArg,
    tag: str = typer.Option(None, "--tag", help="Research branch nightlab/<tag> (default: last used)."),
) -> None:
    """Serve the harness over MCP (stdio): state, files, history, experiments, report."""
    from nightlab.cli.mcp import serve

    serve(Path(directory), tag=tag)


def show_space(directory: Path = DirArg) -> None:
    """The knobs the search agent found and the domain it will search for each."""
    from nightlab.agents.registry import AGENTS
    from nightlab.agents.search.space import describe_space
    from nightlab.config import load_config
    from nightlab.paths import match_files

    root = Path(directory).resolve()
    config = load_config(root)
    files = {p: (root / p).read_text() for p in match_files(root, config.target.editable)}
    settings = AGENTS.settings(config.agent, "search")  # [agent.search], whatever kind runs
    typer.echo(describe_space(files, settings))  # a fixed-width table: never re-wrapped
