"""``nightlab serve`` and ``nightlab export``: watching a night from a browser, and sending it to
the trackers people already use. Registered by :mod:`nightlab.cli.app`.

Also what ``nightlab run`` adds to its loop for them (:func:`run_hooks`): the dashboard's pause,
resume and stop (a control file read between experiments), and the live trackers of
``[trackers] live``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from nightlab.cli.output import DirArg, console, err_console, given
from nightlab.errors import UserError, shell_word
from nightlab.formatting import terminal_safe

if TYPE_CHECKING:
    from nightlab.events import EventSink
    from nightlab.research.session import Session

MIN_TOKEN = 16
# A ledger opened as the first run creates it has no tables for a moment: tries, 0.1 s apart.
LEDGER_READY_TRIES = 50


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``export`` to the ``nightlab`` command."""
    app.command("serve")(serve)
    app.command("export")(export)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _workspace(directory: Path, tag: str | None, strict: bool) -> tuple[Path, object, str]:
    """The workspace root, its config, and the tag to show (:func:`view_tag`; today's before any
    run). ``strict``: a tag given must have experiments (the dashboard may be opened for a night
    that has not started)."""
    import sqlite3  # here, not at the top: `nightlab --help` imports this module

    from nightlab.config import load_config, workspace_root
    from nightlab.report.dashboard.data import LedgerReader
    from nightlab.research.session import LEDGER_NAME, check_tag, default_tag, view_tag
    from nightlab.workspace.git import STATE_DIR

    root = workspace_root(directory)
    if tag is not None:
        check_tag(tag)
    config = load_config(root)
    ledger_path = root / STATE_DIR / LEDGER_NAME
    if not ledger_path.is_file():
        return root, config, tag or config.run.tag or default_tag()
    for _ in range(LEDGER_READY_TRIES):
        reader: LedgerReader | None = None
        try:
            reader = LedgerReader(ledger_path)
            chosen = view_tag(reader, root / STATE_DIR, tag, config.run.tag, strict=strict)
            tags = reader.research_tags()
            if chosen not in tags:  # the dashboard waits for it; a misspelt --tag would wait for ever
                known = ", ".join(reversed(list(tags))) or "none yet"
                if strict:  # export: nothing to send (the note spoke of the dashboard)
                    raise UserError(
                        f"nothing to export: no experiments under tag '{chosen}' (tags: {known}); "
                        f"`nightlab run {shell_word(root)}` records them"
                    )
                err_console.print(
                    f"note: no experiments under tag '{chosen}' yet (tags: {known}); the dashboard "
                    f"shows them once `nightlab run --tag {chosen}` starts",
                    highlight=False,
                    soft_wrap=True,
                )
            return root, config, chosen
        except sqlite3.OperationalError:  # the first run is creating it: its tables come in a moment
            time.sleep(0.1)
        except sqlite3.DatabaseError as exc:  # not a database at all: what `run` and `status` say
            raise UserError(
                f"ledger {ledger_path} is corrupt ({exc}): rebuild it with `nightlab recover {shell_word(root)}` "
                "(docs/RECOVERY.md)"
            ) from None
        finally:
            if reader is not None:
                reader.close()
    return root, config, tag or config.run.tag or default_tag()


