"""Sending a research tag's experiments to trackers: all at once, or live while the loop runs.

:func:`export_tag` is ``nightlab export --to NAME``: every finished experiment not already in
the tracker (so running it twice sends nothing twice). :class:`LiveExport` is ``[trackers]
live``: a background thread, woken by each decision the loop emits, that sends what finished
since its last pass. A tracker that fails (a server down, a network gone) costs one warning
line and a retry at the next decision (from the start: the tracker's session is opened again,
which for MLflow first checks in seconds that the server answers); it never stops or slows the
research. Nor does it hold up the end of the run: the last pass runs on the tracker thread, and
:meth:`LiveExport.close` waits for it at most :data:`CLOSE_SECONDS`, then says what was left
(``nightlab export`` sends it later).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from nightlab.errors import UserError
from nightlab.events import Event
from nightlab.secrets import secret_values
from nightlab.store.ledger import Ledger
from nightlab.store.trackers.records import (
    SessionRecord,
    experiment_record,
    finished_research,
    session_record,
)
from nightlab.store.trackers.registry import Tracker, TrackerTarget

# How long the end of ``nightlab run`` waits for the live trackers' last pass and close.
CLOSE_SECONDS = 30.0
# The most of a client's error message quoted in a warning or an error line.
MAX_DETAIL = 300


@dataclass
class ExportScope:
    """What is exported: one tag of one workspace, with its metric."""

    ledger: Ledger
    tag: str
    metric_name: str
    direction: str
    target: TrackerTarget

    def session(self) -> SessionRecord:
        """The tag's summary as it stands now."""
        return session_record(self.ledger, self.tag, self.target.root.name, self.metric_name, self.direction)


def export_tag(
    scope: ExportScope, tracker: Tracker, on_experiment: Callable[[int], None] | None = None
) -> int:
    """Send every finished experiment of the scope's tag that the tracker lacks; how many were sent."""
    secrets = secret_values(os.environ)
    tracker.open_session(scope.session())
    sent = 0
    try:
        done = tracker.exported()
        for e in finished_research(scope.ledger, scope.tag):
            if e.id in done:
                continue
            tracker.log(
                experiment_record(scope.ledger, e, scope.metric_name, scope.target.state_dir, secrets)
            )
            sent += 1
            if on_experiment is not None:
                on_experiment(e.id)
    except BaseException:
        # Close what was sent, but the failure is the news: a close that fails too (the same
        # server down) must not replace it.
        with contextlib.suppress(Exception):
            tracker.close(scope.session())
        raise
    tracker.close(scope.session())
    return sent


def failure_line(name: str, exc: Exception) -> str:
    """What went wrong with tracker ``name``, on one line: a client's exception can run to many
    (MLflow's quotes the whole urllib3 chain), and what to fix comes first when nightlab knows it."""
    if isinstance(exc, UserError):
        return " ".join(str(exc).split())
    detail = " ".join(str(exc).split())
    detail = detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 3] + "..."
    return f"{name} export failed ({type(exc).__name__}: {detail})"


class LiveExport:
    """Trackers fed while ``nightlab run`` runs; subscribe :meth:`on_event` to the loop's events."""

    def __init__(
        self, scope: ExportScope, trackers: list[Tracker], warn: Callable[[str], None], every: float = 30.0
    ) -> None:
        self.scope = scope
        self.trackers = trackers
        self.warn = warn
        self.every = every  # seconds between passes when no decision wakes it
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._done: dict[str, set[int]] = {}
        self._warned: set[str] = set()
        self._secrets = secret_values(os.environ)
        # A daemon: one stuck on a server that never answers must not keep the process alive.
        self._thread = threading.Thread(target=self._run, name="nightlab-trackers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def on_event(self, event: Event) -> None:
        if event.kind in ("decision", "resume"):
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.every)
            self._wake.clear()
            if not self._stop.is_set():
                self.sync()
        self._finish()

    def sync(self) -> None:
        """One pass: every tracker gets what finished since its last pass."""
        for tracker in self.trackers:
            try:
                if tracker.name not in self._done:
                    tracker.open_session(self.scope.session())
                    self._done[tracker.name] = tracker.exported()
                done = self._done[tracker.name]
                for e in finished_research(self.scope.ledger, self.scope.tag):
                    if e.id in done:
                        continue
                    record = experiment_record(
                        self.scope.ledger,
                        e,
                        self.scope.metric_name,
                        self.scope.target.state_dir,
                        self._secrets,
                    )
                    tracker.log(record)
                    done.add(e.id)
            except Exception as exc:  # noqa: BLE001 - a tracker must never stop the research
                self._done.pop(tracker.name, None)  # the next pass opens the session afresh
                self._warn_once(tracker.name, exc, "retrying at the next decision")

    def _warn_once(self, name: str, exc: Exception, then: str) -> None:
        """One line per tracker and kind of failure, however often it fails the same way."""
        key = f"{name}: {type(exc).__name__}"
        if key in self._warned:
            return
        self._warned.add(key)
        self.warn(f"warning: {failure_line(name, exc)}; {then}")

    def _finish(self) -> None:
        """The last pass, then every tracker whose session is open is closed."""
        self.sync()
        for tracker in self.trackers:
            if tracker.name not in self._done:  # never reached: nothing to close
                continue
            try:
                tracker.close(self.scope.session())
            except Exception as exc:  # noqa: BLE001 - the research is over; say so and go on
                self._warn_once(tracker.name, exc, "its summary was not updated")

    def close(self, wait: float = CLOSE_SECONDS) -> None:
        """Stop the thread after its last pass, waiting at most ``wait`` seconds for it."""
        self._stop.set()
        self._wake.set()
        if not self._thread.is_alive():
            if self._thread.ident is None:  # never started: the last pass here
                self._finish()
            return
        self._thread.join(timeout=wait)
        if self._thread.is_alive():
            names = ", ".join(t.name for t in self.trackers)
            self.warn(
                f"warning: {names} still sending after {wait:.0f} s; not waiting longer: "
                f"`nightlab export --to NAME` sends what is missing"
            )
