"""Knobs in settings dicts and namespaces: ``config = dict(lr=3e-4)``, ``HPARAMS = {"optim":
{"lr": 3e-4}}`` (``optim.lr``), ``args = argparse.Namespace(lr=3e-3)``, and the merges that build
one settings dict from another (``config = {**defaults, "lr": 1e-2}``).

A merge decides which literal applies: in ``{**defaults, "lr": 1e-2}`` the ``lr`` of ``defaults``
is replaced before any code reads it, so editing it changes nothing and an experiment on it
measures only noise. Such an overridden entry is no knob; the one that wins is, under the plain
name (``lr``). The same holds the other way round (``{"lr": 1e-3, **defaults}``: ``defaults``
wins when it sets ``lr``), for ``dict(defaults, lr=1e-2)`` and ``defaults | {"lr": 1e-2}``, and
through a chain of merges, and for a later top-level ``config["lr"] = 1e-2`` or
``config.update(lr=1e-2)``. A key that replaces a nested dict (``{**defaults, "optim": {...}}``)
replaces all of its entries. A spread of anything else (``**vars(args)``, ``**loaded``) cannot be
read: the literals around it stay knobs, as the values that apply when it does not set them.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass

from nightlab.code.knobs.callers import FileIndex, import_source, module_of
from nightlab.code.knobs.model import Knob
from nightlab.code.knobs.reader import Reader, call_name, is_field_module

SOURCE = "dict"
# Calls that build a settings mapping from keywords: dict(...), argparse.Namespace(...),
# types.SimpleNamespace(...), ml_collections' ConfigDict is read by .absl.
_BUILDERS = ("dict", "Namespace", "SimpleNamespace")


@dataclass(frozen=True)
class _Key:
    """One ``key: value`` of a mapping literal, in order."""

    key: str
    value: ast.expr


@dataclass(frozen=True)
class _Spread:
    """``**name`` (or ``dict(name)``) in a mapping literal; ``name`` is "" when it is not a
    plain variable, whose keys cannot be known."""

    name: str


class SettingsDicts:
    """Reads the top-level settings mappings of one file in order, remembering each one's live
    entries (key path -> knob), so a later merge can drop the entries it overrides."""

    def __init__(self, reader: Reader, outer: SettingsDicts | None = None) -> None:
        self.reader = reader  # outer: the module's mappings, which a function's code may merge
        self.live: dict[str, dict[str, Knob]] = {k: dict(v) for k, v in (outer.live if outer else {}).items()}

    def read(self, name: str, value: ast.expr, stmt: ast.stmt, named_as_settings: bool) -> None:
        """The knobs of ``name = value`` when the value is a mapping literal and the name says
        settings (``named_as_settings``) or it merges a settings mapping read before."""
        items = _items(value)
        if items is None:
            return
        if not named_as_settings and not any(isinstance(i, _Spread) and i.name in self.live for i in items):
            return
        live: dict[str, Knob] = {}
        for index, item in enumerate(items):
            if isinstance(item, _Spread):
                live.update(self.live.get(item.name, {}))
                continue
            later = [i.name for i in items[index + 1 :] if isinstance(i, _Spread)]
            if any(_covers(self.live.get(other, {}), item.key) for other in later):
                continue  # a later **defaults replaces it
            for path in [p for p in live if p == item.key or p.startswith(item.key + ".")]:
                self._drop(live.pop(path))  # it replaces an entry spread before it
            live.update(self._entries(item.key, item.value, stmt, name))
        self.live[name] = live

    def override(self, stmt: ast.stmt) -> None:
        """A later top-level statement that sets entries of a settings mapping read before:
        ``config["lr"] = 1e-2`` or ``config.update(lr=1e-2)`` / ``config.update({"lr": 1e-2})``.
        The entries it replaces are no knobs (the value set here applies); its literals are."""
        name, items = _overriding(stmt)
        if name not in self.live:
            return
        live = self.live[name]
        for item in items:
            for path in [p for p in live if p == item.key or p.startswith(item.key + ".")]:
                self._drop(live.pop(path))
            live.update(self._entries(item.key, item.value, stmt, name))

    def _entries(self, key: str, node: ast.expr, stmt: ast.stmt, owner: str) -> dict[str, Knob]:
        """The knobs of one entry: a literal, or a nested mapping's literals as dotted paths."""
        nested = _items(node)
        if nested is not None:
            out: dict[str, Knob] = {}
            for item in nested:
                if isinstance(item, _Key):
                    out.update(self._entries(f"{key}.{item.key}", item.value, stmt, owner))
            return out
        knob = self.reader.add(key, node, stmt, SOURCE, qualified=f"{owner}.{key}")
        return {key: knob} if knob is not None else {}

    def _drop(self, knob: Knob) -> None:
        if self.reader.found.get(knob.name) is knob:
            del self.reader.found[knob.name]


