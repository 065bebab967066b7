"""The search space: a domain for every knob, declared in ``[agent.space]`` or inferred.

Each knob becomes one or more dimensions (a tuple such as Adam's betas is searched element by
element). A :class:`Domain` maps values to a unit coordinate for the surrogate model and back,
and snaps every value to a readable grid (two significant digits on a log scale, whole steps
for integers) so that proposals are numbers a person would write and "already tried" is an
exact comparison.

Declared domains, in ``nightlab.toml``::

    [agent.space]
    MATRIX_LR = {low = 0.005, high = 0.2, log = true}
    WINDOW_PATTERN = {choices = ["SSSL", "SSLL", "LLLL"]}
    DEPTH = {low = 2, high = 8, step = 2}
    ADAM_BETAS = [{low = 0.8, high = 0.95}, {low = 0.9, high = 0.999}]

Everything else is inferred from the current value and the name (see :func:`infer_domain`), and
``nightlab agent show-space`` prints the result (:func:`describe_space`) so it can be checked.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nightlab.agents.search.names import default_pin, hint_name, is_named, priority
from nightlab.agents.search.settings import SearchSettings
from nightlab.code.knobs import EditableKnobs, Knob, find_all_knobs, set_by_command
from nightlab.errors import UserError

SPEC_KEYS = {"low", "high", "log", "step", "choices"}
__all__ = ["Dim", "Domain", "Space", "build_space", "canonical", "default_pin", "hint_name", "infer_domain"]
__all__ += ["is_named", "priority"]

_LOG_HINT = re.compile(r"(LR|LEARNING|RATE|DECAY|WD|EPS|STD|SCALE|CLIP|TEMP|INIT)")
# PCT: a share such as OneCycleLR's pct_start; B1/B2: optax's names for Adam's betas.
_RATIO_HINT = re.compile(
    r"(RATIO|FRAC|DROP|PROB|BETA|MOMENTUM|EMA|SMOOTH|MIX|RMSPROP_ALPHA)|(^|_)(PCT|B[12])(_|$)|^PS$"
)
# Ratios for which 1.0 is degenerate: dropout and drop-path 1.0 drop everything (and scale the
# survivors by 1/(1-p), a division by zero), label smoothing 1.0 leaves no label, a mask ratio
# of 1.0 nothing to see. Their domain stops at DEGENERATE_HIGH, 0.9: the highest round value at
# which a tenth of the signal still gets through; recipes sit at 0-0.5, so nothing useful is cut
# off, and the endpoint the search likes to try is a value that still trains.
_DEGENERATE_AT_ONE = re.compile(r"(DROP|SMOOTH|MASK|^PS$)")  # PS: fastai's learners' dropout
DEGENERATE_HIGH = 0.9
# Averaging coefficients (momentum, Adam's betas, an EMA) are degenerate at 1 too: the average
# never moves (Adam's bias correction divides by zero). Below 0.8 they move in [0, 0.99].
# The last word: not MOMENTUM_WARMUP. Keras spells Adam's betas BETA_1, optax B1; RMSprop alpha.
_AVERAGING = re.compile(r"(^|_)(BETA_?[12S]?|B[12]|MOMENTUM|EMA|EMA_DECAY|RMSPROP_ALPHA)$")
AVERAGING_HIGH = 0.99
# Per-step or per-epoch factors just below 1 (a StepLR/ExponentialLR gamma, an RL discount, a
# decay rate of 0.95): above 1 they would grow what they shrink, so, like betas, they move on a
# 1 - x scale in [0.5, 1); further from 1 (StepLR's 0.7, SB3's gae_lambda 0.8: an RL trace's
# lambda weighs returns and is no more than 1), a multiplier stays below 0.99.
_FACTOR_NEAR_ONE = re.compile(r"(DECAY|GAMMA|DISCOUNT|LAMBDA|ANNEAL|FACTOR)")
_MULTIPLIER = re.compile(
    r"(GAMMA|DISCOUNT|ANNEAL|FACTOR)|(^|_)DECAY_RATE$|^LR_DECAY$|(^|_)(GAE|TD|TRACE)_LAMBDA$"
)
# A weight decay at 0 (off) has no scale of its own to search around. Decoupled decay (AdamW, the
# common case today) is set at 0.01-0.1 in most recipes and up to about 0.3 in a few, so the
# domain is [0, 0.3]: its first looks land among those values, where [0, 1] spent them on
# 0.15-0.5 and tried 1.0, beyond any recipe (and, for coupled L2 decay under SGD, ruinous).
_WEIGHT_DECAY = re.compile(r"(^|_)(DECAY|WD|L2)(_|$)")
WEIGHT_DECAY_FROM_ZERO = 0.3
_OFF_AT_ZERO = f"{_WEIGHT_DECAY.pattern}|{_DEGENERATE_AT_ONE.pattern}"  # an int 0 of these is a float


def _nice_sig(value: float, digits: int = 2) -> float:
    """``value`` rounded to ``digits`` significant digits (0.04321 -> 0.043)."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits - 1}e}")


