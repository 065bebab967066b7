"""Kinds that plug in: a new agent, policy or executor is one module, with no edit anywhere else.

A kind is a name, a factory and a settings model. Its module declares it as a module-level
``KINDS`` tuple of :class:`Kind`; a :class:`Registry` (one per part: agents, policies,
executors) finds it three ways, cheapest first:

1. kinds added at run time with :meth:`Registry.add` (a test, a script that drives nightlab);
2. the part's built-in modules, by name, imported only when asked for;
3. installed packages that declare an entry point in the part's group (``nightlab.agents``,
   ``nightlab.policies``, ``nightlab.executors``, ``nightlab.pruners``) naming their module
   (``[project.entry-points."nightlab.agents"] tiny = "tiny_agent"``).

The settings of a kind live in nightlab.toml in the part's table, ``[agent.NAME]`` for the
agent kind NAME; the part's common keys (``kind``, ``pipeline`` for agents, ...) stay in
``[agent]``. Older workspaces put a built-in kind's settings directly in ``[agent]``
(``[agent] model = "gpt-4o"``): such a key still counts, for every kind that declares it.
Each kind's settings model forbids unknown keys, and every problem is one line naming the table
and the key, as for the rest of nightlab.toml.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Annotated, Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from nightlab.config import KindSection, TomlModel, describe_error
from nightlab.errors import UserError
from nightlab.paths import CONFIG_NAME


class Settings(TomlModel):
    """The base of every kind's settings model: unknown keys are errors, types are checked as
    for the rest of nightlab.toml (no ``true`` for a number, no empty strings, no infinity)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class Kind:
    """One pluggable kind: ``factory`` builds it from its validated ``settings`` (and what the
    part passes along, e.g. the session's setup for an agent)."""

    name: str
    factory: Callable[..., Any]
    settings: type[Settings] = Settings
    summary: str = ""


@dataclass
class Registry:
    """The kinds of one part. ``builtin`` maps a kind's name to the module that declares it."""

    part: str  # "agent", "policy", "executor": the nightlab.toml table
    builtin: Mapping[str, str]
    entry_point_group: str  # "nightlab.agents": where installed packages declare their kinds
    _kinds: dict[str, Kind] = field(default_factory=dict)
    _loaded_entry_points: bool = False

    def add(self, kind: Kind) -> Kind:
        """Register ``kind`` (replacing one of the same name); returns it, for use as a one-liner."""
        self._kinds[kind.name] = kind
        return kind

    def remove(self, name: str) -> None:
        """Forget a kind added at run time (tests clean up after themselves)."""
        self._kinds.pop(name, None)

    def get(self, name: str) -> Kind:
        """The kind called ``name``; an unknown name is a one-line error listing the known ones."""
        if name not in self._kinds and name in self.builtin:
            self._load(self.builtin[name])
        if name not in self._kinds:
            self._load_entry_points()
        if name not in self._kinds:
            raise UserError(
                f"{CONFIG_NAME}: [{self.part}] kind '{name}' is not one of {', '.join(self.names())}"
            )
        return self._kinds[name]

    def names(self) -> list[str]:
        """Every kind this registry can build (built-in, added, installed)."""
        self._load_entry_points()
        return sorted({*self.builtin, *self._kinds})

    def all(self) -> list[Kind]:
        """Every kind, each module imported (needed to tell which kind declares an older flat key)."""
        return [self.get(name) for name in self.names()]

    # -- settings ------------------------------------------------------------------------
    def settings(self, section: KindSection, kind: str | None = None) -> Settings:
        """The validated settings of ``kind`` (default: the section's kind) from nightlab.toml."""
        chosen = self.get(kind or section.kind)
        raw: dict[str, Any] = {}
        for key, value in (section.model_extra or {}).items():
            if self._is_kind_table(key, value):
                continue
            if key in chosen.settings.model_fields:
                raw[key] = value  # an older workspace's flat key
        table = (section.model_extra or {}).get(chosen.name)
        if self._is_kind_table(chosen.name, table):
            raw.update(table)
            where = f"{self.part}.{chosen.name}"
        else:
            where = self.part
        return self._validate(chosen.settings, raw, where)

    def check(self, section: KindSection) -> None:
        """Every key of the part's table belongs somewhere, and every kind table validates.

        Called before anything runs, so a typo costs a second, not a night.
        """
        self.get(section.kind)
        extras = section.model_extra or {}
        declared: dict[str, list[Kind]] = {}
        for kind in self.all():
            for name in kind.settings.model_fields:
                declared.setdefault(name, []).append(kind)
        for key, value in extras.items():
            if self._is_kind_table(key, value):
                self._validate(self.get(key).settings, value, f"{self.part}.{key}")
            elif key not in declared:
                known = ["kind", *declared, *self._kinds, *self.builtin]
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise UserError(f"{CONFIG_NAME}: unknown key '{key}' in [{self.part}]{hint}")
            else:
                for kind in declared[key]:
                    _check_field(kind.settings, key, value, self.part)
        self.settings(section)

    # -- helpers -------------------------------------------------------------------------
    def _is_kind_table(self, key: str, value: object) -> bool:
        return isinstance(value, dict) and (key in self._kinds or key in self.builtin)

    def _validate(self, model: type[Settings], raw: dict, where: str) -> Settings:
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            # An unknown key first, with the closest key the table takes: most are typos.
            errors = sorted(exc.errors(), key=lambda error: error.get("type") != "extra_forbidden")
            first = describe_error(errors[0], prefix=where, model=model)
            raise UserError(f"{CONFIG_NAME}: {first}") from None

    def _load(self, module: str) -> None:
        for kind in getattr(importlib.import_module(module), "KINDS", ()):
            self._kinds.setdefault(kind.name, kind)

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for point in metadata.entry_points(group=self.entry_point_group):
            try:
                self._load(point.value.split(":")[0])
            except ImportError as exc:
                raise UserError(
                    f"the {self.part} plugin '{point.name}' ({point.value}) cannot be imported: {exc}"
                ) from None


def _check_field(model: type[Settings], key: str, value: object, part: str) -> None:
    """Type-check one older flat key against the field of a kind that declares it."""
    info = model.model_fields[key]
    annotated = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    try:
        TypeAdapter(annotated).validate_python(value)
    except ValidationError as exc:
        error = dict(exc.errors()[0])
        error["loc"] = (key, *error.get("loc", ()))
        raise UserError(f"{CONFIG_NAME}: {describe_error(error, prefix=part)}") from None
