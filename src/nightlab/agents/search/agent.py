"""The offline research agent: model-guided moves from the incumbent, no API key needed.

Each proposal changes one or two knobs of the current best training script (the incumbent),
chosen among a few hundred candidate moves by a Gaussian-process model of every result so far
(:mod:`nightlab.agents.search.surrogate`): expected improvement over the incumbent by more than half
the noise floor, discounted by the chance of a crash near that point, per training run it is
expected to cost (confirmation replicates included, as the history shows the policy asks for them). Moves stay local because
the harness keeps only what it can confirm, one change at a time, and a person reading the
research branch should see a story of small, attributable steps.

The agent keeps no state that the ledger does not: every proposal stores its full knob values
in ``Proposal.meta`` and the random stream is derived from the seed and the number of results
seen, so a restarted agent, told the same history, proposes exactly what it would have.

Example (the loop does this)::

    agent = SearchAgent(config)               # config: nightlab.config.Config
    for entry in ledger.history(tag):         # after a restart
        agent.observe(entry)
    proposal = agent.propose(context)          # "MATRIX_LR 0.04 → 0.05"
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from nightlab.agents.base import Agent
from nightlab.agents.search.describe import describe_space, why_empty
from nightlab.agents.search.groups import GroupSwitches
from nightlab.agents.search.seen import away_from, running_configs, running_keys
from nightlab.agents.search.settings import SearchSettings
from nightlab.agents.search.space import Space, build_space, canonical
from nightlab.agents.search.surrogate import GaussianProcess, expected_improvement, failure_probability
from nightlab.code.knobs import (
    HYDRA_SOURCE,
    KnobChange,
    apply_changes,
    find_all_knobs,
    format_literal,
    plan_changes,
)
from nightlab.errors import UserError
from nightlab.types import Context, Direction, Edit, HistoryEntry, Proposal

__all__ = ["SearchAgent", "describe_space"]

FAILED = {"crash", "timeout", "oom", "nan"}
STEP_SIZES = (0.06, 0.12, 0.25, 0.5)  # move lengths in unit coordinates, mixed per candidate
N_CANDIDATES = 400
MIN_MODEL_POINTS = 3
# The opening's first looks, in unit coordinates. A knob whose name says what it is moves by a
# step its kind is known to tolerate (about x2 for a learning rate, whose range spans x100).
# A knob of unknown role moves further (about x3 on a log scale, two steps of a small integer):
# nothing says it is fragile, and a first look too small to stand out from the noise tells the
# model little and gains little. Measured on the synthetic target with neutral names (40 seeds):
# the wider look lowers the median after 10 runs from about 1.21 to 1.13.
FIRST_STEP_NAMED = 0.15
FIRST_STEP_UNNAMED = 0.25
MAX_MODEL_POINTS = 160  # keeps a proposal well under a second however long the night


@dataclass
class Trial:
    """One past experiment as the model sees it: where it was, and how it went."""

    config: dict[str, Any]
    value: float | None  # metric, oriented so that lower is better; None for a failure
    runs: int
    status: str


class SearchAgent(Agent):
    """Proposes knob changes from the incumbent, guided by a model of all results so far."""

    name = "search"

    def __init__(self, settings: SearchSettings | None = None, command: str = "") -> None:
        self.settings = settings if settings is not None else SearchSettings()
        self.command = command  # [target] run: the knobs it sets on its command line stay pinned
        self.seed = self.settings.seed
        self.max_knobs = self.settings.max_knobs_per_move
        self.entries: dict[int, HistoryEntry] = {}
        self.pending: dict[tuple, dict[str, Any]] = {}
        self._space_cache: tuple[tuple, Space] | None = None
        self._units: dict[tuple, list[float]] = {}  # unit coordinates of this round's candidates

    # ------------------------------------------------------------------ protocol
    def observe(self, entry: HistoryEntry) -> None:
        """Record a finished experiment (idempotent: the same id twice counts once)."""
        self.entries[entry.id] = entry
        knobs = (entry.meta or {}).get("knobs")
        if knobs is not None:
            for key, config in list(self.pending.items()):
                if _same_values(config, knobs):
                    del self.pending[key]

    def check(self, files: dict[str, str]) -> None:
        """Refuse to start with nothing to search, saying why and what to do."""
        problem = why_empty(build_space(files, self.settings, command=self.command), files)
        if problem:
            raise UserError(problem)

    def propose(self, context: Context) -> Proposal | None:
        # Small matrices: BLAS threads only contend with each other (and with training runs).
        with _single_threaded():
            return self._propose(context)

    def _propose(self, context: Context) -> Proposal | None:
        for entry in context.history:  # a caller may give the history here instead of observe()
            if entry.id not in self.entries:
                self.observe(entry)
        origin = self._origin(context.files)
        space = self._space(context.files, origin)
        if not space.dims:
            return None
        centre = space.current()
        trials = self._trials(space, centre, context.direction)
        tried = {space.key(t.config) for t in trials} | set(self.pending) | {space.key(centre)}
        tried |= running_keys(space, context)  # proposed before a restart, still running
        rng = np.random.default_rng([self.seed, len(self.entries), len(self.pending)])
        self._units = {}
        candidates = self._candidates(space, centre, tried, rng)
        if not candidates:
            return None
        seen = [t.config for t in trials] + list(self.pending.values()) + running_configs(context)
        candidates = away_from(space, candidates, seen, self._units)
        choice, note, meta_extra = self._choose(space, centre, trials, candidates, context)
        meta_extra["origin"] = _jsonable(origin)
        proposal = self._proposal(space, context.files, centre, choice, note, meta_extra)
        self.pending[space.key(choice)] = choice
        return proposal

    # ------------------------------------------------------------------ state
    def _space(self, files: dict[str, str], origin: dict[str, Any]) -> Space:
        fingerprint = (tuple(sorted(files.items())), repr(sorted(origin.items())))
        if self._space_cache is None or self._space_cache[0] != fingerprint:
            self._space_cache = (
                fingerprint,
                build_space(files, self.settings, origin=origin, command=self.command),
            )
        return self._space_cache[1]

    def _origin(self, files: dict[str, str]) -> dict[str, Any]:
        """The knob values domains are inferred from: the baseline's, as first recorded."""
        for entry_id in sorted(self.entries):
            meta = self.entries[entry_id].meta or {}
            if meta.get("agent") != "search":
                continue
            for key in ("origin", "base"):
                if isinstance(meta.get(key), dict):
                    return meta[key]
        # No proposal of ours yet: the incumbent is the baseline unless someone else kept a change.
        space = build_space(files, self.settings, command=self.command)
        return {**space.current(), **(space.found.origins() if space.found else {})}

    def _trials(self, space: Space, centre: dict[str, Any], direction: Direction) -> list[Trial]:
        """Every past experiment with known knob values, the baseline included."""
        sign = -direction.sign  # the model minimises
        ordered = [self.entries[i] for i in sorted(self.entries)]
        ours = [e for e in ordered if isinstance((e.meta or {}).get("knobs"), dict)]
        baseline_config: dict[str, Any] | None = None
        if ours and isinstance(ours[0].meta.get("base"), dict):
            baseline_config = ours[0].meta["base"]
        elif not any(e.decision == "keep" for e in ordered):
            baseline_config = centre  # nothing kept yet: the incumbent is the baseline
        trials = []
        for entry in ordered:
            meta = entry.meta or {}
            config = meta.get("knobs") if isinstance(meta.get("knobs"), dict) else None
            if config is None and entry.decision == "baseline":
                config = baseline_config
            if config is None:
                continue
            # Failures keep value None (the model counts them separately); an invalid experiment
            # never ran, so it only marks its configuration as tried.
            value = None
            if entry.status == "ok" and entry.metric is not None and math.isfinite(entry.metric):
                value = sign * float(entry.metric)
            elif entry.status == "pruned":
                value = self._pruned_value(meta, sign)
            trials.append(
                Trial(config=config, value=value, runs=max(entry.runs or 1, 1), status=entry.status)
            )
        return trials

    @staticmethod
    def _pruned_value(meta: dict, sign: float) -> float | None:
        """A run stopped early as an observation: the ledger's estimate of where it would have
        ended (the incumbent's final metric shifted by the gap seen at the checkpoint).

        It is a guess, not a measurement, but leaving the point out would let the model believe
        the region untried and propose its neighbours again; counting it as a failure would
        teach it that the region crashes. None when the ledger holds no estimate."""
        pruned = meta.get("pruned")
        estimate = pruned.get("estimate") if isinstance(pruned, dict) else None
        if isinstance(estimate, (int, float)) and math.isfinite(estimate):
            return sign * float(estimate)
        return None

    # ------------------------------------------------------------------ candidates
    def _candidates(
        self, space: Space, centre: dict[str, Any], tried: set[tuple], rng: np.random.Generator
    ) -> list[dict[str, Any]]:
        """Untried moves of one or two knobs; more knobs, then the whole grid, when those run out."""
        n_dims = len(space.dims)
        current = space.dim_values(centre)
        u0 = [d.domain.to_unit(v) for d, v in zip(space.dims, current, strict=True)]
        base_key = [canonical(v) for v in current]
        widths = np.arange(1, min(self.max_knobs, n_dims) + 1)
        switches = GroupSwitches(space)
        out: dict[tuple, dict[str, Any]] = {}
        for attempt in range(4):
            n = N_CANDIDATES
            if attempt == 0:
                ks = rng.choice(widths, size=n, p=_width_weights(len(widths)))
            else:  # the neighbourhood is used up: widen the move
                ks = rng.integers(1, n_dims + 1, size=n)
            order = np.argsort(rng.random((n, n_dims)), axis=1)
            steps = rng.choice(STEP_SIZES, size=(n, n_dims)) * (2.0 if attempt else 1.0)
            jumps = rng.normal(size=(n, n_dims)) * steps
            picks = rng.random((n, n_dims))
            for c in range(n):
                changes = {}
                for i in sorted(int(d) for d in order[c, : ks[c]]):
                    changes[i] = self._moved(
                        space.dims[i].domain, current[i], u0[i], jumps[c, i], picks[c, i]
                    )
                changes = switches.settle(changes)
                key = list(base_key)
                for i, value in changes.items():
                    key[i] = canonical(value)
                key_t = tuple(key)
                if key_t not in tried and key_t not in out:
                    out[key_t] = space.with_dims(centre, changes)
                    unit = list(u0)
                    for i, value in changes.items():
                        unit[i] = space.dims[i].domain.to_unit(value)
                    self._units[key_t] = unit
            if out:
                return list(out.values())
        return self._exhaustive(space, centre, tried)

    @staticmethod
    def _moved(domain: Any, value: Any, u: float, jump: float, pick: float) -> Any:
        """``value`` moved by ``jump`` unit coordinates (another choice, for a categorical)."""
        if domain.categorical:
            others = [c for c in domain.choices if c != value]
            return others[int(pick * len(others))] if others else value
        moved = domain.from_unit(u + jump)
        if moved == value:  # too small to change the literal: one grid step instead
            moved = _neighbour(domain, value, 1 if pick < 0.5 else -1)
        return moved

    def _exhaustive(self, space: Space, centre: dict[str, Any], tried: set[tuple]) -> list[dict[str, Any]]:
        """Every untried configuration of a small, finite space (none for a large one)."""
        grids = [d.domain.grid(limit=1000) for d in space.dims]
        if any(g is None for g in grids) or math.prod(len(g) for g in grids) > 200_000:
            return []
        out = []
        for combo in np.ndindex(*[len(g) for g in grids]):
            config = space.with_dims(centre, {i: grids[i][j] for i, j in enumerate(combo)})
            if space.key(config) not in tried:
                out.append(config)
                if len(out) >= N_CANDIDATES:
                    break
        return out

    # ------------------------------------------------------------------ choice
    def _choose(
        self,
        space: Space,
        centre: dict[str, Any],
        trials: list[Trial],
        candidates: list[dict[str, Any]],
        context: Context,
    ) -> tuple[dict[str, Any], str, dict[str, Any]]:
        ok = [t for t in trials if t.value is not None]
        failed = [t for t in trials if t.status in FAILED]
        xc = np.array([self._units.get(space.key(c)) or space.unit(c) for c in candidates])
        mask = space.categorical_mask
        u0 = space.unit(centre)
        untouched = self._untouched(space, trials)
        last_few = context.experiments_left is not None and context.experiments_left <= 3
        if untouched.any() and not last_few and (len(ok) < MIN_MODEL_POINTS or len(self.entries) % 2 == 0):
            # Every knob gets a first look early, most promising kinds first (learning rates,
            # batch, shape), interleaved with exploiting what the model knows: a knob never
            # moved has an effect the model cannot rank fairly. The last few experiments of a
            # session go to the model's best bets instead.
            top = max(space.dims[i].priority for i in np.flatnonzero(untouched))
            focus = np.array(
                [bool(untouched[i]) and space.dims[i].priority == top for i in range(len(space.dims))]
            )
            touching = [j for j in range(len(candidates)) if np.any((xc[j] != u0) & focus)]
            if touching:
                candidates = [candidates[j] for j in touching]
                xc = xc[touching]
        if len(ok) < MIN_MODEL_POINTS:
            # Too little to model: a single knob moved by a fair step (x2 for a learning rate,
            # further for a knob whose name says nothing; see FIRST_STEP_UNNAMED).
            order = sorted(
                range(len(candidates)),
                key=lambda j: (
                    _changed_count(space, centre, candidates[j]),
                    abs(_move_size(xc[j], u0, mask) - _first_step(space, xc[j] != u0)),
                ),
            )
            return candidates[order[0]], "a first look at this knob while the model has too little data", {}
        noise = context.noise if context.noise and context.noise > 0 else None
        values = np.array([t.value for t in ok])
        # Outliers (a diverging run) would dominate the model's scale: cap them, and count each
        # failure as a run as bad as the cap so the model, too, steers away from it.
        cap = float(np.median(values) + (np.median(values) - values.min()) + (noise or 0.0))
        x_fit = [space.unit(t.config) for t in ok] + [space.unit(t.config) for t in failed]
        y_fit = list(np.minimum(values, cap)) + [cap] * len(failed)
        runs = [t.runs for t in ok] + [1] * len(failed)
        if len(x_fit) > MAX_MODEL_POINTS:
            # A long night: model the neighbourhood of the incumbent, where the moves are.
            near = np.argsort(np.abs(np.array(x_fit) - u0).sum(axis=1), kind="stable")[:MAX_MODEL_POINTS]
            x_fit = [x_fit[i] for i in near]
            y_fit = [y_fit[i] for i in near]
            runs = [runs[i] for i in near]
        gp = GaussianProcess(mask, noise_var=noise**2 if noise else None)
        gp.fit(np.array(x_fit), np.array(y_fit), np.array(runs))
        mean, sd = gp.predict(xc)
        centre_mean, _ = gp.predict(space.unit(centre)[None, :])
        noise_sd = noise if noise else math.exp(0.5 * gp.log_noise) * gp.y_scale
        margin = 0.5 * noise_sd  # an improvement the harness could not confirm is not worth a run
        acquisition = expected_improvement(mean, sd, float(centre_mean[0]), margin)
        p_fail = failure_probability(
            xc,
            np.array([space.unit(t.config) for t in failed]).reshape(-1, len(space.dims)),
            np.array([space.unit(t.config) for t in ok]),
            mask,
        )
        # Expected improvement per training run: under a policy that confirms, a move whose
        # first run looks better costs the confirmation replicates too (none under greedy).
        looks_better = norm.cdf((float(centre_mean[0]) - mean) / np.sqrt(sd**2 + noise_sd**2))
        runs_expected = 1.0 + looks_better * self._confirmation_runs()
        score = acquisition * (1.0 - p_fail) / runs_expected
        best = int(np.argmax(score))
        sign = -context.direction.sign  # the model minimises
        predicted, spread = sign * float(mean[best]), float(sd[best])
        incumbent = sign * float(centre_mean[0])
        note = (
            f"the model of {len(ok)} results predicts {context.metric_name} {predicted:.4g} ± {spread:.2g} "
            f"against {incumbent:.4g} for the incumbent"
        )
        if p_fail[best] > 0.05:
            note += f"; {p_fail[best]:.0%} risk of failure from nearby crashes"
        extra = {
            "predicted": predicted,
            "predicted_sd": spread,
            "p_fail": float(p_fail[best]),
            "runs_expected": float(runs_expected[best]),
        }
        return candidates[best], note, extra

    def _confirmation_runs(self) -> float:
        """Replicates a candidate costs beyond its first run when the policy confirms it.

        Read from the history, so the agent needs no word about the policy: the mean extra runs
        of past experiments that were run more than once (0 until one was, and always under
        greedy). Counting every candidate that looks better at first as one that will be
        confirmed overstates the cost a little; the ranking only needs it in proportion.
        """
        extra = [e.runs - 1 for e in self.entries.values() if e.decision != "baseline" and (e.runs or 1) > 1]
        return float(np.mean(extra)) if extra else 0.0

    @staticmethod
    def _untouched(space: Space, trials: list[Trial]) -> np.ndarray:
        """Dimensions whose value has been the same in every experiment so far."""
        if not trials:
            return np.ones(len(space.dims), dtype=bool)
        units = np.array([space.unit(t.config) for t in trials])
        return np.all(units == units[0], axis=0)

    # ------------------------------------------------------------------ output
    def _proposal(
        self,
        space: Space,
        files: dict[str, str],
        centre: dict[str, Any],
        config: dict[str, Any],
        note: str,
        extra: dict[str, Any],
    ) -> Proposal:
        changed = [
            name for name in space.knobs if not _same_values({name: centre[name]}, {name: config[name]})
        ]
        # A Hydra group switch moves the other values to the newly selected option file.
        plan = plan_changes(files, {name: config[name] for name in changed}, self.command)
        parts = [f"{c.knob.name} {c.knob.text} → {_written(c)}" for c in plan]
        by_file: dict[str, list[KnobChange]] = {}
        for change in plan:
            by_file.setdefault(change.knob.path, []).append(change)
        edits = [edit for path, group in by_file.items() for edit in _edits(files[path], path, group)]
        if any(c.knob.source == HYDRA_SOURCE for c in plan):  # record the values the run will read
            ran = find_all_knobs({**files, **apply_changes(files, plan)}, self.command).knobs
            dropped = {n: centre[n] for n in changed if n not in {c.knob.name for c in plan}}
            config = {**config, **dropped, **{k.name: k.value for k in ran}}
        description = ", ".join(parts)
        meta = {
            "agent": "search",
            "knobs": _jsonable(config),
            "base": _jsonable(centre),
            "changed": [c.knob.name for c in plan],
            **extra,
        }
        return Proposal(description=description, hypothesis=f"{description}: {note}", edits=edits, meta=meta)


