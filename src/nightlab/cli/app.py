"""The ``nightlab`` command. Thin on purpose: parse, call, print.

Every :class:`UserError` becomes one line on stderr and exit code 2; Ctrl-C stops cleanly with
exit code 130 (the interrupted experiment is re-run by the next ``nightlab run``).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path

import typer
from rich.console import Console

from nightlab.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Let an AI agent improve your training code overnight, and trust the results in the morning.",
)
agent_app = typer.Typer(no_args_is_help=True, help="Inspect the configured research agent.")
app.add_typer(agent_app, name="agent")

console = Console()
err_console = Console(stderr=True)

DirArg = typer.Argument(Path("."), help="The research workspace (a git repository with nightlab.toml).")


@app.command()
def init(
    directory: Path = typer.Argument(..., help="Where to create the workspace."),
    template: str = typer.Option("gpt", help="Which template to copy."),
    size: str = typer.Option(None, help="cpu or gpu (default: gpu where a CUDA GPU is present)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty directory."),
) -> None:
    """Create a research workspace: a git repository with the template's files and a first commit."""
    from nightlab.workspace.init import init_workspace

    used = init_workspace(directory, template=template, size=size, force=force)
    console.print(f"created {directory} ({template}{', ' + used + ' size' if used else ''})")
    console.print(f"next: nightlab run {directory}")


@app.command()
def run(
    directory: Path = DirArg,
    max_experiments: int = typer.Option(
        None, "--max-experiments", "-n", min=0, help="Stop after N experiments."
    ),
    hours: float = typer.Option(None, "--hours", min=0.0, help="Stop proposing after H hours."),
    agent: str = typer.Option(None, "--agent", help="Override [agent] kind: replay, search, llm, command."),
    tag: str = typer.Option(
        None, "--tag", help="Research branch nightlab/<tag> (default: last used, else today)."
    ),
    plain: bool = typer.Option(False, "--plain", help="Plain log lines instead of the live view."),
) -> None:
    """Run the research loop; running it again continues where it stopped."""
    from nightlab.cli.view import LiveView, RunView, plain_printer
    from nightlab.events import EventSink
    from nightlab.research.loop import LoopLimits
    from nightlab.research.session import build_loop, open_session

    session = open_session(directory, tag=tag, agent_kind=agent)
    cfg = session.config
    limits = LoopLimits(
        max_experiments=max_experiments if max_experiments is not None else cfg.run.max_experiments,
        hours=hours if hours is not None else cfg.run.hours,
    )
    events = EventSink()
    live = not plain and console.is_terminal
    view = RunView(cfg.budget.seconds, cfg.budget.timeout, cfg.metric.name)
    events.subscribe(view.on_event)
    if not live:
        events.subscribe(plain_printer(console))
    console.print(
        f"nightlab: workspace {session.root}, branch nightlab/{session.tag}, agent {cfg.agent.kind}"
    )
    loop = build_loop(session, events=events)
    if live:
        with LiveView(view, console):
            outcome = loop.run(limits)
    else:
        outcome = loop.run(limits)
    _write_reports(session, quiet=True)
    console.print(f"stopped: {outcome.stopped_because}")
    _print_summary(session)