def function_settings(
    reader: Reader, tree: ast.Module, is_settings_name: Callable[[str], bool], module: SettingsDicts
) -> None:
    """Settings mappings a function builds: ``def get_config(): config = dict(lr=1e-3); ...``, or
    returns (``def get_config(): return {"lr": 1e-3}``, in a function named as settings), read
    statement by statement in the function's own body as the module's are, so a later
    ``config["lr"] = args.lr`` there takes the literal's place; a merge of a ``module`` mapping
    (``config = {**DEFAULTS, "lr": 1e-2}`` in ``main``) drops the entries it replaces."""
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        mappings = SettingsDicts(reader, module)
        for stmt in function.body:
            mappings.override(stmt)
            if isinstance(stmt, ast.Return) and stmt.value is not None and is_settings_name(function.name):
                mappings.read(function.name, stmt.value, stmt, True)
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if len(targets) == 1 and isinstance(targets[0], ast.Name) and stmt.value is not None:
                    mappings.read(targets[0].id, stmt.value, stmt, is_settings_name(targets[0].id))


def _overriding(stmt: ast.stmt) -> tuple[str, list[_Key]]:
    """``(mapping, entries)`` that ``stmt`` sets: ``cfg["lr"] = 1e-2`` or ``cfg.update(...)``;
    ``("", [])`` for any other statement (and for an update whose keys cannot be read)."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target, keys = stmt.targets[0], []
        while (  # config["optim"]["lr"] = 1e-2 sets the entry optim.lr
            isinstance(target, ast.Subscript)
            and isinstance(target.slice, ast.Constant)
            and isinstance(target.slice.value, str)
        ):
            keys.insert(0, target.slice.value)
            target = target.value
        if keys and isinstance(target, ast.Name):
            return target.id, [_Key(".".join(keys), stmt.value)]
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        call = stmt.value
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr == "update" and isinstance(func.value, ast.Name):
            items = [_items(a) for a in call.args] + [_items(ast.Call(ast.Name("dict"), [], call.keywords))]
            if all(i is not None and all(isinstance(e, _Key) for e in i) for i in items):
                return func.value.id, [e for i in items for e in i or [] if isinstance(e, _Key)]
    return "", []


def _covers(live: dict[str, Knob], key: str) -> bool:
    return any(p == key or p.startswith(key + ".") for p in live)


def _items(node: ast.expr) -> list[_Key | _Spread] | None:
    """The entries of a mapping literal in order, or None when ``node`` is not one."""
    if isinstance(node, ast.Dict):
        out: list[_Key | _Spread] = []
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                out.append(_Spread(value.id if isinstance(value, ast.Name) else ""))
            elif isinstance(key, ast.Constant) and isinstance(key.value, str):
                out.append(_Key(key.value, value))
        return out
    if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
        if call_name(node) not in _BUILDERS:
            return None
        if call_name(node) == "dict" and len(node.args) > 1 or call_name(node) != "dict" and node.args:
            return None
        out = [_Spread(a.id if isinstance(a, ast.Name) else "") for a in node.args]
        for keyword in node.keywords:
            if keyword.arg is None:
                out.append(_Spread(keyword.value.id if isinstance(keyword.value, ast.Name) else ""))
            else:
                out.append(_Key(keyword.arg, keyword.value))
        return out
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # defaults | {"lr": 1e-2}
        left = [_Spread(node.left.id)] if isinstance(node.left, ast.Name) else _items(node.left)
        right = _items(node.right)
        return None if left is None or right is None else left + right
    return None


def built_settings(
    reader: Reader,
    tree: ast.Module,
    is_settings_name: Callable[[str], bool],
    known: set[int],
    classes: dict[str, set[str]],
) -> None:
    """The literal keyword arguments of a class built into a variable, anywhere in the file,
    when the variable is named as settings (``cfg = Config(lr=3e-4, batch_size=64)``,
    ``model_config = GPT2Config(n_layer=4)``: ``lr``, ``batch_size``, ``n_layer``; ``cfg.lr`` when
    the name is taken), and the keywords that set a default of one of the editable files' own
    classes (``classes``: class name -> its parameters with a default), whatever the variable
    (``model = MLP(16, hidden=128)``: ``hidden``; not ``d_in=16``, which has no default: a size
    the data sets), also where the object is passed on rather than assigned
    (``tyro.cli(Config, default=Config(lr=1e-3))``). The class's own defaults for them are no knobs (the call passes them), so
    without this the values that apply were searched nowhere. Read after every other reader: a
    call of a well-known training API (``known``: ``TrainingArguments(...)``) gives only the
    arguments :mod:`.calls` reads, never ``output_dir`` or ``logging_steps``."""
    taken = {(k.start, k.end) for k in reader.found.values()}
    passed = {  # tyro.cli(Config, default=Config(lr=1e-3)), trainer.fit(Model(hidden=128))
        id(a)
        for n in (ast.walk(tree) if classes else ())
        if isinstance(n, ast.Call)
        for a in [*n.args, *(k.value for k in n.keywords)]
    }
    for node in ast.walk(tree):  # a call whose object is used: passed on, not built and dropped
        if isinstance(node, ast.Call) and id(node) in passed and isinstance(node.func, ast.Name):
            if node.func.id in classes and id(node) not in known:
                _keywords(reader, node, node, "", node.func.id, taken, only=classes[node.func.id])
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or not isinstance(node.value, ast.Call):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        target = targets[0] if len(targets) == 1 else None
        name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
        call = node.value
        if not name or not call_name(call)[:1].isupper() or id(call) in known:
            continue
        if is_settings_name(name):
            _keywords(reader, call, node, "", name, taken)
        elif isinstance(call.func, ast.Name) and call.func.id in classes:
            _keywords(reader, call, node, "", name, taken, only=classes[call.func.id])


def _keywords(
    reader: Reader,
    call: ast.Call,
    stmt: ast.stmt,
    prefix: str,
    owner: str,
    taken: set[tuple[int, int]],
    only: set[str] | None = None,
) -> None:
    """The literal keywords of ``call`` as knobs ``prefix + keyword``, nested settings classes as
    dotted names (``Config(optim=OptimConfig(lr=1e-3))``: ``optim.lr``). With ``only`` (a class of
    the editable files, built into any variable), the keywords in it, and no boolean: the class
    may be a dataset, whose ``train=True`` selects the data, not the method."""
    for keyword in call.keywords:
        if keyword.arg is None or (only is not None and keyword.arg not in only):
            continue
        key = prefix + keyword.arg
        value = keyword.value
        if only is not None and (
            isinstance(value, ast.Call) or isinstance(getattr(value, "value", None), bool)
        ):
            continue  # of a class of any role: no switch (train=True selects the data), no nested call
        if isinstance(value, ast.Call) and call_name(value)[:1].isupper():  # optim=OptimConfig(lr=...)
            _keywords(reader, value, stmt, key + ".", owner, taken)
            continue
        span = (
            reader.offsets.offset(value.lineno, value.col_offset),
            reader.offsets.offset(value.end_lineno or value.lineno, value.end_col_offset or 0),
        )
        if span not in taken:
            reader.add(key, value, stmt, "call", qualified=f"{owner}.{key}")


def user_classes(tree: ast.Module, path: str, others: dict[str, FileIndex] | None) -> dict[str, set[str]]:
    """The classes a file may build that the editable files define, by the name the file calls
    them (its own top-level classes, and those it imports by name from another editable file),
    each with its parameters that have a default: a dataclass's fields with a value, else its
    ``__init__``'s keyword defaults."""
    out = {s.name: _defaulted(s) for s in tree.body if isinstance(s, ast.ClassDef)}
    modules = {module_of(other): index for other, index in (others or {}).items() if other != path}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and import_source(path, node) in modules:
            index = modules[import_source(path, node)]
            defined = {s.name: s for s in index.tree.body if isinstance(s, ast.ClassDef)}
            for alias in node.names:
                if alias.name in defined:
                    out[alias.asname or alias.name] = _defaulted(defined[alias.name])
    return {name: params for name, params in out.items() if params}


def _defaulted(cls: ast.ClassDef) -> set[str]:
    """A class's parameters that have a default (see :func:`user_classes`)."""
    if any(call_name(d) == "dataclass" for d in cls.decorator_list) or is_field_module(cls):
        return {
            s.target.id
            for s in cls.body
            if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None
        }
    init = next((s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
    if init is None:
        return set()
    args = init.args
    positional = [*args.posonlyargs, *args.args]
    with_default = positional[len(positional) - len(args.defaults) :] if args.defaults else []
    keyword_only = [a for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
    return {a.arg for a in [*with_default, *keyword_only]}
