"""Settings set on an object after it is made: ``cfg = Config(); cfg.lr = 3e-4``, or
``args = parser.parse_args(); args.lr = 1e-3`` (the value a script forces after parsing), or
``cfg = yaml.safe_load(f); cfg["optim"]["lr"] = 1e-3`` (a subscript path reads the same).

The assigned literal is the value the run uses, so it is the knob, named by its attribute path
below the object (``lr``; ``optim.lr`` for ``cfg.optim.lr = ...``; ``cfg.lr`` when the name is
taken by another setting). What it replaces is dead and no longer a knob: the ``default=`` of the
option of that name once ``parse_args()`` has run, the field's default of the class the object
was built from, or the keyword the call that built it passed. So does a value computed from the
object's other settings alone (CleanRL's ``args.batch_size = int(args.num_envs *
args.num_steps)``), which gives no knob itself. ``args.dropout = getattr(args, "dropout", 0.1)``
(fairseq's architectures) gives its fallback literal, unless an option of the file declares it. An experiment on a dead value measures only noise.

Read are the plain statements of the module (and its ``if __name__ == "__main__":`` block) and
of each function's body, in order; an assignment inside an ``if`` or a loop may not run, and is
left out, as is an attribute of an object not known as settings: one built by ``parse_args()``,
a namespace (``SimpleNamespace()``, ``EasyDict()``), or any object whose variable is named as
settings (``cfg``, ``config``, ``args``, ``hparams``). ``self.lr = 1e-3`` is a model's state,
not a setting, and what a distributed launch sets (``args.distributed = False``, ``args.gpu =
0``, ``args.dist_backend = "nccl"``) is the machine's.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable

from nightlab.code.knobs.literal import literal
from nightlab.code.knobs.model import Knob
from nightlab.code.knobs.reader import Reader, call_name, main_block

SOURCE = "attribute"
_PARSERS = ("parse_args", "parse_known_args", "parse_args_into_dataclasses", "parse")
_NAMESPACES = ("Namespace", "SimpleNamespace", "EasyDict", "edict", "AttrDict", "Box", "DotMap", "create")
# Readers whose knob an attribute assignment of the same name replaces, by where the object came from.
_PARSED = frozenset({"argparse", "click", "absl"})
_BUILT = frozenset({"dataclass", "class", "call", "dict", "constructor"})
# What a distributed launch sets on the parsed arguments (DeiT's and timm's init_distributed_mode:
# args.distributed = False, args.gpu = 0, args.dist_backend = "nccl"): the machine, not the
# method; flipping one breaks the run or changes nothing.
_MACHINE = re.compile(
    r"^(distributed|dist_\w+|\w*rank|gpus?|gpu_ids?|n_gpus?|num_gpus|world_size|world|devices?|cuda"
    r"|use_cuda|backend|ddp|use_ddp|is_master|master_\w+|is_main_process|main_process|node\w*)$",
    re.IGNORECASE,
)


def attribute_knobs(reader: Reader, tree: ast.Module, is_settings_name: Callable[[str], bool]) -> None:
    """Add the literals assigned to attributes of settings objects (see the module docstring),
    after every other reader, dropping the knobs they make dead."""
    classes = {s.name: s for s in tree.body if isinstance(s, ast.ClassDef)}
    module = _module_statements(tree)
    bodies: list[tuple[list[ast.stmt], dict[str, _Origin]]] = []
    roots = _roots(module, {}, classes, is_settings_name)
    bodies.append((module, roots))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            params = {a.arg: _Origin() for a in ast.walk(node.args) if isinstance(a, ast.arg)}
            inherited = {**roots, **{n: o for n, o in params.items() if is_settings_name(n)}}
            body = _plain(node.body)
            bodies.append((body, _roots(body, inherited, classes, is_settings_name)))
    taken = {(k.start, k.end) for k in reader.found.values()}
    mine: dict[tuple[str, str], str] = {}  # (object, attribute) -> the knob its last literal is
    for body, known in bodies:
        for stmt in body:
            _assignment(reader, stmt, known, taken, mine)


class _Origin:
    """Where a settings object came from: ``parsed`` by a command-line parser, or built by a
    statement (``stmt``) from a class of the file (``cls``); neither when unknown."""

    def __init__(
        self, parsed: bool = False, stmt: ast.stmt | None = None, cls: ast.ClassDef | None = None
    ) -> None:
        self.parsed, self.stmt, self.cls = parsed, stmt, cls

    def makes_dead(self, knob: Knob) -> bool:
        """Whether ``knob`` is a value this object's attribute of the same name replaces."""
        if knob.source in _PARSED:
            return self.parsed or (self.stmt is None and self.cls is None)
        if knob.source not in _BUILT:
            return False
        return any(
            span is not None and span.lineno <= knob.line <= (span.end_lineno or span.lineno)
            for span in (self.stmt, self.cls)
        )