def _written(change: KnobChange) -> str:
    """A new value as the description shows it: a Hydra option by its name (``sgd``)."""
    return (
        change.text if change.knob.source == HYDRA_SOURCE else format_literal(change.knob.text, change.value)
    )


def _edits(text: str, path: str, changes: list[KnobChange]) -> list[Edit]:
    """One SEARCH/REPLACE per changed statement (its whole lines), so the proposal reads like a
    patch; the whole file when a statement's lines are not unique or are shared with another."""
    whole = [Edit(path=path, replace=apply_changes({path: text}, changes)[path])]
    lines = text.splitlines(keepends=True)
    edits = []
    spans = sorted(changes, key=lambda c: c.knob.start)
    for i, change in enumerate(spans):
        first, last = change.knob.line, change.knob.end_line
        if i and first <= spans[i - 1].knob.end_line:
            return whole
        offset = len("".join(lines[: first - 1]))
        old = "".join(lines[first - 1 : last])
        start, end = change.knob.start - offset, change.knob.end - offset
        if text.count(old) != 1:
            return whole
        edits.append(Edit(path=path, search=old, replace=old[:start] + change.text + old[end:]))
    return edits


def _width_weights(n: int) -> list[float]:
    """Single-knob moves a little more often than pairs: they are easier to attribute."""
    weights = [0.6**i for i in range(n)]
    total = sum(weights)
    return [w / total for w in weights]


