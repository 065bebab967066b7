"""``nightlab try``, ``brief`` and ``mcp``: outside agents drive the harness; ``nightlab agent
show-space``: what the built-in search agent will search.

A coding agent in a terminal (Claude Code, Codex, ...) edits the training script itself and
asks the harness to judge each edit (``try``); ``brief`` tells it how to work that way; ``mcp``
offers the same through the Model Context Protocol. Registered by :mod:`nightlab.cli.app`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from nightlab.cli.output import DirArg, assumed_metric, err_console, help_when_bare

BRIEF = """\
# Working under nightlab

This workspace ({root}) is a research target run by nightlab, a harness that trains every
experiment under a fixed budget, evaluates it with frozen code, and keeps a change only when it
beats the best so far by more than the measured noise. You are the researcher; the harness
owns the budget, the evaluation, the decision and the record.

Goal: {arrow} {metric}.{program}

Loop, one experiment at a time:
1. Read the state: `nightlab status {dir}` (the experiments so far, the best){program_step}.
   Start from the best code: `nightlab try --sync {dir}` writes it into the editable files.
2. Edit only the editable files: {editable}. Make one focused change.
   Never edit the frozen files ({frozen}), nightlab.toml, or anything under .nightlab/;
   `nightlab try` refuses to run while other files have uncommitted changes.
3. Run it: `nightlab try --sync -m "<one line: what you changed>" --hypothesis "<why>" {dir}`
   It applies your edit onto the best code, trains ({budget}), evaluates and decides; this can
   take a while: wait for it.
