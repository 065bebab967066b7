"""Progress points of a run while it trains: where its metric stood at a share of its budget.

Three sources, read incrementally (each poll reads only what was appended since the last):

- ``progress.eval.jsonl``: points a frozen progress evaluator scored from the run's checkpoints
  (``[target] progress_evaluate``), so the training process never holds validation data; written
  in a folder beside the run directory the training process cannot see (``scores``), or (an
  evaluator that ignores ``NIGHTLAB_SCORES_DIR``) in the run directory. A line with ``invalid``
  is the evaluator refusing a checkpoint (a model that looks ahead): the run is invalid;
- ``progress.jsonl``: the run's own progress lines, which carry the metric when the target
  evaluates itself, and the budget share (``fraction``), steps, seconds and tokens;
- the run's log read with ``[metric] progress_pattern`` (``step 500: ... val loss 1.234``), for
  targets that write no file: the budget share then comes from a named group ``fraction``, or
  ``step``, ``seconds`` or ``tokens`` against the budget of that kind; failing those, under a
  budget in seconds, from the wall time since the run started (start-up included, as it is in
  the incumbent's curve it is compared with).

A point's ``x`` is its share of the budget when known, otherwise its step (curves of runs under
the same budget in steps still line up).
"""

from __future__ import annotations

import hmac
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from nightlab.config import Config, metric_group
from nightlab.executor.process import RunInterrupted, run_process
from nightlab.metrics import BAD_JSON, EVAL_PROGRESS_FILE, MAX_PROGRESS_BYTES, PROGRESS_FILE
from nightlab.safefile import create_new, open_read
from nightlab.types import TRAIN_LOG, RunResult, RunSpec

DONE_FILE = "progress.done"  # created when training has ended: the evaluator finishes and exits
FINAL_FILE = "progress.final"  # created before it: the evaluator runs the final evaluation first
# What asks a run for progress checkpoints: the pruner's share of the budget (runner.py), time to
# target's seconds of training (studies/time_to_target.py).
CHECKPOINT_VARIABLES = ("NIGHTLAB_PROGRESS_EVERY", "NIGHTLAB_EVAL_INTERVAL_SECONDS")


@dataclass(frozen=True)
class Point:
    """One progress point: ``x`` (budget share, or step), the metric there (None: progress only)."""

    x: float
    value: float | None
    step: int | None = None
    seconds: float | None = None
    tokens: int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> Point:
        return cls(**{k: data.get(k) for k in ("x", "value", "step", "seconds", "tokens")})


# The longest progress line kept; of a file, at most MAX_PROGRESS_BYTES is read (the training
# process writes these files: read whole, a flood of them took the harness's memory with it).
MAX_LINE_BYTES = 64 << 10