def serve(
    directory: Path = DirArg,
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        callback=given,
        help="Address to listen on; anything but loopback requires the token to read too.",
    ),
    tag: str = typer.Option(
        None,
        "--tag",
        help="Research tag to show (default: the last one run; when it has no baseline, the newest that has).",
    ),
    token: str = typer.Option(
        None,
        "--token",
        envvar="NIGHTLAB_DASHBOARD_TOKEN",
        help="The control token (default: a new random one, printed at start).",
    ),
) -> None:
    """A live dashboard of the research: plot, experiments, what runs now; pause, resume, stop with the token."""
    try:
        import uvicorn

        from nightlab.report.dashboard.server import ServeSettings, create_app
    except ImportError as exc:
        raise UserError(
            f"nightlab serve needs the dashboard's web server ({exc.name} is missing): pip install 'nightlab[dashboard]'"
        ) from None
    from nightlab.report.dashboard.data import View
    from nightlab.secrets import secret_values
    from nightlab.workspace.git import STATE_DIR

    root, config, chosen = _workspace(directory, tag, strict=False)
    if token is not None and len(token) < MIN_TOKEN:
        raise UserError(
            f"--token (or NIGHTLAB_DASHBOARD_TOKEN): use at least {MIN_TOKEN} characters (or leave it out "
            "for a random one)"
        )
    token = token or secrets.token_urlsafe(24)
    loopback = is_loopback(host)
    try:
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        sock = socket.create_server((host.strip("[]"), port), family=family)
    except OSError as exc:
        raise UserError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): pick another --port or --host"
        ) from None
    bound = sock.getsockname()[1]
    settings = ServeSettings(
        state_dir=root / STATE_DIR,
        view=View(
            chosen,
            config.metric.name,
            config.metric.direction,
            holdout=True,
            secrets=secret_values(os.environ),
        ),
        token=token,
        token_for_reading=not loopback,
        command=config.target.run,
        budget_seconds=config.budget.seconds,
        timeout=config.budget.timeout,
        workspace=root.name,
    )
    shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    base = f"http://{shown}:{bound}/"
    say = lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    say(f"nightlab serve: {root} (nightlab/{chosen}), {config.metric.name}")
    if loopback:
        say(f"dashboard: {base}  (read-only without the token)")
    else:
        say(
            f"dashboard: {base} listens beyond this machine, so every request needs the token, reading too; "
            "it travels unencrypted: prefer `ssh -L` to a loopback address"
        )
    say(f"token: {token}  (pause, resume and stop need it)")
    say(f"open with control: {base}?token={token}")
    say("Ctrl-C stops the dashboard; `nightlab run` goes on without it")
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            log_level="warning",
            access_log=False,  # request lines would print the token of ?token= addresses
            timeout_graceful_shutdown=2,
            lifespan="on",
        )
    )
    # uvicorn turns Ctrl-C and SIGTERM into a graceful shutdown, then raises the signal again for
    # the handler it found: make that one quiet, so stopping the dashboard reads as what it is.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    # An open page's event stream is cut at shutdown; uvicorn calls that an error, it is not.
    logging.getLogger("uvicorn.error").addFilter(
        lambda record: "without completing response" not in record.getMessage()
    )
    with sock:
        server.run(sockets=[sock])
    say("dashboard stopped")


