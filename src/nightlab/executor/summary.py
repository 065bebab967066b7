"""Reading what a training script said about itself: its summary block and its status lines.

Scripts in autoresearch's style end with a block of ``key: value`` lines after a ``---`` line::

    ---
    val_bpb:          0.997900
    training_seconds: 300.1
    peak_vram_mb:     45060.2

and may say how they ended with a status line, ``status: nan (loss diverged at step 120)``.
These are plain-text conventions, so they work for any script in any language; the frozen
evaluation's ``metrics.json`` remains the trusted source of the metric itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-/]*)\s*:\s*(\S.*?)\s*$")
_STATUS = re.compile(r"^status:\s*([A-Za-z_]+)\s*(?:\((.*)\))?\s*$", re.IGNORECASE)
_TRACEBACK = "Traceback (most recent call last):"

# Summary keys that are words, not numbers, and never metrics.
_NOT_METRICS = frozenset({"status"})


def visible_lines(text: str) -> list[str]:
    """Lines as a terminal shows them: a carriage return overwrites, so only its last part counts.

    Training scripts redraw progress with ``\\r``; without this a whole run is one "line".
    """
    return [line.rsplit("\r", 1)[-1] if "\r" in line else line for line in text.split("\n")]


def _number(value: str) -> float | None:
    token = value.split()[0].rstrip("%,")
    try:
        number = float(token)
    except ValueError:
        return None
    return number


def parse_summary(text: str) -> dict[str, float]:
    """The numeric ``key: value`` lines after the last line that is exactly ``---``.

    Values are read as floats (a trailing unit or ``%`` is ignored: ``12.5 MB`` is 12.5); lines
    that are not ``key: value`` or whose value is not a number are skipped, so a warning printed
    after the block does not hide it. No ``---`` line: no summary, an empty dict.
    """
    lines = visible_lines(text)
    start = None
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].strip() == "---":
            start = index + 1
            break
    if start is None:
        return {}
    metrics: dict[str, float] = {}
    for line in lines[start:]:
        match = _KEY.match(line.strip())
        if not match or match.group(1).lower() in _NOT_METRICS:
            continue
        number = _number(match.group(2))
        if number is not None:
            metrics[match.group(1)] = number
    return metrics


@dataclass(frozen=True)
class StatusLine:
    """A script's own verdict: ``status: <word> (<detail>)``; ``word`` is lower case."""

    word: str
    detail: str = ""

    def describe(self) -> str:
        return f"{self.word}: {self.detail}" if self.detail else self.word


def parse_status_lines(text: str) -> list[StatusLine]:
    """Every ``status: word (detail)`` line, in order (the detail in parentheses is optional)."""
    found = []
    for line in visible_lines(text):
        match = _STATUS.match(line.strip())
        if match:
            found.append(StatusLine(match.group(1).lower(), (match.group(2) or "").strip()))
    return found


def last_status(text: str) -> StatusLine | None:
    """The last status line, the one that counts when a script printed several."""
    lines = parse_status_lines(text)
    return lines[-1] if lines else None


def traceback_start(lines: list[str]) -> int | None:
    """Index of the last ``Traceback (most recent call last):`` line, or None."""
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].strip() == _TRACEBACK:
            return index
    return None


def exception_line(text: str) -> str | None:
    """The last traceback's exception line ("ZeroDivisionError: division by zero"), or None.

    Frames and source lines of a traceback are indented; the first unindented line after the
    last ``Traceback`` header is the exception (chained exceptions come before that header).
    """
    lines = visible_lines(text)
    start = traceback_start(lines)
    if start is None:
        return None
    for line in lines[start + 1 :]:
        if line.strip() and not line[:1].isspace():
            return line.strip()
    return None


# Frames drawn around a message (rich's error panels, which click and typer print): U+2500-U+257F.
_FRAME = "".join(chr(c) for c in range(0x2500, 0x2580)) + " \t|+"


def last_line(text: str) -> str:
    """The last line that says something, stripped ("" for an empty log): a line of a frame
    drawn around a message (``╰────╯``) says nothing, and a framed line (``│ No such option:
    --lr │``) is read without its frame, so a crash of a typer script is not told as ``╰───╯``."""
    for line in reversed(visible_lines(text)):
        inner = line.strip().strip(_FRAME)
        if any(ch.isalnum() for ch in inner):
            return inner
    return ""


def log_tail(text: str, lines: int = 60, max_chars: int = 8192) -> str:
    """The last ``lines`` lines, reaching back to the start of the last traceback if it began
    earlier, then capped at ``max_chars`` from the end (cut at a line boundary) so the
    exception line, which comes last, always survives.
    """
    visible = visible_lines(text.rstrip("\n"))
    start = max(0, len(visible) - lines)
    tb = traceback_start(visible)
    if tb is not None:
        start = min(start, tb)
    tail = "\n".join(visible[start:])
    if len(tail) > max_chars:
        tail = tail[-max_chars:]
        newline = tail.find("\n")
        if 0 <= newline < len(tail) - 1:
            tail = tail[newline + 1 :]
    return tail