@dataclass(frozen=True)
class Domain:
    """The values one dimension may take.

    ``scale`` is one of ``log`` (positive floats, geometric), ``linear`` (floats),
    ``log1m`` (floats just below 1 such as betas: geometric in ``1 - x``), ``int`` (integers,
    every ``step``), ``pow2`` (integers that are powers of two; ``low``/``high`` are exponents)
    or ``choice`` (``choices``, unordered).
    """

    scale: str
    low: float = 0.0
    high: float = 1.0
    step: float | None = None
    choices: tuple = ()
    is_int: bool = False
    origin: str = "inferred"  # "declared" | "inferred"

    @property
    def categorical(self) -> bool:
        return self.scale == "choice"

    def to_unit(self, value: Any) -> float:
        """A coordinate in [0, 1] (outside for a value beyond the range; an index for choices)."""
        if self.categorical:
            return float(self.choices.index(value)) if value in self.choices else -1.0
        x, lo, hi = self._warp(float(value)), self._warp_bound(self.low), self._warp_bound(self.high)
        return (x - lo) / (hi - lo) if hi > lo else 0.5

    def from_unit(self, u: float) -> Any:
        """The grid value nearest to coordinate ``u`` (clipped to the range)."""
        if self.categorical:
            return self.choices[int(min(max(round(u), 0), len(self.choices) - 1))]
        u = min(max(u, 0.0), 1.0)
        lo, hi = self._warp_bound(self.low), self._warp_bound(self.high)
        return self.snap(self._unwarp(lo + u * (hi - lo)))

    def snap(self, value: Any) -> Any:
        """The nearest value on this domain's grid, inside the range."""
        if self.categorical:
            return value
        v = float(value)
        if self.scale == "pow2":
            exponent = round(math.log2(v)) if v > 0 else self.low
            return int(2 ** int(min(max(exponent, self.low), self.high)))
        v = min(max(v, self.low), self.high)
        if self.step:
            v = self.low + round((v - self.low) / self.step) * self.step
            v = min(v, self.high)
        elif self.scale == "log":
            v = min(max(_nice_sig(v), self.low), self.high)
        elif self.scale == "log1m":
            v = min(max(round(1.0 - _nice_sig(1.0 - v), 12), self.low), self.high)
        elif not self.is_int:
            decimals = max(0, 2 - math.floor(math.log10(self.high - self.low))) if self.high > self.low else 6
            v = round(v, decimals)
        if self.is_int:
            return int(round(v))
        return round(v, 12)

    def grid(self, limit: int = 100_000) -> list | None:
        """Every value of the domain, or None when there are more than ``limit``."""
        if self.categorical:
            return list(self.choices)
        if self.scale == "pow2":
            return [2**e for e in range(int(self.low), int(self.high) + 1)]
        if self.scale == "int":
            step = int(self.step or 1)
            count = int((self.high - self.low) // step) + 1
            return None if count > limit else [int(self.low) + i * step for i in range(count)]
        values = {self.from_unit(i / 4000) for i in range(4001)}
        return sorted(values) if len(values) <= limit else None

    def describe(self) -> str:
        if self.categorical:
            return "{" + ", ".join(_show(c) for c in self.choices) + "}"
        if self.scale == "pow2":
            return f"2**[{int(self.low)}..{int(self.high)}] ({2 ** int(self.low)}..{2 ** int(self.high)})"
        step = f" step {_show(self.step)}" if self.step else ""
        kind = {"log": "log", "log1m": "log(1-x)", "int": "int", "linear": "linear"}[self.scale]
        return f"[{_show(self.low)}, {_show(self.high)}] {kind}{step}"

    def _warp_bound(self, bound: float) -> float:
        return bound if self.scale == "pow2" else self._warp(bound)  # pow2 bounds are exponents

    def _warp(self, x: float) -> float:
        if self.scale == "log":
            return math.log(max(x, 1e-300))
        if self.scale == "log1m":
            return -math.log(max(1.0 - x, 1e-12))
        if self.scale == "pow2":
            return math.log2(max(x, 1e-300))
        return x

    def _unwarp(self, x: float) -> float:
        if self.scale == "log":
            return math.exp(x)
        if self.scale == "log1m":
            return 1.0 - math.exp(-x)
        if self.scale == "pow2":
            return 2.0**x
        return x


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Dim:
    """One searched coordinate: a knob, or one element of a tuple knob."""

    key: str  # "MATRIX_LR" or "ADAM_BETAS[1]"
    knob: str
    index: int | None
    domain: Domain

    @property
    def priority(self) -> float:
        return priority(self.knob)

    @property
    def named(self) -> bool:
        return is_named(self.knob)


@dataclass
class Space:
    """The knobs of the editable files and how each may move."""

    knobs: dict[str, Knob]
    dims: list[Dim]
    pinned: dict[str, str] = field(default_factory=dict)  # knob -> why
    found: EditableKnobs | None = None  # the knobs as read, Hydra selections included

    def current(self) -> dict[str, Any]:
        return {name: knob.value for name, knob in self.knobs.items()}

    def dim_values(self, config: dict[str, Any]) -> list[Any]:
        """The value of every dimension in ``config`` (missing knobs take the file's value)."""
        out = []
        for dim in self.dims:
            value = config.get(dim.knob, self.knobs[dim.knob].value)
            if dim.index is not None:
                value = value[dim.index] if isinstance(value, (tuple, list)) else value
            out.append(value)
        return out

    def unit(self, config: dict[str, Any]) -> np.ndarray:
        return np.array(
            [d.domain.to_unit(v) for d, v in zip(self.dims, self.dim_values(config), strict=True)]
        )

    def with_dims(self, base: dict[str, Any], changes: dict[int, Any]) -> dict[str, Any]:
        """``base`` with dimension ``i`` set to ``changes[i]``, tuples rebuilt around them."""
        out = dict(base)
        for i, value in changes.items():
            dim = self.dims[i]
            if dim.index is None:
                out[dim.knob] = value
            else:
                seq = list(out.get(dim.knob, self.knobs[dim.knob].value))
                seq[dim.index] = value
                current = self.knobs[dim.knob].value
                out[dim.knob] = tuple(seq) if isinstance(current, tuple) else seq
        return out

    def key(self, config: dict[str, Any]) -> tuple:
        """What makes two configurations the same experiment (searched dimensions only)."""
        return tuple(canonical(v) for v in self.dim_values(config))

    @property
    def categorical_mask(self) -> np.ndarray:
        return np.array([d.domain.categorical for d in self.dims], dtype=bool)


def canonical(value: Any) -> Any:
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", round(float(value), 12))
    return ("s", str(value))


# ---------------------------------------------------------------------------------------------
# Inference and declarations


def infer_domain(name: str, value: Any, element: bool = False) -> Domain | None:
    """A sensible domain around the current value, or None when it cannot be inferred.

    Positive floats move on a log scale within a factor of ten; ratios (names such as
    ``*_RATIO``, ``*_FRAC``, ``DROPOUT``, or elements of a tuple between 0 and 1) stay in
    [0, 1], on a ``1 - x`` log scale when close to 1 (betas, EMA decays, and factors such as a
    scheduler's gamma of 0.95), below 0.9 in steps of 0.01 when 1 is degenerate (dropout,
    drop-path, label smoothing, mask ratios), below 0.99 for averaging coefficients and
    multipliers (momentum, a gamma of 0.7) further from 1; a weight decay at 0 moves in [0, 0.3];
    powers of two stay powers of two within a factor of four; other positive integers move within
    a factor of three; booleans flip. Strings need choices, declared or written in the script.
    """
    if isinstance(value, bool):
        return Domain("choice", choices=(False, True))
    if isinstance(value, int) and value == 0 and re.search(_OFF_AT_ZERO, hint_name(name)):
        value = 0.0  # weight_decay = 0, DROPOUT = 0: off, and a ratio or a decay when on, never 8
    if isinstance(value, int):
        if value >= 2 and value & (value - 1) == 0:
            k = int(math.log2(value))
            return Domain("pow2", low=max(0, k - 2), high=k + 2, is_int=True)
        if value > 0:
            return Domain("int", low=max(1, value // 3), high=max(value * 3, value + 2), is_int=True)
        if value == 0:
            return Domain("int", low=0, high=10, is_int=True)
        return Domain("int", low=3 * value, high=-value, is_int=True)
    if isinstance(value, float):
        log_named = bool(_LOG_HINT.search(hint_name(name)))
        ratio_named = bool(_RATIO_HINT.search(hint_name(name))) or element
        near_one = ratio_named or (value >= 0.9 and _FACTOR_NEAR_ONE.search(hint_name(name)))
        if 0.0 <= value <= 1.0 and near_one:
            if 0.8 <= value < 1.0:
                return Domain("log1m", low=0.5, high=1.0 - _nice_sig((1.0 - value) / 10))
            if not element and _DEGENERATE_AT_ONE.search(hint_name(name)):
                return Domain("linear", low=0.0, high=max(DEGENERATE_HIGH, value), step=0.01)
            if not element and value < 1.0 and _AVERAGING.search(hint_name(name)):
                return Domain("linear", low=0.0, high=AVERAGING_HIGH)
            if not log_named or value == 0 or element:
                return Domain("linear", low=0.0, high=1.0)
        if value > 0:
            high = AVERAGING_HIGH if value < 1.0 and _MULTIPLIER.search(hint_name(name)) else math.inf
            return Domain("log", low=_nice_sig(value / 10), high=min(_nice_sig(value * 10), high))
        if value == 0 and _WEIGHT_DECAY.search(hint_name(name)):
            return Domain("linear", low=0.0, high=WEIGHT_DECAY_FROM_ZERO)
        if value == 0:
            return Domain("linear", low=0.0, high=1.0)
        return Domain("linear", low=3 * value, high=-value)
    return None


def _declared_domain(name: str, spec: Any, value: Any, source: str) -> Domain:
    where = f"{source}: [agent.search] space: {name}"
    if not isinstance(spec, dict):
        raise UserError(
            f"{where}: expected a table such as {{low = 0.01, high = 0.1, log = true}} or {{choices = [...]}}"
        )
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}' (allowed: choices, high, log, low, step)")
    if "choices" in spec:
        if set(spec) - {"choices"}:
            raise UserError(f"{where}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: choices must be a non-empty list")
        for choice in choices:
            if not _same_kind(choice, value):
                raise UserError(
                    f"{where}: choice {choice!r} is {_a(type(choice).__name__)} but the knob is "
                    f"{_a(type(value).__name__)} ({value!r})"
                )
        uniq = tuple(dict.fromkeys(choices))
        if value not in uniq:  # the incumbent must be representable
            uniq = (value, *uniq)
        return Domain("choice", choices=uniq, origin="declared")
    if isinstance(value, (bool, str)):
        raise UserError(f"{where}: a {type(value).__name__} knob needs choices = [...], not low/high")
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{where}: needs both low and high (or choices = [...])")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    for key, number in (("low", low), ("high", high), ("step", step)):
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
            raise UserError(f"{where}: {key} must be a number, got {number!r}")
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise UserError(f"{where}: low ({low}) must be smaller than high ({high})")
    if log and low <= 0:
        raise UserError(f"{where}: log = true needs low > 0, got {low}")
    if step is not None and step <= 0:
        raise UserError(f"{where}: step must be positive, got {step}")
    if log and step is not None:
        raise UserError(f"{where}: use either log = true or step, not both")
    is_int = isinstance(value, int)
    if is_int:
        for key, number in (("low", low), ("high", high), ("step", step)):
            if number is not None and not float(number).is_integer():
                raise UserError(
                    f"{where}: the knob is an integer ({value}), so {key} must be whole, got {number}"
                )
        return Domain(
            "int" if not log else "log",
            low=int(low),
            high=int(high),
            step=step,
            is_int=True,
            origin="declared",
        )
    return Domain("log" if log else "linear", low=float(low), high=float(high), step=step, origin="declared")


def _same_kind(choice: Any, value: Any) -> bool:
    if isinstance(value, bool) or isinstance(choice, bool):
        return isinstance(value, bool) and isinstance(choice, bool)
    if isinstance(value, (int, float)):
        return isinstance(choice, (int, float))
    return type(choice) is type(value)


def build_space(
    files: dict[str, str],
    settings: SearchSettings,
    source: str = "nightlab.toml",
    origin: dict[str, Any] | None = None,
    command: str = "",
) -> Space:
    """The space of the editable files' knobs under the search agent's settings.

    ``settings`` holds the declared domains (``space``) and the pins (``pin``). ``origin`` holds
    the knob values domains are inferred from (the baseline's), so that a domain does not drift
    as kept changes move the incumbent: ``DEPTH = 3`` infers [1, 9] even once the incumbent's
    DEPTH is 8, a power of two. ``command`` is the run command (``[target] run``): a knob it sets
    on its command line (``--lr=0.01``) is pinned, declared or not, since the command's value wins
    over any edit and an experiment on it would measure only noise. A declaration or pin naming
    no knob, or a malformed declaration, is a :class:`UserError` naming the knob and what is wrong.
    """
    found = find_all_knobs(files, command)  # a name two files give is qualified by the second
    knobs: dict[str, Knob] = {knob.name: knob for knob in found.knobs}
    space_spec: dict[str, Any] = dict(settings.space)
    pins = list(settings.pin)
    known = ", ".join(knobs) or "none found"
    for name in list(space_spec) + pins:
        if name not in knobs:
            section = "[agent.search] space:" if name in space_spec else "[agent.search] pin:"
            raise UserError(
                f"{source}: {section} {name}: no such knob in the editable files (knobs: {known})"
            )
    overridden = set_by_command(command, knobs.values()) if command else {}
    dims: list[Dim] = []
    pinned: dict[str, str] = {}
    for name, knob in knobs.items():
        if name in pins:
            pinned[name] = "[agent.search] pin"
            continue
        if name in overridden:
            pinned[name] = f"set by the run command (`{overridden[name]}`): edits cannot change it"
            continue
        spec = space_spec.get(name)
        why_pinned = default_pin(name) if spec is None else None
        if why_pinned:
            pinned[name] = why_pinned
            continue
        value, before = knob.value, found.origin(name, origin or {})  # from this knob's own file
        if before is not None and _same_shape(before, value):
            value = before
        new_dims, why = _dims_for(knob, value, spec, source)
        if why:
            pinned[name] = why
        dims.extend(new_dims)
    return Space(knobs=knobs, dims=dims, pinned=pinned, found=found)


def _fits(choice: Any, value: Any) -> bool:
    """Whether a script's choice can replace the knob's value without changing its type (an
    integer knob takes only whole choices: 0.5 in a layer count would not run as written)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return isinstance(choice, int) and not isinstance(choice, bool)
    return _same_kind(choice, value)


def _same_shape(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b)
    return _same_kind(a, b) and isinstance(a, int) == isinstance(b, int)


def _dims_for(knob: Knob, value: Any, spec: Any, source: str) -> tuple[list[Dim], str]:
    if isinstance(value, (tuple, list)):
        if spec is None:
            specs: list[Any] = [None] * len(value)
        elif isinstance(spec, list):
            if len(spec) != len(value):
                raise UserError(
                    f"{source}: [agent.search] space: {knob.name}: {len(spec)} entries for a knob with "
                    f"{len(value)} elements; give one table per element, or one table for all"
                )
            specs = spec
        else:
            specs = [spec] * len(value)
        dims = []
        for i, (element, element_spec) in enumerate(zip(value, specs, strict=True)):
            label = f"{knob.name}[{i}]"
            domain = (
                _declared_domain(label, element_spec, element, source)
                if element_spec is not None
                else infer_domain(knob.name, element, element=0.0 < element < 1.0)
            )
            if domain is not None:
                dims.append(Dim(label, knob.name, i, domain))
        return dims, "" if dims else "no element can move"
    if spec is not None:
        return [Dim(knob.name, knob.name, None, _declared_domain(knob.name, spec, value, source))], ""
    if knob.choices and all(_fits(choice, value) for choice in knob.choices):
        # The script's own list (argparse choices=, click.Choice, Literal[...]); the current
        # value first when the list lacks it, so the incumbent stays representable.
        choices = knob.choices if value in knob.choices else (value, *knob.choices)
        if len(choices) < 2:
            return [], f"one choice in {knob.path}"
        domain = Domain("choice", choices=tuple(choices), origin=f"choices in {knob.path}")
        return [Dim(knob.name, knob.name, None, domain)], ""
    domain = infer_domain(knob.name, value)
    if domain is None:
        return [], "string: no choices declared"
    return [Dim(knob.name, knob.name, None, domain)], ""


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"
