"""Pause, resume and stop a running ``nightlab run`` from outside it (the dashboard's buttons).

Two small JSON files under ``.nightlab/`` carry it, so the server and the loop never share a
process or a socket:

* ``control.json``: what a person asked (``pause``, ``resume`` or ``stop``), written by
  ``nightlab serve`` for a request that carried the token;
* ``loop.json``: what the loop is doing (``running``, ``paused``, ``stopped``), its pid and tag,
  written by ``nightlab run``.

The research loop itself is untouched: ``nightlab run`` hands :meth:`RunControl.should_stop` to
the loop, which calls it between experiments. A pause blocks inside that call (so the current
experiment finishes first: "pause after the current experiment"), a resume returns, a stop
returns True and the loop ends with "stopped by the user". Ctrl-C still works while paused.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

CONTROL_FILE = "control.json"
LOOP_FILE = "loop.json"
ACTIONS = ("pause", "resume", "stop")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write(path: Path, data: dict) -> None:
    """Write JSON to a temporary name and rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def request(state_dir: Path, action: str, by: str = "dashboard") -> dict:
    """Ask the running loop to ``pause``, ``resume`` or ``stop``; returns what was written."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    data = {"action": action, "at": _now(), "by": by}
    _write(Path(state_dir) / CONTROL_FILE, data)
    return data


def requested(state_dir: Path) -> str | None:
    """The last action asked and not yet carried out (None when nothing is pending)."""
    action = _read(Path(state_dir) / CONTROL_FILE).get("action")
    return action if action in ACTIONS else None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def loop_state(state_dir: Path) -> dict:
    """What the page shows about the loop: its state (``running``, ``paused``, ``stopped``, or
    ``not running`` when no ``nightlab run`` is alive), since when, and any pending request."""
    data = _read(Path(state_dir) / LOOP_FILE)
    state = data.get("state") or "not running"
    if state in ("running", "paused") and not _alive(data.get("pid")):
        state = "not running"  # killed without a chance to say so
    return {
        "state": state,
        "since": data.get("since"),
        "tag": data.get("tag"),
        "why": data.get("why"),
        "requested": requested(state_dir),
    }


class RunControl:
    """The ``should_stop`` callback of one ``nightlab run``, and the ``loop.json`` it keeps.

    Use as a context manager: entering clears a request left from an earlier run (a stop meant
    for last night must not end tonight's) and marks the loop running; leaving marks it stopped.
    ``notify`` is told, in one line, when the loop pauses and resumes.
    """

    def __init__(
        self, state_dir: Path, tag: str, notify: Callable[[str], None] | None = None, poll: float = 0.5
    ) -> None:
        self.state_dir = Path(state_dir)
        self.tag = tag
        self.notify = notify or (lambda line: None)
        self.poll = poll
        self.why: str | None = None  # why the loop ended, once it says (:meth:`ended`)

    def __enter__(self) -> RunControl:
        (self.state_dir / CONTROL_FILE).unlink(missing_ok=True)
        self._say("running")
        return self

    def __exit__(self, *exc: object) -> None:
        self._say("stopped", why="interrupted" if exc and exc[0] is not None else self.why or "finished")

    def ended(self, why: str) -> None:
        """What ended the loop (a time limit, the agent's stop and its reason): the dashboard
        shows it once the run has stopped, so a night that ended early says why."""
        self.why = why

    def _say(self, state: str, why: str | None = None) -> None:
        _write(
            self.state_dir / LOOP_FILE,
            {"pid": os.getpid(), "tag": self.tag, "state": state, "since": _now(), "why": why},
        )

    def _consume(self) -> None:
        (self.state_dir / CONTROL_FILE).unlink(missing_ok=True)

    def asked(self) -> bool:
        """Whether a pause or a stop waits: the loop then starts nothing new, lets what runs
        finish, and calls :meth:`should_stop` once nothing is in flight."""
        return requested(self.state_dir) in ("pause", "stop")

    def should_stop(self) -> bool:
        """Called by the loop between experiments: True to stop; blocks while paused."""
        action = requested(self.state_dir)
        if action == "stop":
            self._consume()
            return True
        if action != "pause":
            return False
        self._say("paused")
        self.notify("paused from the dashboard after the current experiment: resume or stop it there")
        while True:
            time.sleep(self.poll)
            action = requested(self.state_dir)
            if action == "stop":
                self._consume()
                return True
            if action != "pause":
                self._consume()
                self._say("running")
                self.notify("resumed from the dashboard")
                return False
