"""The ``nightlab`` command: the typer app, its command groups, and how it ends.

Thin on purpose: each group of commands lives in its own module and parses, calls, prints.
How a command ends is decided here, the same whichever typer and click pip picked (typer 0.12
with click 8.1, up to typer 0.29 with the click it bundles; tests/cli/test_usage.py runs both):

* a :class:`UserError`: one line ``error: ...`` on stderr, exit code 2;
* a usage mistake (an unknown command or option, a bad value, a missing argument): one line
  ``error: ...`` and one ``usage: ...`` line, exit code 2;
* SIGINT (Ctrl-C) or SIGTERM (``kill``, a scheduler's stop): the run in flight is killed with its
  process tree, one ``interrupted:`` line, exit code 130 or 143; the interrupted experiment is
  run again by the next ``nightlab run`` (or ``try``); a command that trains nothing (``export``,
  ``status``...) says what it stopped instead; a second signal exits at once;
* ``nightlab`` alone, like ``nightlab agent`` alone, prints the help and exits 0.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

import typer

from nightlab.cli import agents, check, research, studies, trust, watch
from nightlab.cli.output import err_console, help_when_bare
from nightlab.errors import UserError

app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    help="Let an AI agent improve your training code overnight, and trust the results in the morning.",
)
# The order here is the order of `nightlab --help` (the `agent` group is listed last).
for _group in (research, check, watch, agents, studies, trust):
    _group.register(app)


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", is_eager=True, help="Print nightlab's version and exit."
    ),
) -> None:
    if version:
        typer.echo(f"nightlab {_version()}")
        raise typer.Exit(0)
    help_when_bare(ctx)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nightlab")
    except Exception:  # noqa: BLE001 - not installed as a distribution (a source checkout on sys.path)
        from nightlab import __version__

        return __version__


# Errors of the disk, not of nightlab: no space, quota, file too large, read-only filesystem.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException of our own, not KeyboardInterrupt: typer 0.2x
    turns KeyboardInterrupt into a silent exit code and click turns it into ``Abort``, so the
    signal has to pass through both untouched to reach :func:`main`. Every cleanup on the way
    (the executor's tree kill, the ledger's rollback) handles BaseException."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_stopping = False


def _on_signal(signum: int, frame: object) -> None:
    """The first signal unwinds the harness cleanly; a second one, while that cleanup runs (an
    agent still thinking, a process stuck in the kernel), exits at once: the run's watchdog
    still kills its training tree, and the ledger is consistent after any write."""
    global _stopping
    if _stopping:
        os.write(2, f"interrupted again ({signal.Signals(signum).name}): exiting now\n".encode())
        os._exit(128 + signum)
    _stopping = True
    raise Interrupted(signum)


def _install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_signal)
    # A background job started by a non-interactive shell (`nightlab run &` in a script) begins
    # with SIGINT ignored so that a Ctrl-C meant for the script spares it: keep it that way.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_signal)


def main() -> None:
    """Entry point: the exit codes of the module docstring."""
    _install_signal_handlers()
    try:
        returned = app(prog_name="nightlab", standalone_mode=False)
    except UserError as exc:
        _error_line(f"error: {exc}")
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):  # a workspace of another user, a file made read-only
            where = f"{exc.filename}: " if exc.filename else ""
            _error_line(
                f"error: {where}{exc.strerror}; fix its permissions, or run nightlab as the user who owns "
                "the workspace"
            )
            sys.exit(2)
        # A full disk or a read-only .nightlab: one line; what was recorded before is intact.
        if exc.errno not in _DISK_ERRNOS:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "run")
        again = "rerun `nightlab run` to continue" if command == "run" else f"run `nightlab {command}` again"
        _error_line(
            f"error: cannot write{where} ({exc.strerror}); free disk space or fix permissions, then {again}"
        )
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        _error_line(f"interrupted ({signal.Signals(signum).name}): {_interrupted_note(sys.argv[1:])}")
        sys.exit(128 + signum)
    except Exception as exc:  # click's own exceptions, whichever copy of click raised them
        _click_ending(exc)
        if os.environ.get("NIGHTLAB_DEBUG"):
            raise
        raise
    # typer hands back the code of an explicit exit (--version, help) in non-standalone mode.
    sys.exit(returned if isinstance(returned, int) else 0)


# What an interrupt leaves behind, for the commands that train nothing; every other command may
# have had a training run in flight.
_TRAINS_NOTHING = {
    "export": "the export stopped; what was sent stays in the tracker, and `nightlab export` again "
    "sends only what is missing",
    **dict.fromkeys(("status", "report", "serve", "init", "brief", "recover", "agent"), "stopped"),
    # They train, but `nightlab run` repeats none of theirs: a study closes its experiments as
    # interrupted, and the check records none.
    "mcp": "the MCP server stopped; a try it was running was stopped with its processes, and "
    "`nightlab run` repeats it",
    "check": "the check's runs were stopped with their processes; nothing was recorded; "
    "`nightlab check` again starts it afresh",
    **{
        study: f"the {study} runs were stopped with their processes and the study is recorded as "
        f"interrupted; the same `nightlab {study}` again goes on where it stopped"
        for study in ("validate", "ablate")
    },
}


def _interrupted_note(args: list[str]) -> str:
    """The rest of the ``interrupted`` line, fit for the command that was running."""
    command = next((a for a in args if not a.startswith("-")), "")
    return _TRAINS_NOTHING.get(
        command,
        "the training in flight was stopped with its processes; everything recorded is safe, and "
        "`nightlab run` repeats an interrupted experiment",
    )


def _error_line(text: str) -> None:
    from nightlab.formatting import terminal_safe  # an error may quote a run's log or an agent

    err_console.print(terminal_safe(text, allow="\n"), markup=False, highlight=False, soft_wrap=True)


def _click_ending(exc: Exception) -> None:
    """Exit the way the module docstring says for click's exceptions; return for anything else.

    Classes are matched by name across the click that typer bundles (``typer._click``, typer
    0.2x) and click itself (older typer): an ``isinstance`` against one copy misses the other.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    if not any(
        cls.__module__.endswith(("click.exceptions", "typer.exceptions")) for cls in type(exc).__mro__
    ):
        return
    if "NoArgsIsHelpError" in names:  # click 8.2: the help was printed; asking for it is no mistake
        sys.exit(0)
    if "Exit" in names:
        sys.exit(getattr(exc, "exit_code", 0))
    if "Abort" in names:
        _error_line("interrupted: aborted")
        sys.exit(130)
    if "ClickException" not in names:
        return
    message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
    _error_line(f"error: {message}")
    ctx = getattr(exc, "ctx", None)
    if "UsageError" in names and ctx is not None:
        usage = " ".join(ctx.get_usage().split()).replace("Usage:", "usage:", 1)
        _error_line(f"{usage}  (`{ctx.command_path} --help` for more)")
    sys.exit(2)


if __name__ == "__main__":
    main()
