"""Hydra structured configs: dataclasses registered with ``ConfigStore.instance().store(...)``.

Read field by field, such a file misleads a search the way a YAML config tree does
(:mod:`.hydra`): ``AdamConfig.lr`` and ``SGDConfig.lr`` are both fields, but only the option the
run selects is composed, so edits to the other one change nothing; and the script reads, and the
command line overrides, ``cfg.optim.lr``, not ``lr``. So the classes a ConfigStore holds are
placed as Hydra composes them (:func:`placements`):

- the primary config (the store ``@hydra.main(config_name=...)`` names; every store without a
  group when none is named) is placed at the root, and a field whose default is another
  dataclass of the file (``optim: OptimConfig = field(default_factory=OptimConfig)``) places that
  class under its name: its ``lr`` is the knob ``optim.lr``, which ``optim.lr=0.1`` on the
  command line sets;
- an option stored in a group (``cs.store(group="optim", name="sgd", node=SGDConfig)``) is placed
  at its package (the group, ``package=`` when given) only when it is selected: by the run
  command (``optim=sgd``), else by the primary's defaults list (``defaults: List[Any] =
  field(default_factory=lambda: [{"optim": "adam"}, "_self_"])``). The options not selected give
  no knobs;
- the defaults list's choice is itself a knob named as the command line names the group
  (``optim``), whose choices are the group's stored options, written back in place, and a switch
  moves the option knobs to the newly selected class as a YAML group switch does.

Classes of no store are read as plain dataclasses. Only literal ``store`` arguments are read.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from nightlab.code.knobs.command import command_words
from nightlab.code.knobs.reader import call_name, keyword

__all__ = ["Placement", "GroupChoice", "placements"]

_DEFAULT_ENTRY = re.compile(r"^(?:(?:override|optional)\s+)?([A-Za-z0-9_/]+)$")


@dataclass(frozen=True)
class Placement:
    """Where a stored dataclass's fields land: ``prefix`` (``"optim."``) and the group choices
    that select it; ``prefix`` None for an option the run does not select (no knobs)."""

    prefix: str | None
    selected_by: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GroupChoice:
    """A defaults-list entry's option literal (``"adam"`` in ``{"optim": "adam"}``)."""

    group: str
    node: ast.Constant
    stmt: ast.stmt
    options: tuple[str, ...]


@dataclass(frozen=True)
class _Store:
    name: str
    node: str
    group: str
    package: str | None


def placements(tree: ast.Module, command: str) -> tuple[dict[str, Placement], list[GroupChoice]]:
    """``({class name: placement}, group choices)`` for the file's ConfigStore (empty without one)."""
    classes = {s.name: s for s in tree.body if isinstance(s, ast.ClassDef) and _is_dataclass(s)}
    stores = [s for s in (_store(n, classes) for n in ast.walk(tree) if isinstance(n, ast.Call)) if s]
    if not stores:
        return {}, []
    named = _config_name(tree)
    roots = [s for s in stores if not s.group and (named is None or s.name == named)]
    options: dict[str, dict[str, _Store]] = {}
    for store in stores:
        if store.group:
            options.setdefault(store.group, {})[store.name] = store
    placed: dict[str, Placement] = {}
    choices: list[GroupChoice] = []
    chosen = _command_choices(command, set(options))
    for root in roots:
        _place(classes, root.node, (root.package + ".") if root.package else "", (), placed)
        for group, node, stmt in _defaults_list(classes[root.node]):
            if group in options:
                choices.append(GroupChoice(group, node, stmt, tuple(sorted(options[group]))))
                chosen.setdefault(group, node.value)
    for group, stored in options.items():
        for name, store in stored.items():
            if chosen.get(group) == name:
                package = store.package if store.package is not None else group.replace("/", ".")
                prefix = "" if package == "_global_" else package + "."
                _place(classes, store.node, prefix, ((group, name),), placed)
    for stored in options.values():
        for store in stored.values():
            placed.setdefault(store.node, Placement(None))
    return placed, choices


