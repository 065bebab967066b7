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

The editable files are read together: the dataclasses may live in ``config.py`` and the stores
in ``train.py`` (``from config import TrainConfig``, ``node=config.AdamConfig``). Classes of no
store are read as plain dataclasses. Only literal ``store`` arguments are read.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from nightlab.code.knobs.callers import import_source, module_of
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
    node: tuple[str, str]  # (path, class name)
    group: str
    package: str | None


Ref = tuple[str, str]  # a class: (the file that defines it, its name)
Found = tuple[dict[str, Placement], list[GroupChoice]]


def placements(trees: dict[str, ast.Module], command: str) -> dict[str, Found]:
    """``{path: ({class name: placement}, group choices)}`` for the editable Python files' Hydra
    ConfigStore, read together: the stores may be in train.py and the dataclasses in config.py
    (``from config import TrainConfig``). Files without a placed class are left out."""
    space = _Classes(trees)
    stores = [s for path, tree in trees.items() for s in _stores(path, tree, space)]
    out: dict[str, Found] = {}
    if not stores:
        return out
    named = next((n for n in (_config_name(t) for t in trees.values()) if n is not None), None)
    roots = [s for s in stores if not s.group and (named is None or s.name == named)]
    options: dict[str, dict[str, _Store]] = {}
    for store in stores:
        if store.group:
            options.setdefault(store.group, {})[store.name] = store
    placed: dict[Ref, Placement] = {}
    chosen = _command_choices(command, set(options))
    for root in roots:
        _place(space, root.node, (root.package + ".") if root.package else "", (), placed)
        for group, node, stmt in _defaults_list(space.classes[root.node]):
            if group in options:
                choice = GroupChoice(group, node, stmt, tuple(sorted(options[group])))
                out.setdefault(root.node[0], ({}, []))[1].append(choice)
                chosen.setdefault(group, node.value)
    for group, stored in options.items():
        for name, store in stored.items():
            if chosen.get(group) == name:
                package = store.package if store.package is not None else group.replace("/", ".")
                prefix = "" if package == "_global_" else package + "."
                _place(space, store.node, prefix, ((group, name),), placed)
    for stored in options.values():
        for store in stored.values():
            placed.setdefault(store.node, Placement(None))
    for (path, name), place in placed.items():
        out.setdefault(path, ({}, []))[0][name] = place
    return out


class _Classes:
    """The dataclasses of the editable files, and what a name means in a file: a class it
    defines, or one it imports from another editable file (``from config import TrainConfig as
    TC``, ``import config`` then ``config.TrainConfig``)."""

    def __init__(self, trees: dict[str, ast.Module]) -> None:
        self.classes: dict[Ref, ast.ClassDef] = {
            (path, s.name): s
            for path, tree in trees.items()
            for s in tree.body
            if isinstance(s, ast.ClassDef) and _is_dataclass(s)
        }
        paths = {module_of(p): p for p in trees}
        self.names: dict[str, dict[str, Ref]] = {}  # path -> local name -> class
        self.modules: dict[str, dict[str, str]] = {}  # path -> local module name -> its path
        for path, tree in trees.items():
            names = self.names.setdefault(path, {})
            modules = self.modules.setdefault(path, {})
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and import_source(path, node) in paths:
                    source = paths[import_source(path, node)]
                    names.update({a.asname or a.name: (source, a.name) for a in node.names})
                elif isinstance(node, ast.Import):
                    modules.update({a.asname or a.name: paths[a.name] for a in node.names if a.name in paths})

    def lookup(self, path: str, node: ast.expr) -> Ref | None:
        """The dataclass ``node`` (``TrainConfig``, ``config.TrainConfig``) names in ``path``."""
        ref: Ref | None = None
        if isinstance(node, ast.Name):
            ref = (
                (path, node.id) if (path, node.id) in self.classes else self.names.get(path, {}).get(node.id)
            )
        elif isinstance(node, ast.Attribute):
            module = self.modules.get(path, {}).get(ast.unparse(node.value))
            ref = (module, node.attr) if module else None
        return ref if ref in self.classes else None


def _place(
    space: _Classes, ref: Ref, prefix: str, chain: tuple[tuple[str, str], ...], placed: dict[Ref, Placement]
) -> None:
    """Place class ``ref`` at ``prefix``, and the dataclasses its fields hold below it."""
    if ref in placed or ref not in space.classes:
        return
    placed[ref] = Placement(prefix, chain)
    for stmt in space.classes[ref].body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            inner = _nested(stmt.value)
            found = space.lookup(ref[0], inner) if inner is not None else None
            if found is not None:
                _place(space, found, f"{prefix}{stmt.target.id}.", chain, placed)


def _nested(value: ast.expr) -> ast.expr | None:
    """The class a field's default builds: ``field(default_factory=X)``, ``X()``, or a
    ``lambda: X()`` factory (``X`` also dotted, ``config.X``)."""
    if isinstance(value, ast.Call) and call_name(value) == "field":
        factory = keyword(value, "default_factory")
        if isinstance(factory, ast.Lambda):
            factory = factory.body
        if isinstance(factory, ast.Call):
            factory = factory.func
        return factory
    return value.func if isinstance(value, ast.Call) else None


def _stores(path: str, tree: ast.Module, space: _Classes) -> list[_Store]:
    """The file's ``cs.store(name=..., node=SomeDataclass, group=..., package=...)`` calls whose
    arguments are literals and whose node is a dataclass of the editable files."""
    found = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call) or call_name(call) != "store":
            continue
        params = ("name", "node", "group", "package")
        given = {p: call.args[i] for i, p in enumerate(params) if i < len(call.args)}
        given.update({k.arg: k.value for k in call.keywords if k.arg in params})
        node = given.get("node")
        if isinstance(node, ast.Call):  # node=TrainConfig()
            node = node.func
        texts = {
            p: v.value for p, v in given.items() if isinstance(v, ast.Constant) and isinstance(v.value, str)
        }
        ref = space.lookup(path, node) if node is not None else None
        if ref is not None and "name" in texts:
            found.append(_Store(texts["name"], ref, texts.get("group", ""), texts.get("package")))
    return found


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
