"""What every table of ``nightlab.toml`` refuses beyond its types, and how a problem is said.

The strictness the tables (:mod:`nightlab.config`) and the kinds' settings
(:mod:`nightlab.plugins`) share, the rules for names the file gives (environment variables,
tags), and one pydantic error as the one line a user reads.
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Mapping, Sequence
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _scalar_kind(annotation: Any) -> str | None:
    """``"boolean"`` for a field TOML must give as true or false; ``"number"`` for one that takes
    a number (``int``, ``float | None``, ``int | Literal["auto"]``); None for anything else."""
    origin = get_origin(annotation)
    members = set(get_args(annotation)) if origin in (Union, types.UnionType) else {annotation}
    members.discard(type(None))
    if members == {bool}:
        return "boolean"
    if members & {int, float} and bool not in members:
        return "number"  # ``int | Literal["auto"]`` too: true is not 1 there either
    return None


class TomlModel(BaseModel):
    """A table of nightlab.toml: what pydantic's lax mode would let through is refused here.

    ``true`` is not the number 1 (``seconds = true``), ``"yes"`` or ``1`` is not a boolean, infinity
    and NaN are no limit or budget, and an empty string (or one of spaces) is never a value:
    each would run a night on something the user did not mean. Kind settings
    (:class:`nightlab.plugins.Settings`) are checked the same way.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _scalar_types(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        kind = _scalar_kind(field.annotation) if field is not None else None
        if kind == "boolean" and not isinstance(value, bool):
            raise ValueError(f"{_toml(value)} is not a boolean: write true or false, without quotes")
        if kind == "number" and isinstance(value, bool):
            raise ValueError(f"{_toml(value)} is not a number: write a number")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _no_blanks(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: give it a value, or leave the key out for its default")
        if isinstance(value, list) and any(isinstance(v, str) and not v.strip() for v in value):
            raise ValueError("holds an empty string: remove it")
        return value


def _toml(value: Any) -> str:
    """``value`` as nightlab.toml spells it (``true``, ``"yes"``), for an error message."""
    return json.dumps(value, default=str)


# A name an environment variable can have (POSIX shells; others cannot be exported or read).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_names(names: Sequence[str]) -> None:
    bad = [n for n in names if not _ENV_NAME.fullmatch(n)]
    if bad:
        raise ValueError(f"'{bad[0]}' is not an environment variable name (letters, digits and _)")


# The tags the research branch can have: what the workspace's git layer takes
# (nightlab.workspace.git.Workspace.branch_ref), within what git itself takes. A wider rule here
# let `--tag a/b` or `[run] tag = "héllo"` through to fail after the run had started printing.
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TAG_RULE = "use letters, digits, '.', '_' or '-', at most 64, the first a letter or digit"


def valid_tag(tag: str) -> bool:
    """Whether ``tag`` can name the branch ``nightlab/<tag>`` (:data:`TAG_RULE`; no ``..``, no
    ending in ``.`` or ``.lock``, as git check-ref-format requires)."""
    return bool(_TAG.fullmatch(tag)) and ".." not in tag and not tag.endswith((".", ".lock"))


def describe_error(error: Mapping[str, Any], prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One pydantic error as one line naming the table and key (``[budget] timeout: ...``).

    ``prefix`` is the table the error's location is relative to (``agent.llm`` for a kind's
    settings validated on their own). With ``model`` (the one validated), an unknown key also
    names the closest key its table takes, since most unknown keys are typos of one.
    """
    loc = [*(prefix.split(".") if prefix else []), *(str(p) for p in error.get("loc", ()))]
    msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "missing":  # pydantic's "Field required" says neither which nor where
        msg = "missing, and required (docs/CONFIG.md lists every key)"
    if error.get("type") == "extra_forbidden":
        where = f"[{'.'.join(loc[:-1])}]" if len(loc) > 1 else "top level"
        hint = ""
        if model is not None:
            own = [str(p) for p in error.get("loc", ())]
            close = difflib.get_close_matches(own[-1], known_keys(model, own[:-1]), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{loc[-1]}' in {where}{hint}"
    if loc:
        table, field = ".".join(loc[:-1]), loc[-1]
        where = f"[{table}] {field}" if table else f"[{field}]"
        return f"{where}: {msg}"
    return msg


def _as_model(annotation: Any) -> Any:
    """``X | None`` -> ``X`` where exactly one member is a model; anything else unchanged."""
    if get_origin(annotation) is dict:
        return annotation
    models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 else annotation


def known_keys(model: type[BaseModel], path: Sequence[str]) -> list[str]:
    """The keys the table at ``path`` (``["scales", "big", "budget"]``) of ``model`` takes.

    Empty where the path leads to no model (a free-form table): no suggestion beats a wrong one.
    """
    current: Any = model
    for part in path:
        current = _as_model(current)
        if get_origin(current) is dict:
            current = get_args(current)[1]  # ``part`` is a key of the mapping, e.g. a scale's name
        elif isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[part].annotation
        else:
            return []
    current = _as_model(current)
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []
