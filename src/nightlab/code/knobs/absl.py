"""Knobs of Google-style scripts: absl flags and ml_collections config functions.

- ``absl``: ``flags.DEFINE_float("lr", 0.05, "help")``, also ``DEFINE_integer``,
  ``DEFINE_string``, ``DEFINE_bool``/``DEFINE_boolean`` and ``DEFINE_enum("act", "relu",
  ["relu", "gelu"], ...)``, whose list is the knob's choices; the ``name=``/``default=``/
  ``enum_values=`` keyword forms too. The knob is named after the flag (``FLAGS.lr`` reads it)
  and spelled ``--lr`` on the command line (a boolean also ``--nolr``). ``DEFINE_multi_integer``
  and ``DEFINE_multi_float`` with a list of numbers (``[64, 64]``, one value per layer) are a list
  knob, searched element by element as any list of numbers; ``DEFINE_list`` and
  ``DEFINE_multi_string`` are left out: their values are strings the script parses (``["32",
  "64"]``, ``"32,64"``), which give no number to search and no choices to pick from;
- ``ml_collections``: the literals a config function assigns into a ``ConfigDict``
  (``config = ml_collections.ConfigDict()``, ``config.learning_rate = 0.05``,
  ``config.model = ConfigDict()``, ``config.model.hidden = 64``): knobs ``learning_rate`` and
  ``model.hidden``, the names ``--config.model.hidden=...`` sets. A ``ConfigDict({...})`` or
  ``ConfigDict(dict(...))`` of literals gives its entries the same way, nested dicts dotted.
  Assignments inside ``with config.unlocked():`` and other blocks count; a later assignment of
  the same entry wins, as it does when the function runs.

These are the places such a script's author keeps its settings (``configs/default.py`` with
``get_config()``, flags at the top of ``train.py``), so they are searched like any other knob.
"""

from __future__ import annotations

import ast

from nightlab.code.knobs.choices import listed_choices
from nightlab.code.knobs.literal import literal
from nightlab.code.knobs.reader import Reader, call_name, dotted_path, keyword

# The absl definitions whose default is a knob: one scalar, or (multi_integer, multi_float) a list
# of numbers. Lists of strings (DEFINE_list, DEFINE_multi_string) and enum classes are left out.
_DEFINES = {"DEFINE_float", "DEFINE_integer", "DEFINE_string", "DEFINE_bool", "DEFINE_boolean", "DEFINE_enum",
            "DEFINE_multi_integer", "DEFINE_multi_float"}  # fmt: skip
_CONFIG_DICT = {"ConfigDict", "FrozenConfigDict"}


def absl_flag(reader: Reader, call: ast.Call) -> None:
    """The default of one ``flags.DEFINE_*`` call as a knob (nothing for any other call)."""
    define = call_name(call)
    if define not in _DEFINES:
        return
    name = keyword(call, "name") or (call.args[0] if call.args else None)
    default = keyword(call, "default") or (call.args[1] if len(call.args) > 1 else None)
    if not (isinstance(name, ast.Constant) and isinstance(name.value, str)) or default is None:
        return
    choices: ast.expr | None = None
    if define == "DEFINE_enum":
        choices = keyword(call, "enum_values") or (call.args[2] if len(call.args) > 2 else None)
    flags = (f"--{name.value}",)
    if define in ("DEFINE_bool", "DEFINE_boolean"):
        flags += (f"--no{name.value}",)
    listed = listed_choices(choices, reader.names)
    reader.add(
        name.value, default, call, "absl", qualified=f"FLAGS.{name.value}", choices=listed, flags=flags
    )


def config_dict_knobs(reader: Reader, tree: ast.Module) -> None:
    """The literal entries of every ``ConfigDict`` a function (or the module) builds, in order."""
    scopes: list[list[ast.stmt]] = [tree.body]
    scopes += [n.body for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for body in scopes:
        _ConfigScope(reader).read(body)


class _ConfigScope:
    """One function's config dicts: which variables hold one, and the entries assigned so far."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.roots: set[str] = set()  # variables bound to a ConfigDict
        self.mine: dict[str, str] = {}  # entry -> the name of the knob it gave (maybe qualified)

    def read(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue  # a scope of its own
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                self._assign(stmt.targets[0], stmt.value, stmt)
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                self._assign(stmt.target, stmt.value, stmt)
            for block in ("body", "orelse", "finalbody"):  # with config.unlocked(): ..., if ...:
                inner = getattr(stmt, block, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                    self.read(inner)

    def _assign(self, target: ast.expr, value: ast.expr, stmt: ast.stmt) -> None:
        if isinstance(target, ast.Name):
            if isinstance(value, ast.Call) and call_name(value) in _CONFIG_DICT:
                self.roots.add(target.id)
                self._entries(_initial(value), stmt, "", target.id)
            else:
                self.roots.discard(target.id)  # rebound to something else
            return
        path = dotted_path(target)
        if path is None or path[0] not in self.roots or len(path) < 2:
            return
        root, name = path[0], ".".join(path[1:])
        if isinstance(value, ast.Call) and call_name(value) in _CONFIG_DICT:
            self._entries(_initial(value), stmt, f"{name}.", root)
        elif isinstance(value, (ast.Dict, ast.Call)) and _pairs(value):
            self._entries(value, stmt, f"{name}.", root)  # config.optim = dict(lr=...) reads the same
        else:
            self._add(name, value, stmt, root)

    def _entries(self, node: ast.expr | None, stmt: ast.stmt, prefix: str, root: str) -> None:
        for key, value in _pairs(node):
            if isinstance(value, ast.Call) and call_name(value) in _CONFIG_DICT:
                value = _initial(value) or value
            if _pairs(value):
                self._entries(value, stmt, f"{prefix}{key}.", root)
            else:
                self._add(f"{prefix}{key}", value, stmt, root)

    def _add(self, name: str, value: ast.expr, stmt: ast.stmt, root: str) -> None:
        if name in self.mine:  # assigned again: the last assignment is the one that runs
            if literal(value) is None:
                self.reader.found.pop(self.mine[name], None)  # no longer a literal: no knob
            self.reader.add(self.mine[name], value, stmt, "ml_collections", replace=True)
            return
        before = set(self.reader.found)
        self.reader.add(name, value, stmt, "ml_collections", qualified=f"{root}.{name}")
        added = set(self.reader.found) - before
        if added:
            self.mine[name] = added.pop()


def _initial(call: ast.Call) -> ast.expr | None:
    """The dict a ``ConfigDict({...})`` or ``ConfigDict(dict(...))`` starts from, if any."""
    return call.args[0] if call.args else keyword(call, "initial_dictionary")


def _pairs(node: ast.expr | None) -> list[tuple[str, ast.expr]]:
    """The string-keyed entries of a dict literal or a ``dict(...)`` call of keywords."""
    if isinstance(node, ast.Dict):
        return [
            (k.value, v) for k, v in zip(node.keys, node.values, strict=True)
            if isinstance(k, ast.Constant) and isinstance(k.value, str)
        ]  # fmt: skip
    if isinstance(node, ast.Call) and call_name(node) == "dict" and not node.args:
        return [(k.arg, k.value) for k in node.keywords if k.arg is not None]
    return []
