"""Events the loop emits for whoever watches: the live terminal view, plain logs, tests.

The loop never prints; it emits. That keeps the loop free of UI code and lets the dashboard
or a test subscribe to the same stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Event:
    kind: str  # resume | run | run_done | confirm | proposal | decision | finished | notice
    message: str
    experiment_id: int | None = None
    replicate: int | None = None
    data: dict = field(default_factory=dict)


class EventSink:
    """Fan-out to subscribers; a failing subscriber never breaks the loop."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        self._subscribers.append(callback)

    def emit(self, event: Event) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - a view must not stop the research
                pass
