"""Time to target: how long each side trains before its validation metric reaches a value.

The protocol a training target follows (the GPT template does it in its frozen harness.py and
evaluation.py; any script may):

- ``NIGHTLAB_EVAL_INTERVAL_SECONDS=S``: every S seconds of *training* time (checkpoint time not
  counted), leave a checkpoint and a line in ``$NIGHTLAB_RUN_DIR/progress.jsonl``; the frozen
  progress evaluator (``[target] progress_evaluate``, run beside training) scores it and appends
  ``{"seconds": t, "tokens": n, "<metric>": value}`` to ``progress.eval.jsonl``, so the training
  process never holds validation data. (A target without a progress evaluator may write the
  metric into its own progress lines; older runs wrote ``curve.jsonl``, still read.)
- ``NIGHTLAB_TARGET_METRIC=X`` (with ``NIGHTLAB_TARGET_DIRECTION``, ``minimize`` or
  ``maximize``): once a checkpoint reaches X the evaluator creates ``$NIGHTLAB_RUN_DIR/stop``;
  training stops at its next step, then finishes as usual (export, frozen evaluation).

A script that does none of this but prints its validation metric as it trains is read through
``[metric] progress_pattern`` with a ``seconds`` group (``t (?P<seconds>[0-9.]+) val loss
([0-9.]+)``): after each run its log's points become the run's ``curve.jsonl``
(:func:`curve_from_log`). Such a script does not stop at the target, so its runs train to the
cap.

The harness reads the curve, finds where it first crosses the target (interpolating between
the two evaluations around the crossing), and compares the two sides' times: a speedup in the
style "2.02 h → 1.80 h, −11%". The final frozen evaluation of each run is kept beside it, so a
curve that claims the target while the frozen evaluation disagrees is flagged, not trusted.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from nightlab import safefile
from nightlab.config import BudgetConfig, Config
from nightlab.metrics import LEGACY_CURVE_FILE, read_curve_points
from nightlab.stats import mean, welch
from nightlab.types import Direction

ENV_INTERVAL = "NIGHTLAB_EVAL_INTERVAL_SECONDS"
ENV_TARGET = "NIGHTLAB_TARGET_METRIC"
ENV_DIRECTION = "NIGHTLAB_TARGET_DIRECTION"
# Evaluations over the scale's budget when --eval-interval is not given.
DEFAULT_POINTS_PER_BUDGET = 10
# The most --cap may stretch a budget: a side that never reaches the target trains this long.
MAX_CAP = 100.0


@dataclass(frozen=True)
class CurvePoint:
    """One periodic evaluation: training seconds, tokens and optimizer steps so far, the metric."""

    training_seconds: float
    tokens: float | None
    value: float
    step: float | None = None


@dataclass(frozen=True)
class Crossing:
    """Where one run reached the target (interpolated), or where it stopped without reaching it."""

    seconds: float
    tokens: float | None
    reached: bool


def protocol_env(interval: float | None, target: float | None, direction: Direction) -> dict[str, str]:
    """The environment that asks a training script for a curve (and to stop at ``target``)."""
    env: dict[str, str] = {}
    if interval is not None:
        env[ENV_INTERVAL] = f"{interval:g}"
    if target is not None:
        env[ENV_TARGET] = repr(float(target))
        env[ENV_DIRECTION] = Direction(direction).value
    return env


def default_interval(budget: BudgetConfig) -> float | None:
    """A tenth of a seconds budget; None when the budget is in tokens or steps only."""
    return budget.seconds / DEFAULT_POINTS_PER_BUDGET if budget.seconds else None


def capped_budget(budget: BudgetConfig, factor: float) -> BudgetConfig:
    """``budget`` times ``factor``: the most a time-to-target run may train before giving up.

    Every kind of budget the scale sets is scaled (a kind left out would be dropped, and the
    run would fall back to the default 60 seconds). The hard timeout grows more than the
    budget, because periodic evaluations add wall time that the training clock does not count.
    """
    return BudgetConfig(
        seconds=budget.seconds * factor if budget.seconds else None,
        tokens=int(budget.tokens * factor) if budget.tokens else None,
        steps=int(budget.steps * factor) if budget.steps else None,
        flops=budget.flops * factor if budget.flops else None,
        timeout=budget.timeout * factor * 2,
        evaluate_timeout=budget.evaluate_timeout,
    )


def read_curve(run_dir: Path, metric_name: str) -> list[CurvePoint]:
    """A run's learning curve (:func:`nightlab.metrics.read_curve_points`), by training time."""
    points = [
        CurvePoint(p["seconds"], p.get("tokens"), p["value"], p.get("step"))
        for p in read_curve_points(run_dir, metric_name)
        if "seconds" in p
    ]
    return sorted(points, key=lambda p: p.training_seconds)