class _Tail:
    """The lines appended to a file since the last read (a partial last line waits), up to
    :data:`MAX_PROGRESS_BYTES` in all; a line longer than :data:`MAX_LINE_BYTES` is dropped."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rest = path, 0, b""
        self._long = False  # inside a line too long to keep: dropped up to its end

    def lines(self) -> list[str]:
        if self.offset >= MAX_PROGRESS_BYTES:
            return []
        try:
            with open_read(self.path) as fh:  # not through a link, never blocking on a FIFO
                fh.seek(self.offset)
                data = fh.read(MAX_PROGRESS_BYTES - self.offset)
        except OSError:
            return []
        self.offset += len(data)
        *complete, self.rest = (self.rest + data).split(b"\n")
        if self._long and complete:
            complete, self._long = complete[1:], False  # the end of the long line
        if len(self.rest) > MAX_LINE_BYTES:
            self.rest, self._long = b"", True
        return [line.decode("utf-8", errors="replace") for line in complete if len(line) <= MAX_LINE_BYTES]


class ProgressReader:
    """Reads a run's progress points as they appear (see the module docstring)."""

    def __init__(
        self, run_dir: Path, config: Config, key: str | None = None, scores: Path | None = None
    ) -> None:
        self.config = config
        # With a key (``[target] progress_signed``) the evaluator's points must carry its
        # signature, and the run's own lines carry no metric: the training process writes both
        # files, so only a signature says the frozen evaluator scored a point.
        self.key = key
        self.forged = 0  # evaluator-file lines without a valid signature
        self.refused: str | None = None  # why the evaluator refused a checkpoint (the first one)
        self.planted: str | None = None  # a marker of nightlab's the run created (kept once seen)
        self.evaluator: ProgressEvaluator | None = None  # the frozen evaluator scoring this run
        self._run_dir, self._evaluated = run_dir, scores is not None  # a progress evaluator runs
        self.metric = config.metric.name
        self._evals = [
            _Tail(folder / EVAL_PROGRESS_FILE) for folder in (scores, run_dir) if folder is not None
        ]
        self._own = _Tail(run_dir / PROGRESS_FILE)
        self._log = _Tail(run_dir / TRAIN_LOG)
        self._pattern = re.compile(config.metric.progress_pattern) if config.metric.progress_pattern else None
        self._group = metric_group(self._pattern) if self._pattern is not None else None
        self._points: dict[tuple[str, float], Point] = {}
        self._started = time.monotonic()

    def points(self) -> list[Point]:
        """Every point with a metric value so far, ordered by ``x``."""
        for source, tail in (*(("eval", t) for t in self._evals), ("own", self._own)):
            for line in tail.lines():
                if self.key is not None and source == "own":
                    continue  # the training process's own claims of its metric are not evidence
                if self.key is not None and not _signed_by(self.key, line):
                    self.forged += bool(line.strip())
                    continue
                if source == "eval" and self.refused is None:
                    self.refused = _refusal(line)
                point = self._from_json(line)
                if point is not None and point.value is not None:
                    self._points[(source, point.x)] = point
        if self._pattern is not None:
            for line in self._log.lines():
                point = self._from_log(line)
                if point is not None:
                    self._points[("log", point.x)] = point
        best: dict[float, Point] = {}
        for (_source, x), point in sorted(self._points.items(), key=lambda kv: kv[0][0] != "eval"):
            best.setdefault(x, point)  # the frozen evaluator's value wins over the run's own
        return [best[x] for x in sorted(best)]

    def _from_json(self, line: str) -> Point | None:
        try:
            data = json.loads(line)
        except BAD_JSON:
            return None
        if not isinstance(data, dict):
            return None
        value = _number(data.get(self.metric))
        fraction = _number(data.get("fraction"))
        step = _number(data.get("step"))
        x = fraction if fraction is not None else step
        if x is None:
            return None
        seconds, tokens = _number(data.get("seconds")), _number(data.get("tokens"))
        return Point(x, value, _int(step), seconds, _int(tokens))

    def _from_log(self, line: str) -> Point | None:
        assert self._pattern is not None
        match = self._pattern.search(line)
        if match is None:
            return None
        if self._group is None:
            return None
        value = _number(match.group(self._group))
        if value is None:
            return None
        named = match.groupdict()
        step, seconds, tokens, fraction = (
            _number(named.get(k)) for k in ("step", "seconds", "tokens", "fraction")
        )
        budget = self.config.budget
        if fraction is not None:
            x = fraction
        elif budget.steps and step is not None:
            x = step / budget.steps
        elif budget.seconds and seconds is not None:
            x = seconds / budget.seconds
        elif budget.tokens and tokens is not None:
            x = tokens / budget.tokens
        elif budget.seconds:
            x = (time.monotonic() - self._started) / budget.seconds
        elif step is not None:
            x = step
        else:
            return None
        return Point(x, value, _int(step), seconds, _int(tokens))

    def stop_reason(self, should_stop: Callable[[list[Point]], str | None] | None) -> str | None:
        """Why the run should stop now: it created a marker only nightlab may create, or the
        evaluator refused a checkpoint (the run is invalid whatever it does next), or
        ``should_stop`` (the pruner's) finds its curve hopeless; None to let it go on.

        Called while training runs and once right after it, before nightlab creates the markers
        itself: a ``progress.done`` there then was made by the run, which so stopped its progress
        evaluator, to have no curve to be pruned on (found from outside: the run had no point,
        the baseline one, both ``ok``). The same holds for an evaluator that ended before it was
        told to (:meth:`ProgressEvaluator.failure`): the run's checkpoints could not be scored."""
        if self.planted is None and self._evaluated:
            made = [name for name in (DONE_FILE, FINAL_FILE) if os.path.lexists(self._run_dir / name)]
            if made:
                self.planted = (
                    f"the run created {made[0]}, which only nightlab may create "
                    "(it tells the progress evaluator that training has ended)"
                )
        if self.planted is not None:
            return self.planted
        points = self.points()
        if self.refused is not None:
            return f"progress evaluator: {self.refused}"
        # Only a run that offers checkpoints (progress.jsonl) has any to leave unscored: one that
        # writes none has no curve either way (and an evaluator gone early only loses warmth).
        offered = self.evaluator is not None and os.path.lexists(self._run_dir / PROGRESS_FILE)
        failed = self.evaluator.failure() if offered else None  # type: ignore[union-attr]
        if failed is not None:
            return failed
        return should_stop(points) if should_stop is not None else None


def _refusal(line: str) -> str | None:
    """The evaluator's reason on a line that refuses a checkpoint (``{"invalid": ...}``), else None."""
    try:
        data = json.loads(line)
    except BAD_JSON:
        return None
    reason = data.get("invalid") if isinstance(data, dict) else None
    return str(reason)[:500] if reason else None


