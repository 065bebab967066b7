"""Reading back what the ledger recorded as text: a run directory and a timestamp.

The dashboard and the tracker exports both turn ledger rows into something a person looks at;
they must agree on where a run's files are and when it happened, so the two readings live here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path


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