def curve_from_log(run_dir: Path, config: Config) -> int:
    """Write the points ``[metric] progress_pattern`` finds in the run's log (read as pruning
    reads them, :class:`~nightlab.research.progress.ProgressReader`) as the run's
    ``curve.jsonl``, once the run has ended, so the study, the report and the dashboard read one
    curve. Only points with training seconds (the pattern's ``seconds`` group) count: time to
    target is in training seconds. Nothing when the run already has a curve. Returns the number
    of points written."""
    from nightlab.research.progress import ProgressReader

    metric = config.metric
    if not metric.progress_pattern or read_curve_points(run_dir, metric.name):
        return 0
    points = [p for p in ProgressReader(Path(run_dir), config).points() if p.seconds is not None]
    lines = [json.dumps({**p.to_dict(), metric.name: p.value}) for p in points if p.value is not None]
    if lines:
        with open(safefile.new_file(Path(run_dir) / LEGACY_CURVE_FILE), "w") as out:
            out.write("\n".join(lines) + "\n")
    return len(lines)


def crossing(points: list[CurvePoint], target: float, direction: Direction | str) -> Crossing | None:
    """The first crossing of ``target``, interpolated linearly between the evaluations around it.

    A run that never reached it gives its last point with ``reached=False`` (a lower bound on
    its time to target); a run without any point gives None.
    """
    direction = Direction(direction)
    if not points:
        return None
    previous = None
    for point in points:
        if not direction.better(target, point.value):  # at or beyond the target
            if previous is None:
                return Crossing(point.training_seconds, point.tokens, True)
            span = previous.value - point.value
            frac = (previous.value - target) / span if span else 1.0
            frac = min(1.0, max(0.0, frac))
            seconds = previous.training_seconds + frac * (point.training_seconds - previous.training_seconds)
            tokens = None
            if previous.tokens is not None and point.tokens is not None:
                tokens = previous.tokens + frac * (point.tokens - previous.tokens)
            return Crossing(seconds, tokens, True)
        previous = point
    last = points[-1]
    return Crossing(last.training_seconds, last.tokens, False)


@dataclass(frozen=True)
class Speedup:
    """Side B's time to target against side A's; ``change`` is relative (−0.11 is 11% faster)."""

    quantity: str  # "time" or "tokens"
    mean_a: float
    mean_b: float
    change: float
    ci_low: float | None  # of the relative change
    ci_high: float | None
    p_value: float | None
    censored: bool  # some run did not reach the target: its value is a lower bound
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


def speedup(
    a: list[Crossing], b: list[Crossing], quantity: str = "time", confidence: float = 0.95
) -> Speedup | None:
    """Compare the crossings of both sides by seconds (``time``) or tokens; None without data."""
    pick = (lambda c: c.seconds) if quantity == "time" else (lambda c: c.tokens)
    va = [pick(c) for c in a if pick(c) is not None]
    vb = [pick(c) for c in b if pick(c) is not None]
    if not va or not vb or mean(va) <= 0:
        return None
    mean_a, mean_b = mean(va), mean(vb)
    change = (mean_b - mean_a) / mean_a
    ci_low = ci_high = p = None
    if len(va) >= 2 and len(vb) >= 2 and min(va + vb) > 0:
        # On the log scale (the ratio B/A): a time or a token count cannot fall by more than
        # 100%, and the CI of the difference over A's mean said so with few seeds ("95% CI −108%
        # … −25%" at two seeds a side).
        test = welch([math.log(v) for v in vb], [math.log(v) for v in va], confidence)
        ci_low, ci_high, p = math.expm1(test.ci_low), math.expm1(test.ci_high), test.p_two_sided
    elif len(va) >= 2 and len(vb) >= 2:
        test = welch(vb, va, confidence)
        ci_low, ci_high, p = test.ci_low / mean_a, test.ci_high / mean_a, test.p_two_sided
    censored = not all(c.reached for c in [*a, *b])
    fmt = format_duration if quantity == "time" else format_tokens
    unit_of = max(mean_a, mean_b)
    text = f"{fmt(mean_a, unit_of)} → {fmt(mean_b, unit_of)}, {format_percent(change)}"
    return Speedup(quantity, mean_a, mean_b, change, ci_low, ci_high, p, censored, text)


def format_percent(change: float) -> str:
    """−11% / +4% (a real minus sign, as in the issue's "2.02 h → 1.80 h, −11%")."""
    pct = round(change * 100)
    if pct == 0 and change != 0:
        return f"{'−' if change < 0 else '+'}{abs(change) * 100:.1f}%"
    return f"{'−' if pct < 0 else '+'}{abs(pct)}%"


def format_duration(seconds: float, unit_of: float | None = None) -> str:
    """Seconds as '41.2 s', '14.3 min' or '2.02 h', the unit chosen by ``unit_of`` (default itself)."""
    ref = seconds if unit_of is None else unit_of
    if ref >= 3600:
        return f"{seconds / 3600:.2f} h"
    if ref >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def format_tokens(tokens: float, unit_of: float | None = None) -> str:
    """Tokens as '1.20B', '35.4M' or '812k' tokens."""
    ref = tokens if unit_of is None else unit_of
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if ref >= limit:
            return f"{tokens / limit:.3g}{suffix} tokens"
    return f"{tokens:.0f} tokens"