@app.command()
def status(
    directory: Path = DirArg,
    tag: str = typer.Option(None, "--tag"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The experiments so far and the current best."""
    from nightlab.research.session import open_session

    session = open_session(directory, tag=tag, must_exist=True)
    data = session.ledger.status_dict(session.tag)
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    _print_status_table(data, session.config.metric.name)


@app.command()
def report(directory: Path = DirArg, tag: str = typer.Option(None, "--tag")) -> None:
    """Write progress.png, results.tsv (and the HTML report), and print the summary."""
    from nightlab.research.session import open_session

    session = open_session(directory, tag=tag, must_exist=True)
    paths = _write_reports(session, quiet=False)
    _print_summary(session)
    for label, path in paths.items():
        console.print(f"{label}: {path}")


@app.command()
def demo(
    directory: Path = typer.Option(Path("nightlab-demo"), "--dir", help="Where the demo workspace goes."),
    minutes: float = typer.Option(10.0, "--minutes", help="About how long to research."),
) -> None:
    """The demo: a cpu-size GPT workspace, the offline search agent for ~10 minutes, a report."""
    from nightlab.cli.demo import run_demo

    run_demo(directory, minutes=minutes, console=console)


@agent_app.command("show-space")
def show_space(directory: Path = DirArg) -> None:
    """The knobs the search agent found and the domain it will search for each."""
    from nightlab.agents.search.agent import describe_space
    from nightlab.config import load_config
    from nightlab.paths import match_files

    root = Path(directory).resolve()
    config = load_config(root)
    files = {p: (root / p).read_text() for p in match_files(root, config.target.editable)}
    typer.echo(describe_space(files, config))  # a fixed-width table: never re-wrapped


# Command groups that live in their own modules; each exposes ``register(app)``.
_EXTENSIONS: tuple[str, ...] = ("nightlab.cli.agents", "nightlab.cli.studies", "nightlab.cli.trust")


def _register_extensions() -> None:
    import importlib

    for name in _EXTENSIONS:
        importlib.import_module(name).register(app)


_register_extensions()


def _write_reports(session, quiet: bool) -> dict[str, Path]:
    from nightlab.report.plot import plot_progress

    state = session.workspace.state_dir
    paths: dict[str, Path] = {}
    tsv = state / "results.tsv"
    session.ledger.export_tsv(tsv, session.tag, session.config.metric.name)
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
            err_console.print(f"warning: could not draw progress.png ({exc})")
    try:  # validate/ablate figures (validation.png, ablation.png), when those studies ran
        from nightlab.report.validation import write_study_plots

        paths.update(write_study_plots(session))
    except Exception as exc:  # noqa: BLE001 - a plotting problem must not hide the results
        if not quiet:
            err_console.print(f"warning: could not draw the validation/ablation figures ({exc})")
    try:
        from nightlab.report.html import write_html_report

        paths["report"] = write_html_report(session, state / "report.html")
    except ImportError:
        pass
    return paths


def _print_summary(session) -> None:
    from nightlab.report.summary import render_summary

    text = render_summary(
        session.ledger, session.tag, session.config.metric.name, session.config.metric.direction
    )
    console.print(text, markup=False, highlight=False)


def _print_status_table(data: dict, metric_name: str) -> None:
    from rich.table import Table

    table = Table(title=f"nightlab status ({data.get('tag', '')})")
    for col in ("id", "status", "decision", metric_name, "±", "runs", "description", "reason"):
        table.add_column(col, overflow="fold")
    for e in data.get("experiments", []):
        metric = e.get("metric")
        spread = e.get("spread")
        table.add_row(
            str(e.get("id")),
            str(e.get("status")),
            str(e.get("decision") or ""),
            f"{metric:.6f}" if isinstance(metric, (int, float)) else "-",
            f"{spread:.4f}" if isinstance(spread, (int, float)) else "",
            str(e.get("runs") or 0),
            str(e.get("description") or ""),
            str(e.get("reason") or "") + "".join(f" (audit: {a})" for a in e.get("audit") or []),
        )
    console.print(table)
    best = data.get("best")
    if best:
        console.print(
            f"best: #{best.get('id')} {metric_name} {best.get('metric')} ({best.get('description')})"
        )


# Errors of the disk, not of nightlab: no space, quota, file too large, read-only filesystem.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: one line and exit 2 for user errors, 130 for Ctrl-C."""
    # SIGTERM (kill, a scheduler's stop) takes the same clean path as Ctrl-C: the running
    # training process tree is killed with us instead of being orphaned.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        app(standalone_mode=False)
    except UserError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # A full disk or a read-only .nightlab: one line; what was recorded before is intact.
        if exc.errno not in _DISK_ERRNOS:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        err_console.print(
            f"error: cannot write{where} ({exc.strerror}); free disk space or fix permissions, "
            "then rerun `nightlab run` to continue",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted: recorded work is safe; `nightlab run` continues where this stopped")
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        if os.environ.get("NIGHTLAB_DEBUG"):
            raise
        raise


if __name__ == "__main__":
    main()