def _module_statements(tree: ast.Module) -> list[ast.stmt]:
    out = tree.body + main_block(tree.body)
    return _plain(sorted(out, key=lambda s: (s.lineno, s.col_offset)))


def _plain(body: list[ast.stmt]) -> list[ast.stmt]:
    """``body`` with the statements of its ``with`` blocks in their place: they always run
    (``with open("config.yaml") as f: cfg = yaml.safe_load(f)``)."""
    out: list[ast.stmt] = []
    for stmt in body:
        out += _plain(stmt.body) if isinstance(stmt, (ast.With, ast.AsyncWith)) else [stmt]
    return out


def _roots(
    body: list[ast.stmt],
    inherited: dict[str, _Origin],
    classes: dict[str, ast.ClassDef],
    is_settings_name: Callable[[str], bool],
) -> dict[str, _Origin]:
    """The variables of ``body`` that hold a settings object, with where each came from."""
    roots = dict(inherited)
    for stmt in body:
        if not isinstance(stmt, (ast.Assign, ast.AnnAssign)) or stmt.value is None:
            continue
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if len(targets) != 1:
            continue
        target, value = targets[0], stmt.value
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Call) and call_name(value) in _PARSERS:
            # args, unknown = parser.parse_known_args(); model_args, training_args = parser.parse_args_into_dataclasses()
            roots.update({e.id: _Origin(parsed=True) for e in target.elts if isinstance(e, ast.Name)})
            continue
        if not isinstance(target, ast.Name):
            continue
        if isinstance(value, ast.Subscript):
            value = value.value  # parser.parse_known_args()[0]
        name = call_name(value) if isinstance(value, ast.Call) else ""
        if name in ("ConfigDict", "FrozenConfigDict"):
            roots.pop(target.id, None)  # ml_collections: read by .absl, the last assignment included
        elif name in _PARSERS:
            roots[target.id] = _Origin(parsed=True)
        elif is_settings_name(target.id) and _class_argument(value, classes):
            # tyro.cli(Args), simple_parsing.parse(Config): built from the file's class
            roots[target.id] = _Origin(stmt=stmt, cls=_class_argument(value, classes))
        elif name in _NAMESPACES or (name[:1].isupper() and is_settings_name(target.id)):
            roots[target.id] = _Origin(stmt=stmt, cls=classes.get(name))
        elif name and is_settings_name(target.id):  # args = get_args(): parsed somewhere, unknown how
            roots[target.id] = _Origin()
        elif is_settings_name(target.id) and isinstance(value, (ast.Dict, ast.Name, ast.Attribute)):
            roots[target.id] = _Origin(stmt=stmt)
        else:
            roots.pop(target.id, None)  # rebound to something else
    return roots


def _class_argument(value: ast.expr, classes: dict[str, ast.ClassDef]) -> ast.ClassDef | None:
    """The class of the file a call is given first (``tyro.cli(Args)``), or None."""
    if isinstance(value, ast.Call) and value.args and isinstance(value.args[0], ast.Name):
        return classes.get(value.args[0].id)
    return None


def assigned_path(target: ast.expr) -> list[str] | None:
    """``["cfg", "optim", "lr"]`` for ``cfg.optim.lr``, ``cfg["optim"]["lr"]`` or a mix of both;
    None for anything else."""
    keys: list[str] = []
    while isinstance(target, (ast.Attribute, ast.Subscript)):
        if isinstance(target, ast.Attribute):
            keys.insert(0, target.attr)
        elif isinstance(target.slice, ast.Constant) and isinstance(target.slice.value, str):
            keys.insert(0, target.slice.value)
        else:
            return None
        target = target.value
    return [target.id, *keys] if isinstance(target, ast.Name) else None