def _neighbour(domain: Any, value: Any, direction: int) -> Any:
    u = domain.to_unit(value)
    for scale in (0.01, 0.02, 0.05, 0.1, 0.2):
        for sign in (direction, -direction):
            candidate = domain.from_unit(u + sign * scale)
            if candidate != value:
                return candidate
    return value


def _single_threaded() -> contextlib.AbstractContextManager:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency; stay usable without it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _first_step(space: Space, changed: np.ndarray) -> float:
    """The opening's step for a move of the ``changed`` dimensions: the cautious one if any of
    them is a knob its name identifies (a learning rate diverges if pushed too far)."""
    named = any(space.dims[i].named for i in np.flatnonzero(changed))
    return FIRST_STEP_NAMED if named else FIRST_STEP_UNNAMED


def _move_size(u: np.ndarray, u0: np.ndarray, categorical: np.ndarray) -> float:
    numeric = ~categorical
    return float(np.max(np.abs(u[numeric] - u0[numeric]))) if numeric.any() else 0.0


def _changed_count(space: Space, a: dict[str, Any], b: dict[str, Any]) -> int:
    return sum(1 for x, y in zip(space.dim_values(a), space.dim_values(b), strict=True) if x != y)


def _same_values(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return _jsonable(a) == _jsonable(b)


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
