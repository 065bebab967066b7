"""Metric values that know which way is better, and reading a run's metrics.

A :class:`Direction` turns "is this better?" into one comparison, so no caller writes
``<`` for a minimised metric and ``>`` for a maximised one by hand.
"""

from __future__ import annotations

import json
import math
import re
from enum import Enum
from pathlib import Path

from nightlab.errors import UserError


class Direction(str, Enum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"

    @property
    def sign(self) -> float:
        """+1 where larger is better, -1 where smaller is: ``sign * (a - b) > 0`` means a beats b."""
        return 1.0 if self is Direction.MAXIMIZE else -1.0

    @property
    def worst(self) -> float:
        return -math.inf if self is Direction.MAXIMIZE else math.inf

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b``."""
        return self.sign * (a - b) > 0

    def improvement(self, candidate: float, incumbent: float) -> float:
        """How much better ``candidate`` is than ``incumbent``, positive when better."""
        return self.sign * (candidate - incumbent)


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
