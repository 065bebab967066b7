"""The lessons call's text: what each finished experiment is told as, and the lines read back.

The model writes one line per experiment ("#7: LR above 0.05 diverges"); those lines go to the
ledger and into every later prompt. Every piece of an experiment sent here is bounded, so one
long hypothesis or crash log cannot make the lessons request larger than the model takes.
"""

from __future__ import annotations

import re

from nightlab.types import HistoryEntry

# The most characters of an experiment's description, hypothesis and reason the lessons call
# sends: a hypothesis from `nightlab try`, MCP or a coding CLI can be of any length.
FIELD_CHARS = 500
LOG_TAIL_CHARS = 800


def lesson_fact(e: HistoryEntry) -> str:
    """One finished experiment as the lessons call tells it: what it tried and what came of it."""
    delta = (
        "n/a"
        if e.delta is None
        else f"{e.delta:+.4g}" + (f" ± {e.spread:.2g}" if e.spread is not None else "")
    )
    text = (
        f"#{e.id}: {_bounded(e.description)}\nhypothesis: {_bounded(e.hypothesis or '-')}\n"
        f"result: status {e.status}, decision {e.decision}, improvement {delta} over {e.runs} runs; "
        f"{_bounded(e.reason or '')}"
    )
    if e.status in ("crash", "timeout", "oom", "nan") and e.log_tail:
        text += "\nlog tail:\n" + e.log_tail[-LOG_TAIL_CHARS:]
    return text


def _bounded(text: str) -> str:
    return text if len(text) <= FIELD_CHARS else text[:FIELD_CHARS] + " [...]"


_LESSON_LINE = re.compile(r"^\W*#?\s*(\d+)\s*[:.)\]-]\s*(.+)$")


def parse_lessons(text: str, ids: list[int]) -> dict[int, str]:
    """Lines '#<id>: lesson' for the ids asked about; a single bare line answers a single id."""
    found: dict[int, str] = {}
    for line in text.splitlines():
        match = _LESSON_LINE.match(line.strip())
        if match and int(match.group(1)) in ids:
            found[int(match.group(1))] = match.group(2).strip()[:300]
    if not found and len(ids) == 1 and text.strip():
        found[ids[0]] = text.strip().splitlines()[0][:300]
    return found
