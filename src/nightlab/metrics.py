"""Metric values that know which way is better, and reading a run's metrics.

A :class:`Direction` turns "is this better?" into one comparison, so no caller writes
``<`` for a minimised metric and ``>`` for a maximised one by hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from nightlab.errors import UserError


def read_metrics_json(path: Path) -> dict[str, float]:
    """Numbers from a ``metrics.json``; non-numeric entries are kept out of the metric dict."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        return {}
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[str(key)] = float(value)
    return out


def parse_log_metric(text: str, pattern: str) -> float | None:
    """The last match of ``pattern`` (first group) in a log, as a float, or None if absent.

    The last match counts because training scripts often print intermediate values; the summary
    block comes last.
    """
    regex = re.compile(pattern, re.MULTILINE)
    value: float | None = None
    for match in regex.finditer(text):
        try:
            value = float(match.group(1))
        except (IndexError, ValueError):
            continue
    return value
