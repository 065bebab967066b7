"""Reading the metrics a run reports: ``metrics.json`` in its run directory, or a line of its log.

The files read here are written by the training or evaluation script, not by the user's
configuration, so a malformed one is the run's failure (the experiment crashes with a reason),
never a :class:`~nightlab.errors.UserError` that would stop the whole session.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


class MetricsFileError(ValueError):
    """A ``metrics.json`` that exists but cannot be read as JSON; the message names the file."""


def read_metrics_json(path: Path) -> dict[str, float]:
    """Numbers from a ``metrics.json``; non-numeric entries are kept out of the metric dict.

    A missing file, or JSON that is not an object, gives ``{}`` (the caller then reports the
    metric as not found). A file that cannot be read or parsed raises :class:`MetricsFileError`,
    so the caller can say why the run has no metric.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise MetricsFileError(f"{path}: not valid JSON ({exc})") from exc
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