def _place(
    classes: dict[str, ast.ClassDef],
    name: str,
    prefix: str,
    chain: tuple[tuple[str, str], ...],
    placed: dict[str, Placement],
) -> None:
    """Place class ``name`` at ``prefix``, and the dataclasses its fields hold below it."""
    if name in placed or name not in classes:
        return
    placed[name] = Placement(prefix, chain)
    for stmt in classes[name].body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            inner = _nested(stmt.value)
            if inner in classes:
                _place(classes, inner, f"{prefix}{stmt.target.id}.", chain, placed)


def _nested(value: ast.expr) -> str:
    """The dataclass a field's default builds: ``field(default_factory=X)``, ``X()``, or a
    ``lambda: X()`` factory."""
    if isinstance(value, ast.Call) and call_name(value) == "field":
        factory = keyword(value, "default_factory")
        if isinstance(factory, ast.Lambda):
            factory = factory.body
        if isinstance(factory, ast.Call):
            factory = factory.func
        return factory.id if isinstance(factory, ast.Name) else ""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
        return value.func.id
    return ""


def _store(call: ast.Call, classes: dict[str, ast.ClassDef]) -> _Store | None:
    """A ``cs.store(name=..., node=SomeDataclass, group=..., package=...)`` call with literals."""
    if call_name(call) != "store":
        return None
    params = ("name", "node", "group", "package")
    given = {p: call.args[i] for i, p in enumerate(params) if i < len(call.args)}
    given.update({k.arg: k.value for k in call.keywords if k.arg in params})
    node = given.get("node")
    if isinstance(node, ast.Call):  # node=TrainConfig()
        node = node.func
    texts = {p: v.value for p, v in given.items() if isinstance(v, ast.Constant) and isinstance(v.value, str)}
    if not isinstance(node, ast.Name) or node.id not in classes or "name" not in texts:
        return None
    return _Store(texts["name"], node.id, texts.get("group", ""), texts.get("package"))


def _config_name(tree: ast.Module) -> str | None:
    """The ``config_name`` of the file's ``@hydra.main(...)``, if it names one."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and call_name(node) == "main":
            value = keyword(node, "config_name")
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
    return None


def _defaults_list(cls: ast.ClassDef) -> list[tuple[str, ast.Constant, ast.stmt]]:
    """``(group, option literal, statement)`` for each ``{"group": "option"}`` entry of the
    class's ``defaults`` field (a ``default_factory`` lambda returning a list literal)."""
    for stmt in cls.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if stmt.target.id != "defaults" or not isinstance(stmt.value, ast.Call):
            continue
        factory = keyword(stmt.value, "default_factory")
        entries = factory.body if isinstance(factory, ast.Lambda) else None
        if not isinstance(entries, ast.List):
            return []
        found = []
        for entry in entries.elts:
            if not isinstance(entry, ast.Dict) or len(entry.keys) != 1:
                continue
            key, value = entry.keys[0], entry.values[0]
            match = (
                _DEFAULT_ENTRY.match(key.value)
                if isinstance(key, ast.Constant) and isinstance(key.value, str)
                else None
            )
            if match and isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.append((match.group(1), value, stmt))
        return found
    return []


def _command_choices(command: str, groups: set[str]) -> dict[str, str]:
    """The groups the run command selects (``optim=sgd``, ``+optim=sgd``); ``~optim`` selects none."""
    chosen: dict[str, str] = {}
    for word in command_words(command):
        name, eq, option = word.lstrip("+").partition("=")
        if word.startswith("~") and word[1:].split("=")[0] in groups:
            chosen[word[1:].split("=")[0]] = ""
        elif eq and name in groups:
            chosen[name] = option
    return chosen


def _is_dataclass(cls: ast.ClassDef) -> bool:
    return any(call_name(d.func if isinstance(d, ast.Call) else d) == "dataclass" for d in cls.decorator_list)