def _assignment(
    reader: Reader,
    stmt: ast.stmt,
    roots: dict[str, _Origin],
    taken: set[tuple[int, int]],
    mine: dict[tuple[str, str], str],
) -> None:
    """The knob of ``root.attr = literal`` when ``root`` holds a settings object."""
    if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
        return
    path = assigned_path(stmt.targets[0])
    if path is None or len(path) < 2 or path[0] not in roots:
        return
    value = stmt.value
    span = (
        reader.offsets.offset(value.lineno, value.col_offset),
        reader.offsets.offset(value.end_lineno or value.lineno, value.end_col_offset or 0),
    )
    if span in taken:
        return  # another reader's knob (an ml_collections ConfigDict's)
    origin, name = roots[path[0]], ".".join(path[1:])
    if _MACHINE.match(path[-1]):
        return
    fallback = _getattr_default(value, path)
    if fallback is not None:  # fairseq: args.dropout = getattr(args, "dropout", 0.1)
        if not any(
            k.source in _PARSED and k.name.lstrip("-").replace("-", "_") == name
            for k in reader.found.values()
        ):
            added = reader.add(name, fallback, stmt, SOURCE, qualified=f"{path[0]}.{name}")
            if added is not None:
                mine[(path[0], name)] = added.name
        return
    if literal(value) is None:
        # args.lr = scaled_lr: the default may still flow in (scaled_lr = args.lr * ...), so it
        # stays a knob; a literal set before is dead unless the new value reads the object.
        if not any(isinstance(n, ast.Name) and n.id == path[0] for n in ast.walk(value)):
            reader.found.pop(mine.pop((path[0], name), ""), None)
        elif _derived(value, path):  # CleanRL: args.batch_size = int(args.num_envs * args.num_steps)
            reader.found.pop(mine.pop((path[0], name), ""), None)
            _drop_replaced(reader, name, origin)
        return
    earlier = mine.pop((path[0], name), None)
    if earlier is not None:  # assigned again: the last assignment is the one that runs
        reader.found.pop(earlier, None)
    _drop_replaced(reader, name, origin)
    added = reader.add(name, value, stmt, SOURCE, qualified=f"{path[0]}.{name}")
    if added is not None:
        mine[(path[0], name)] = added.name
        if origin.parsed or (origin.stmt is None and origin.cls is None):  # a parser's, maybe elsewhere
            reader.found[added.name] = dataclasses.replace(added, replaces=(name,))


def _drop_replaced(reader: Reader, name: str, origin: _Origin) -> None:
    """Drop the knobs an assignment to the attribute ``name`` of a settings object from
    ``origin`` makes dead (a parser option's default, a field's, a keyword of the building call)."""
    for knob in list(reader.found.values()):
        plain = knob.name.lstrip("-").replace("-", "_")
        if (plain == name or plain.endswith("." + name)) and origin.makes_dead(knob):
            del reader.found[knob.name]


def _derived(value: ast.expr, path: list[str]) -> bool:
    """Whether ``value`` is computed from the object's other settings alone (its attributes,
    literals, calls such as ``int``): ``args.batch_size = int(args.num_envs * args.num_steps)``
    overwrites the default whatever it was, so the default is dead. Any other variable may carry
    the old value in (``args.lr = scaled_lr``), and so may the attribute itself (``args.lr =
    args.lr * 2``): then the default stays a knob."""
    called: set[int] = set()
    for node in ast.walk(value):
        if isinstance(node, ast.Call):
            func = node.func
            while isinstance(func, ast.Attribute):
                func = func.value  # math.ceil(...): math is a function's module, not a value
            called.add(id(func))
    for node in ast.walk(value):
        if isinstance(node, ast.Name) and node.id != path[0] and id(node) not in called:
            return False
        if isinstance(node, (ast.Attribute, ast.Subscript)) and assigned_path(node) == path:
            return False
    return True


def _getattr_default(value: ast.expr, path: list[str]) -> ast.expr | None:
    """The literal of ``args.x = getattr(args, "x", 0.1)`` (fairseq's model architectures fill
    in what no option set): it applies unless an option of the file declares ``x``, whose default
    the object then holds."""
    if not (isinstance(value, ast.Call) and call_name(value) == "getattr" and len(value.args) == 3):
        return None
    owner, attribute, default = value.args
    if len(path) != 2 or not (isinstance(owner, ast.Name) and owner.id == path[0]):
        return None
    if not (isinstance(attribute, ast.Constant) and attribute.value == path[1]):
        return None
    return default if literal(default) is not None else None
