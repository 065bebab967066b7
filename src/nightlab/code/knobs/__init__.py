"""The knobs of a training script, found where people keep them, and rewritten in place.

A knob is one literal in an editable file: an UPPER_CASE constant or a lowercase setting of a
Python script (:mod:`.python`, which also reads argparse/click defaults and dataclass fields),
or a scalar in a YAML, JSON or TOML config file (:mod:`.files`). :func:`find_knobs` reads them
with their exact spans; :func:`set_knobs` rewrites only the literals' text, written the way the
author wrote them (:mod:`.literal`), so a file keeps every comment, space and line: the diff of an
experiment is exactly the values that changed, which is what a person reviewing the research
branch wants to see. :func:`set_by_command` names the knobs a run command overrides on its
command line (:mod:`.command`), which editing cannot change.

Example::

    >>> src = "LR = 3e-4  # peak\\nDEPTH = 4\\n"
    >>> [k.name for k in find_knobs(src)]
    ['LR', 'DEPTH']
    >>> set_knobs(src, {"LR": 0.0006, "DEPTH": 6})
    'LR = 6e-4  # peak\\nDEPTH = 6\\n'
"""

from __future__ import annotations

import dataclasses
import math
import re

from nightlab.code.knobs.choices import comment_choices
from nightlab.code.knobs.command import set_by_command
from nightlab.code.knobs.files import json_knobs, toml_knobs, yaml_knobs
from nightlab.code.knobs.literal import format_literal, format_value
from nightlab.code.knobs.model import Knob, KnobValue
from nightlab.code.knobs.python import python_knobs
from nightlab.errors import UserError

__all__ = ["Knob", "KnobValue", "find_knobs", "format_literal", "format_value", "is_budget_name"]
__all__ += ["knob_values", "set_knobs", "set_by_command", "KNOB_SUFFIXES"]

_READERS = {
    ".py": python_knobs,
    ".yaml": yaml_knobs,
    ".yml": yaml_knobs,
    ".json": json_knobs,
    ".toml": toml_knobs,
}
# The files knobs can live in; any other editable file has none.
KNOB_SUFFIXES = tuple(_READERS)
# Names of knobs that are a script's budget rather than its method: the number of iterations,
# steps, epochs or tokens it trains for. Searching them buys results with compute. A warm-up's
# length is method (nanoGPT's warmup_iters), and a `max_` that names a learning rate, a norm or
# a clip is a setting's ceiling (OneCycleLR's max_lr, max_grad_norm), not how long training runs.
_BUDGET = re.compile(
    r"(?<!warmup_)(?:iters?|iterations|steps|epochs)$"
    r"|^max_(?!.*(?:lr|learning|norm|grad|clip|momentum|beta|drop|temp|scale|std|decay))"
    r"|^total_.*tokens$",
    re.IGNORECASE,
)


def find_knobs(source: str, path: str = "train.py") -> list[Knob]:
    """Every knob of the file ``path`` whose text is ``source``, in file order (none for a file
    of another kind)."""
    for suffix, reader in _READERS.items():
        if path.endswith(suffix):
            return [_with_comment_choices(k) for k in reader(source, path)]
    return []


def _with_comment_choices(knob: Knob) -> Knob:
    """A string knob whose only list of alternatives is its trailing comment gets them as choices."""
    if knob.choices or knob.kind != "str":
        return knob
    listed = comment_choices(knob.value, knob.comment)
    return dataclasses.replace(knob, choices=listed) if listed else knob


def knob_values(source: str, path: str = "train.py") -> dict[str, KnobValue]:
    """``{name: value}`` for every knob of ``source``."""
    return {k.name: k.value for k in find_knobs(source, path)}


def is_budget_name(name: str) -> bool:
    """Whether a knob's name says it is the budget (``max_iters``, ``NUM_EPOCHS``, ``total_tokens``)."""
    return bool(_BUDGET.search(name.rsplit(".", 1)[-1].lstrip("-")))


def set_knobs(source: str, values: dict[str, KnobValue], path: str = "train.py") -> str:
    """``source`` with the named knobs' literals replaced; every other byte is unchanged.

    Raises :class:`UserError` for a name that is not a knob of the file, naming the knobs that
    are, so a typo in ``[scales.*] constants`` or a stale proposal is caught before a run; and
    for a value of another kind (a string for a number, a number for a bool, NaN), since the
    script would then run with a type its author never wrote.
    """
    knobs = {k.name: k for k in find_knobs(source, path)}
    unknown = [name for name in values if name not in knobs]
    if unknown:
        known = ", ".join(knobs) or "none"
        raise UserError(f"{path}: no knob named {', '.join(unknown)} (knobs found: {known})")
    for name, value in values.items():
        problem = _incompatible(knobs[name], value)
        if problem:
            raise UserError(f"{path}: {name} is {problem}; cannot set it to {value!r}")
    out = source
    for knob in sorted((knobs[n] for n in values), key=lambda k: k.start, reverse=True):
        new_text = format_value(knob.text, values[knob.name], knob.syntax)
        out = out[: knob.start] + new_text + out[knob.end :]
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _incompatible(knob: Knob, value: object) -> str:
    """Why ``value`` cannot replace ``knob``'s literal ("" when it can): the kind must stay."""
    what = f"a {knob.kind} knob ({knob.text})"
    if knob.kind == "bool":
        return "" if isinstance(value, bool) else what
    if knob.kind == "str":
        return "" if isinstance(value, str) else what
    if knob.kind in ("int", "float"):
        return "" if _is_number(value) else what
    ok = isinstance(value, (tuple, list)) and len(value) > 0 and all(_is_number(v) for v in value)
    return "" if ok else what