def export(
    directory: Path = DirArg,
    to: list[str] = typer.Option(..., "--to", callback=given, help="mlflow or wandb (repeat for both)."),
    tag: str = typer.Option(
        None,
        "--tag",
        help="Research tag to export (default: the last one run; when it has no baseline, the newest that has).",
    ),
    option: list[str] = typer.Option(
        [],
        "--option",
        "-o",
        help="KEY=VALUE (or NAME.KEY=VALUE) over the tracker's [trackers.NAME] settings in nightlab.toml.",
    ),
) -> None:
    """Send every finished experiment to MLflow or Weights & Biases (each once: exporting again sends what is new)."""
    from nightlab.store.trackers.registry import TrackerTarget, check_trackers, make_tracker
    from nightlab.store.trackers.sync import ExportScope, export_tag, failure_line
    from nightlab.workspace.git import STATE_DIR

    root, config, chosen = _workspace(directory, tag, strict=True)
    check_trackers(config.trackers)
    overrides: dict[str, dict[str, str]] = {name: {} for name in to}
    for item in option:
        key, sep, value = item.partition("=")
        name, dot, field = key.strip().rpartition(".")
        if not sep or not field or (dot and name not in overrides):
            raise UserError(
                f"--option '{item}': write KEY=VALUE or NAME.KEY=VALUE for a tracker given with --to, "
                "e.g. -o wandb.mode=offline"
            )
        for tracker in [name] if dot else to:
            overrides[tracker][field] = value
    state_dir = root / STATE_DIR
    from nightlab.research.session import LEDGER_NAME
    from nightlab.store.ledger import Ledger

    if not (state_dir / LEDGER_NAME).is_file():
        raise UserError(f"{root}: no experiments yet; start with `nightlab run {shell_word(root)}`")
    target = TrackerTarget(root, state_dir)
    ledger = Ledger(state_dir / LEDGER_NAME)
    try:
        scope = ExportScope(ledger, chosen, config.metric.name, config.metric.direction.value, target)
        for name in to:
            tracker = make_tracker(config.trackers, name, target, overrides[name])
            where = getattr(tracker, "uri", None) or getattr(tracker, "mode", "")
            try:
                with _bounded_retries(name):
                    sent = export_tag(scope, tracker)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - a client's failure: one line, not its traceback
                raise ExportFailed(
                    f"{failure_line(name, exc)}" + (f" [{where}]" if where else "") + "; what was sent "
                    f"stays, and `nightlab export --to {name}` again sends the rest"
                ) from None
            console.print(
                f"{name}: {sent} experiment{'s' if sent != 1 else ''} of nightlab/{chosen} sent"
                + (f" ({where})" if where else ""),
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    finally:
        ledger.close()


class ExportFailed(UserError):
    """The tracker failed after nightlab checked what it could (a server answering with errors,
    refused credentials): exit code 1, since it may not be the user's input."""

    exit_code = 1


@contextlib.contextmanager
def _bounded_retries(name: str) -> Iterator[None]:
    """MLflow's retry variables, bounded for one export where the user has not set them
    (``EXPORT_HTTP_LIMITS``), put back afterwards. Safe here: export starts no training run
    that would inherit them."""
    if name != "mlflow":
        yield
        return
    from nightlab.store.trackers.mlflow import EXPORT_HTTP_LIMITS

    added = [key for key in EXPORT_HTTP_LIMITS if key not in os.environ]
    os.environ.update({key: EXPORT_HTTP_LIMITS[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@dataclass
class RunHooks:
    """What ``nightlab run`` hands its loop: the event sink (trackers subscribed) and should_stop."""

    events: EventSink
    should_stop: Callable[[], bool]
    # A pause or a stop waits: start nothing new (the loop asks should_stop once idle).
    wants_quiet: Callable[[], bool]
    # What ended the loop, for loop.json and the dashboard (else it reads "finished").
    ended: Callable[[str], None]


@contextlib.contextmanager
def run_hooks(session: Session) -> Iterator[RunHooks]:
    """The dashboard's controls and the live trackers around one ``nightlab run``."""
    from nightlab.events import EventSink
    from nightlab.report.dashboard.control import RunControl
    from nightlab.store.trackers.registry import TrackerTarget, check_trackers, make_tracker
    from nightlab.store.trackers.sync import ExportScope, LiveExport

    cfg = session.config
    check_trackers(cfg.trackers)
    state_dir = session.workspace.state_dir

    def say(line: str) -> None:
        console.print(f"[{time.strftime('%H:%M:%S')}] {line}", markup=False, highlight=False)

    events = EventSink()
    live = None
    if cfg.trackers.live:
        target = TrackerTarget(session.root, state_dir)
        trackers = [make_tracker(cfg.trackers, name, target) for name in cfg.trackers.live]
        scope = ExportScope(session.ledger, session.tag, cfg.metric.name, cfg.metric.direction.value, target)
        live = LiveExport(
            scope,
            trackers,
            warn=lambda line: err_console.print(
                terminal_safe(line), markup=False, highlight=False, soft_wrap=True
            ),
        )
        events.subscribe(live.on_event)
        live.start()
        say(f"trackers: every experiment goes to {', '.join(cfg.trackers.live)} as it is decided")
    try:
        with RunControl(state_dir, session.tag, notify=say) as control:
            yield RunHooks(
                events=events, should_stop=control.should_stop, wants_quiet=control.asked, ended=control.ended
            )
    finally:
        if live is not None:
            live.close()