4. Read the block it prints after `---`: {metric}, improvement (> 0 is better than the best),
   decision (keep or discard), reason. With --sync, the editable files then hold the best code
   either way (your edit on keep; the previous best on discard or crash, your version staying
   in git as the experiment's commit): start the next idea from there. Do not commit; nightlab
   records every experiment on the branch nightlab/<tag>.
5. Repeat. Small changes teach more than many at once; do not retry what the history shows
   already failed. Do not run the training script yourself: only `nightlab try` results count.
"""


def register(app: typer.Typer) -> None:
    """Add ``try``, ``brief``, ``mcp`` and the ``agent`` group to the ``nightlab`` command."""
    app.command("try")(try_command)
    app.command("brief")(brief_command)
    app.command("mcp")(mcp_command)
    agent_app = typer.Typer(invoke_without_command=True, help="Inspect the configured research agent.")
    agent_app.callback()(help_when_bare)
    agent_app.command("show-space")(show_space)
    app.add_typer(agent_app, name="agent")


def _one_line(value: str | None) -> str | None:
    """``-m``: one line. The ledger's description is the first line, so `-m "$(cat notes)"` kept
    only that one, without a word (the rest goes in --hypothesis)."""
    if value is not None and len(value.strip().splitlines()) > 1:
        raise typer.BadParameter("give one line; put the rest in --hypothesis")
    return _utf8(value)


def _utf8(value: str | None) -> str | None:
    """Text from the command line must be UTF-8: Python hands other bytes over as lone
    surrogates, which the ledger cannot store (a traceback after the experiment had trained)."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            byte = value[exc.start].encode("utf-8", "surrogateescape")
            raise typer.BadParameter(f"not UTF-8 text (byte 0x{byte[0]:02x}): give it in UTF-8") from None
    return value


def try_command(
    directory: Path = DirArg,
    message: str = typer.Option(
        None,
        "--message",
        "-m",
        callback=_one_line,
        help="One line: what the edit changes (needed unless --sync alone).",
    ),
    hypothesis: str = typer.Option(
        "", "--hypothesis", callback=_utf8, help="Why it should help (kept in the ledger)."
    ),
    tag: str = typer.Option(None, "--tag", help="Research branch nightlab/<tag> (default: last used)."),
    sync: bool = typer.Option(
        False,
        "--sync",
        help="Write the best code into your editable files: after the experiment with -m, or alone.",
    ),
) -> None:
    """Run your uncommitted edits to the editable files as one experiment, applied onto the best code."""
    from nightlab.cli.view import plain_printer
    from nightlab.config import load_config
    from nightlab.errors import UserError, shell_word
    from nightlab.events import EventSink
    from nightlab.formatting import terminal_safe
    from nightlab.research.tryrun import result_block, try_working_tree

    if message is None and not sync:
        raise UserError(
            'nightlab try: missing -m: nightlab try -m "what the edit changes" [DIR] '
            "(or --sync alone, to bring the best code into your files)"
        )
    note = assumed_metric(load_config(Path(directory)))
    if note and message is not None:
        err_console.print(note, markup=False, highlight=False, soft_wrap=True)
    events = EventSink()
    events.subscribe(plain_printer(err_console))  # progress on stderr; the result block on stdout
    session, outcome = try_working_tree(directory, message, hypothesis, tag=tag, events=events, sync=sync)
    root, branch = session.root, f"nightlab/{session.tag}"
    best = session.ledger.incumbent(session.tag)
    best_name = f"#{best.id}" if best else "-"
    row = outcome.row
    if row is not None:
        # The description, hypothesis and reason are agent- and run-written: no escapes reach the terminal.
        typer.echo(terminal_safe(result_block(session, row), allow="\n"), nl=False)
    if row is None:
        what = ", ".join(outcome.synced) or "nothing to change"
        typer.echo(f"synced: the best code ({best_name} on {branch}) is in your checkout ({what})")
    elif outcome.left_in_place:
        typer.echo("nothing ran: your edits are left in place; fix them and try again")
    elif outcome.synced:
        commit = (row.commit or "")[:12]
        typer.echo(
            f"synced: {', '.join(outcome.synced)} now hold the best code ({best_name}); "
            f"your version is commit {commit} (git show {commit}:{outcome.synced[0]})"
        )
    elif row.decision == "keep":
        typer.echo(f"kept: your edit is the new best on {branch}")
        if outcome.behind:
            typer.echo(
                f"your files hold your edit on your checkout; the best code also has earlier kept changes: "
                f"`nightlab try --sync {shell_word(root)}` brings them in"
            )
    elif row.commit:
        typer.echo(
            f"not kept: your edits are left in your files (and saved as commit {row.commit[:12]}); "
            f"`nightlab try --sync {shell_word(root)}` puts the best code ({best_name}) back, "
            "`git checkout -- FILE` your checkout's version"
        )


def brief_command(directory: Path = DirArg) -> None:
    """Instructions that tell a coding agent to work through `nightlab try`."""
    from nightlab.config import load_config
    from nightlab.errors import shell_word

    root = Path(directory).resolve()
    config = load_config(root)
    budget = config.budget
    if budget.seconds is not None:
        spent = f"{budget.seconds:g} s of training per run"
    elif budget.tokens is not None:
        spent = f"{budget.tokens} tokens per run"
    elif budget.steps is not None:
        spent = f"{budget.steps} steps per run"
    else:  # a FLOPs budget read "None steps per run"
        spent = f"{budget.flops:.3g} training FLOPs per run"
    has_program = (root / "program.md").is_file()
    text = BRIEF.format(
        root=directory,
        dir=shell_word(directory),
        program=" Research instructions: program.md (read it first)." if has_program else "",
        program_step=" and program.md" if has_program else "",
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
    """The knobs the search agent found and the domain it will search for each. Exit 2 when
    there is nothing to search, as `nightlab run` then refuses to start."""
    from nightlab.agents.registry import AGENTS
    from nightlab.agents.search.describe import describe_space, why_empty
    from nightlab.agents.search.space import build_space
    from nightlab.config import check_workspace_files, load_config
    from nightlab.errors import UserError
    from nightlab.paths import match_files

    root = Path(directory).resolve()
    config = load_config(root)
    # The check `check` and `run` make: a glob that matches nothing is the mistake to name, not
    # an empty search space.
    check_workspace_files(config, root)
    # as a run reads them from git: a Latin-1 script (with its coding line) is read, not a traceback
    files = {
        p: (root / p).read_text(errors="surrogateescape") for p in match_files(root, config.target.editable)
    }
    settings = AGENTS.settings(config.agent, "search")  # [agent.search], whatever kind runs
    empty = why_empty(build_space(files, settings, command=config.target.run), files)
    if empty:  # not a table with no rows: the run would refuse for the same reason
        raise UserError(empty)
    # A fixed-width table: never re-wrapped. Knobs the run command sets show as pinned.
    typer.echo(describe_space(files, settings, command=config.target.run))
