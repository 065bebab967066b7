"""The ``nightlab`` command's first lines: Ctrl-C is handled before the heavy imports.

Importing the app (typer, rich, pydantic) takes a noticeable fraction of a second; a SIGINT or
SIGTERM in that time would otherwise print a KeyboardInterrupt traceback from inside an import.
Until :func:`nightlab.cli.app.main` installs its own handlers, a signal ends the command with one
line and the exit code of :mod:`nightlab.cli.app` (130 / 143): nothing has been done yet.
"""

from __future__ import annotations

import os
import signal


def _while_starting(signum: int, frame: object) -> None:
    os.write(
        2, f"interrupted ({signal.Signals(signum).name}): stopped while starting; nothing was done\n".encode()
    )
    os._exit(128 + signum)


def main() -> None:
    """Entry point of the ``nightlab`` console script and of ``python -m nightlab.cli``."""
    signal.signal(signal.SIGTERM, _while_starting)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a background job keeps it ignored
        signal.signal(signal.SIGINT, _while_starting)
    from nightlab.cli.app import main as app_main

    app_main()