def _signed_by(key: str, line: str) -> bool:
    """Whether ``line`` is a JSON object whose ``sig`` is the HMAC-SHA256 of the rest under ``key``."""
    try:
        data = json.loads(line)
    except BAD_JSON:
        return False
    if not isinstance(data, dict) or not isinstance(data.get("sig"), str):
        return False
    claimed = data.pop("sig")
    body = json.dumps(data, sort_keys=True).encode()
    return hmac.compare_digest(claimed, hmac.new(key.encode(), body, "sha256").hexdigest())


def value_at(points: list[Point], x: float, tolerance: float = 0.05) -> float | None:
    """The curve's value at ``x``: interpolated between the points around it, else the nearest
    point within ``tolerance`` (a checkpoint lands a step after its share of the budget), else
    None."""
    known = [p for p in points if p.value is not None]
    for left, right in zip(known, known[1:], strict=False):
        if left.x <= x <= right.x:
            if right.x == left.x:
                return right.value
            share = (x - left.x) / (right.x - left.x)
            return left.value + share * (right.value - left.value)  # type: ignore[operator]
    near = [p for p in known if abs(p.x - x) <= tolerance]
    return min(near, key=lambda p: abs(p.x - x)).value if near else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is no value


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


class ProgressEvaluator:
    """The frozen progress evaluator (``[target] progress_evaluate``), run beside training.

    It scores the checkpoints the training process leaves and writes their metric to
    ``progress.eval.jsonl``; when training has ended, :meth:`finish` creates ``progress.done``,
    gives it ``timeout`` seconds to score what is left, then stops it. Started ``warm`` (with
    ``NIGHTLAB_WARM_EVALUATE=1``), it can be asked to do the final evaluation too before it
    exits (``progress.final``), with its imports and data already loaded.
    """

    def __init__(self, spec: RunSpec, warm: bool = False, run_dir: Path | None = None) -> None:
        self.spec = spec
        self.tree = Path(spec.cwd)  # its worktree
        # The run's directory, where the markers go; ``spec.run_dir`` holds its log and scores.
        self.run_dir = Path(run_dir or spec.run_dir)
        self.warm = warm
        self._stop = threading.Event()
        self._told = False  # training has ended and it was told so (finish)
        # Checkpoints asked for (pruning, time to target): without, it may end at once, its work done.
        self.scoring = any(spec.env.get(name) for name in CHECKPOINT_VARIABLES)
        self._thread = threading.Thread(target=self._run, name="nightlab-progress-eval", daemon=True)
        self.result: RunResult | None = None
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = run_process(self.spec, stop=self._stop)
        except RunInterrupted:
            self.result = None

    @property
    def running(self) -> bool:
        """Its process has not ended yet (it could still take a request)."""
        return self._thread.is_alive()

    def failure(self) -> str | None:
        """Why it ended while training still ran, in one line; None while it runs (or was told to end).

        It scores checkpoints until told that training has ended; ending before means no more
        points, so no pruning and no time to target, whatever the run does next. Found from
        outside: a line of progress.jsonl nested 100,000 deep raised RecursionError in the GPT
        template's evaluator thread, which its handler does not catch; the evaluator exited 0, the
        run went on unscored to its end and was recorded ``ok`` (a crafted checkpoint that kills
        it, or a run that takes the memory it needs, ends the same). Now that run is stopped and
        recorded ``invalid`` with this reason."""
        if self._told or not self.scoring or self._thread.is_alive():
            return None
        result = self.result
        if result is None:
            how = "was stopped"
        elif result.exit_code == 0:
            how = "exited (code 0)"
        else:
            how = f"failed ({result.status.value}: {result.reason or f'exit code {result.exit_code}'})"
        return (
            f"progress evaluator {how} while the run trained: its checkpoints could not be scored "
            "(no curve to prune it on); see progress_eval.log"
        )

    def finish(self, timeout: float, final: bool = False) -> RunResult | None:
        """Tell it training has ended (``final``: and to run the final evaluation), wait up to
        ``timeout`` seconds, then stop it; its result, None when it had to be stopped."""
        run_dir, self._told = self.run_dir, True
        if final:
            create_new(run_dir / FINAL_FILE)  # before progress.done: it looks for it once done
        create_new(run_dir / DONE_FILE)  # never `touch`: a link the run left would create its target
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            return None
        return self.result


def progress_every(config: Config) -> float | None:
    """The share of the budget between progress checkpoints: fine enough for every pruning point
    (``[policy] prune_at``); None when the policy does not prune."""
    if not config.policy.prune or not config.policy.prune_at:
        return None
    points = sorted({0.0, *config.policy.prune_at})
    return min(b - a for a, b in zip(points, points[1:], strict=False))
