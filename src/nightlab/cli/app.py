"""The ``nightlab`` command: the typer app, its command groups, and how it ends.

Thin on purpose: each group of commands lives in its own module and parses, calls, prints.
Every :class:`UserError` becomes one line on stderr and exit code 2; Ctrl-C stops cleanly with
exit code 130 (the interrupted experiment is re-run by the next ``nightlab run``).
"""

from __future__ import annotations

import errno
import os
import signal
import sys

import typer

from nightlab.cli import agents, research, studies, trust
from nightlab.cli.output import err_console
from nightlab.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Let an AI agent improve your training code overnight, and trust the results in the morning.",
)
# The order here is the order of `nightlab --help` (the `agent` group is listed last).
for _group in (research, agents, studies, trust):
    _group.register(app)


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
        if isinstance(exc, _click_errors()):
            exc.show()
            sys.exit(2)
        if os.environ.get("NIGHTLAB_DEBUG"):
            raise
        raise


def _click_errors() -> tuple[type[Exception], ...]:
    """The usage-error base class of whichever click parses our options: typer 0.2x bundles its
    own copy (``typer._click``), older typer uses click itself; either may be absent."""
    import importlib

    found = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(name).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


if __name__ == "__main__":
    main()
