"""Sending a research tag's experiments to trackers: all at once, or live while the loop runs.

:func:`export_tag` is ``nightlab export --to NAME``: every finished experiment not already in
the tracker (so running it twice sends nothing twice). :class:`LiveExport` is ``[trackers]
live``: a background thread, woken by each decision the loop emits, that sends what finished
since its last pass. A tracker that fails (a server down, a network gone) costs one warning
line and a retry at the next decision; it never stops or slows the research.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

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
    done = tracker.exported()
    sent = 0
    try:
        for e in finished_research(scope.ledger, scope.tag):
            if e.id in done:
                continue
            tracker.log(
                experiment_record(scope.ledger, e, scope.metric_name, scope.target.state_dir, secrets)
            )
            sent += 1
            if on_experiment is not None:
                on_experiment(e.id)
    finally:
        tracker.close(scope.session())
    return sent


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
                message = (
                    f"warning: {tracker.name} export failed ({type(exc).__name__}: {exc}); retrying later"
                )
                if message not in self._warned:
                    self._warned.add(message)
                    self.warn(message)

    def close(self) -> None:
        """Stop the thread, send what is left, and close every tracker."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=60)
        self.sync()
        for tracker in self.trackers:
            try:
                tracker.close(self.scope.session())
            except Exception as exc:  # noqa: BLE001 - the research is over; say so and go on
                self.warn(f"warning: {tracker.name} could not be closed ({type(exc).__name__}: {exc})")
