"""Knobs in settings dicts and namespaces: ``config = dict(lr=3e-4)``, ``HPARAMS = {"optim":
{"lr": 3e-4}}`` (``optim.lr``), ``args = argparse.Namespace(lr=3e-3)``, and the merges that build
one settings dict from another (``config = {**defaults, "lr": 1e-2}``).

A merge decides which literal applies: in ``{**defaults, "lr": 1e-2}`` the ``lr`` of ``defaults``
is replaced before any code reads it, so editing it changes nothing and an experiment on it
measures only noise. Such an overridden entry is no knob; the one that wins is, under the plain
name (``lr``). The same holds the other way round (``{"lr": 1e-3, **defaults}``: ``defaults``
wins when it sets ``lr``), for ``dict(defaults, lr=1e-2)`` and ``defaults | {"lr": 1e-2}``, and
through a chain of merges. A key that replaces a nested dict (``{**defaults, "optim": {...}}``)
replaces all of its entries. A spread of anything else (``**vars(args)``, ``**loaded``) cannot be
read: the literals around it stay knobs, as the values that apply when it does not set them.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass

from nightlab.code.knobs.model import Knob
from nightlab.code.knobs.reader import Reader, call_name

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

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.live: dict[str, dict[str, Knob]] = {}

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
    reader: Reader, tree: ast.Module, is_settings_name: Callable[[str], bool], known: set[int]
) -> None:
    """The literal keyword arguments of a class built into a variable named as settings,
    anywhere in the file: ``cfg = Config(lr=3e-4, batch_size=64)``, ``model_config =
    GPT2Config(n_layer=4)`` (``lr``, ``batch_size``, ``n_layer``; ``cfg.lr`` when the name is
    taken). The class's own defaults for those fields are no knobs (the call passes them), so
    without this the values that apply were searched nowhere. Read after every other reader: a
    literal another one found (``TrainingArguments(learning_rate=5e-5)``) keeps its knob."""
    taken = {(k.start, k.end) for k in reader.found.values()}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or not isinstance(node.value, ast.Call):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        target = targets[0] if len(targets) == 1 else None
        name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
        call = node.value
        if name and is_settings_name(name) and call_name(call)[:1].isupper() and id(call) not in known:
            _keywords(reader, call, node, "", name, taken)


def _keywords(
    reader: Reader, call: ast.Call, stmt: ast.stmt, prefix: str, owner: str, taken: set[tuple[int, int]]
) -> None:
    """The literal keywords of ``call`` as knobs ``prefix + keyword``, nested settings classes
    as dotted names (``Config(optim=OptimConfig(lr=1e-3))``: ``optim.lr``)."""
    for keyword in call.keywords:
        if keyword.arg is None:
            continue
        key = prefix + keyword.arg
        value = keyword.value
        if isinstance(value, ast.Call) and call_name(value)[:1].isupper():  # optim=OptimConfig(lr=...)
            _keywords(reader, value, stmt, key + ".", owner, taken)
            continue
        span = (
            reader.offsets.offset(value.lineno, value.col_offset),
            reader.offsets.offset(value.end_lineno or value.lineno, value.end_col_offset or 0),
        )
        if span not in taken:
            reader.add(key, value, stmt, "call", qualified=f"{owner}.{key}")
