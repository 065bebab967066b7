"""Reading the metrics a run reports: ``metrics.json`` in its run directory, or a line of its log.

The files read here are written by the training or evaluation script, not by the user's
configuration, so a malformed one is the run's failure (the experiment crashes with a reason),
never a :class:`~nightlab.errors.UserError` that would stop the whole session.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from nightlab.safefile import read_bytes, read_text

# What json.loads raises on text a run wrote: ValueError, or RecursionError for arrays nested
# deeper than Python's stack (found from outside: one line of 100,000 "[" in progress.jsonl
# ended `nightlab run` with a traceback, in the report written after the night).
BAD_JSON = (ValueError, RecursionError)


class MetricsFileError(ValueError):
    """A ``metrics.json`` that exists but cannot be read as JSON; the message names the file."""


def read_metrics_json(path: Path) -> dict[str, float]:
    """Numbers from a ``metrics.json``; non-numeric entries are kept out of the metric dict.

    The file may also be JSON lines (``{"step": 10, "val_loss": 1.23}`` per evaluation, as many
    training scripts log): each name then takes the last number any line gave it.
    A missing file, or JSON that is not an object, gives ``{}`` (the caller then reports the
    metric as not found). A file that cannot be read or parsed raises :class:`MetricsFileError`,
    so the caller can say why the run has no metric.
    """
    try:
        text = read_bytes(path).decode()  # a symlink or FIFO the run left: an OSError, never followed
    except FileNotFoundError:
        return {}
    except ValueError as exc:  # not UTF-8
        raise MetricsFileError(f"{path}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise MetricsFileError(f"{path}: cannot be read ({exc})") from exc
    try:
        objects = [json.loads(text)]
    except BAD_JSON as exc:
        objects = _json_lines(text)
        if not objects:
            raise MetricsFileError(f"{path}: not valid JSON, nor JSON lines ({exc})") from exc
    out: dict[str, float] = {}
    for data in objects:  # JSON lines (a log of evaluations): each name's last number counts
        if not isinstance(data, dict):
            continue
        for key, value in data.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                out[str(key)] = float(value)
    return out


def _json_lines(text: str) -> list[object]:
    """The lines of ``text`` that parse as JSON objects, in order (a trailing line cut off by a
    killed writer is skipped); empty when no line does."""
    found: list[object] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except BAD_JSON:
                continue
    return found


_NON_FINITE = re.compile(r"(?<![A-Za-z])[-+]?(nan|inf|infinity)(?![A-Za-z])", re.IGNORECASE)


def non_finite_line(log: str, name: str, pattern: str | None) -> str | None:
    """The last log line that names the metric (its name, or the longest plain words of the
    pattern: ``val loss`` of ``'val loss ([0-9.]+)'``) and gives it as NaN or infinity."""
    words = sorted(re.findall(r"(?<!\\)[A-Za-z_][A-Za-z0-9_ ]*[A-Za-z0-9_]", pattern or ""), key=len)
    labels = [name] + ([words[-1]] if words and len(words[-1]) > 2 else [])
    for line in reversed(log.splitlines()[-200:]):
        for label in labels:
            if label in line and _NON_FINITE.search(line.split(label, 1)[1]):
                return line.strip()
    return None


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


# A run's progress points (docs/CONFIG.md, progress): the frozen progress evaluator's scores of
# the run's checkpoints, the run's own progress lines, and the older time-to-target curve file.
EVAL_PROGRESS_FILE = "progress.eval.jsonl"
PROGRESS_FILE = "progress.jsonl"
LEGACY_CURVE_FILE = "curve.jsonl"
# What a reader takes of one progress file, which the training process writes: a line is about
# 100 bytes (64 MB: over half a million points). Read whole, an 800 MB one took the harness to
# 1.76 GB resident at the end of a night (its report), found from outside.
MAX_PROGRESS_BYTES = 64 << 20
# While a run trains, its progress evaluator writes its scores in a folder beside the run
# directory that the training process cannot see (a val oracle otherwise); moved in at the end.
SCORES_SUFFIX = ".scores"


def scores_dir(run_dir: Path) -> Path:
    """The folder beside ``run_dir`` where its progress evaluator's scores are while it trains."""
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + SCORES_SUFFIX)


def read_curve_points(run_dir: Path, metric_name: str) -> list[dict[str, float]]:
    """The metric of a run at its checkpoints, oldest first: dicts with ``value`` and whichever of
    ``seconds`` (training seconds), ``tokens``, ``step``, ``fraction`` the line gave.

    Read from the progress evaluator's file when there is one (beside the run directory while
    it trains, :func:`scores_dir`), else from the run's own progress lines that carry the metric,
    else from ``curve.jsonl`` (runs recorded before progress files); lines without a finite
    metric are skipped.
    """
    live = scores_dir(run_dir) / EVAL_PROGRESS_FILE  # a run still training: its scores so far
    files = [live, *(Path(run_dir) / name for name in (EVAL_PROGRESS_FILE, PROGRESS_FILE, LEGACY_CURVE_FILE))]
    for path in files:
        try:  # a regular file, never through a link the run left, at most MAX_PROGRESS_BYTES
            text = read_text(path, MAX_PROGRESS_BYTES)
        except OSError:
            continue
        points = []
        for line in text.splitlines():
            try:
                data = json.loads(line)
            except BAD_JSON:
                continue
            if not isinstance(data, dict):
                continue
            value = _finite(data.get(metric_name))
            if value is None:
                continue
            point = {"value": value}
            for key, source in (("seconds", "seconds"), ("seconds", "training_seconds"), ("tokens", "tokens"),
                                ("step", "step"), ("fraction", "fraction")):  # fmt: skip
                number = _finite(data.get(source))
                if number is not None:
                    point.setdefault(key, number)
            points.append(point)
        if points:
            return points
    return []


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if number == number and abs(number) != float("inf") else None
