"""Reading back what the ledger recorded as text: a run directory, a timestamp, a slot.

The dashboard, the tracker exports and ``nightlab status`` turn ledger rows into something a
person looks at; they must agree on where a run's files are, when it happened and where it ran,
so those readings live here.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from nightlab.safefile import read_text

# The slot record is a few hundred bytes (a long command: a few KB); the run can make it anything (a FIFO, a link, a
# flood: a FIFO there hung `nightlab status` for as long as the run lasted and after, found from
# outside).
SLOT_LIMIT = 1 << 20

# Beside a replicate's log while it runs: which slot, which device, since when.
SLOT_FILE = "slot.json"


def recorded_run_dir(state_dir: Path, recorded: str | None) -> Path | None:
    """A run directory as recorded (absolute, or relative to the workspace), if it still exists."""
    if not recorded:
        return None
    path = Path(recorded)
    if not path.is_absolute():
        path = state_dir.parent / path
    return path if path.is_dir() else None


def recorded_time(text: str | None) -> datetime | None:
    """A recorded ISO timestamp as an aware datetime (UTC when it carries no zone); None if unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def read_slot(run_dir: Path) -> dict:
    """The slot record of a run directory (``slot``, ``device``, ``started_at``); empty when the
    replicate ran without one."""
    try:  # the run can replace it: a regular file only, never through a link, never a FIFO
        data = json.loads(read_text(Path(run_dir) / SLOT_FILE, SLOT_LIMIT))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def in_flight(state_dir: Path, running: list[tuple[int, str, set[int]]]) -> list[dict]:
    """The replicates in flight: for each running experiment ``(id, description, replicates
    recorded)``, every run directory without a recorded run, with its slot, oldest slot first."""
    out = []
    for exp_id, description, recorded in running:
        folder = Path(state_dir) / "runs" / f"{exp_id:04d}"
        try:
            replicates = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
        except OSError:
            continue
        for replicate in (r for r in replicates if r not in recorded):
            slot = read_slot(folder / str(replicate))
            out.append(
                {
                    "experiment": exp_id,
                    "replicate": replicate,
                    "description": description,
                    "slot": slot.get("slot"),
                    "device": slot.get("device"),
                    "started_at": slot.get("started_at"),
                }
            )
    return sorted(out, key=lambda r: (r["slot"] is None, r["slot"] or 0, r["experiment"]))
