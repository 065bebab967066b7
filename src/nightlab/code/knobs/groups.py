"""An optimizer's parameter groups as knobs, however the list of groups is built.

Expert scripts rarely write every group out: they build the list with a comprehension
(``[{"params": p, "weight_decay": wd} for p, wd in ((decay, 0.1), (no_decay, 0.0))]``), append in
a loop over a literal table (``for params, wd in [(decay, 0.05), (rest, 0.0)]:
groups.append({...})``), or scale the base rate for one group (``{"params": head, "lr": LR *
0.1}``). Each of these holds literals that set a group's value as surely as a literal written in
the dict, so each is a knob, named after the group's index in ``optimizer.param_groups``
(``group1.weight_decay``); a literal inside a comprehension's dict applies to every group it
builds (``groups.lr``); the literal factor of a scaled value is ``group1.lr_scale`` (a divisor,
``group1.lr_div``). Where the index of a group cannot be known (a loop over something that is
not a literal), the groups after it give no knob, because a name must say which group it sets.

The list and its groups may be variables assigned once before the call in the scopes the call
sees; a name bound any other way (twice, as an argument) is unsure and gives nothing.
"""

from __future__ import annotations

import ast

from nightlab.code.knobs.literal import literal

_Env = dict[str, ast.expr]
# One group: its label ("group0", or "groups" when a literal is shared), its dict, and what the
# loop variables it uses hold for it.
_Group = tuple[int | None, ast.expr, _Env]
_SCALED = (ast.Mult, ast.Div)


def group_arguments(
    listed: ast.expr | None, call: ast.Call, scopes: list[ast.AST], params: set[str]
) -> list[tuple[str, str, ast.expr]]:
    """The ``(label, parameter, literal)`` triples of the parameter groups ``listed`` (an
    optimizer's first argument) that set one of ``params``."""
    groups: list[_Group] = []
    seen: set[int] = set()
    appended = False
    if isinstance(listed, ast.Name):
        name = listed.id
        listed = assigned(name, call, scopes, (ast.List, ast.Tuple, ast.ListComp, ast.BinOp))
        if isinstance(listed, ast.List) and not listed.elts:  # groups = []; groups.append({...})
            groups, appended = _appended(name, call, scopes), True
    if not appended and listed is not None:
        groups = _listed(listed, call, scopes)
    out: list[tuple[str, str, ast.expr]] = []
    for index, group, env in groups:
        shared = _shared(group, groups)
        if isinstance(group, ast.Name):  # decay = {"params": ..., "weight_decay": 0.1}; [decay, rest]
            group = assigned(group.id, call, scopes, (ast.Dict, ast.Call)) or group
        for key, value in group_items(group):
            if key not in params:
                continue
            node, bound = _resolve(value, env)
            label = f"group{index}" if index is not None and (bound or not shared) else "groups"
            found = _knob(key, node)
            if found is None or id(found[1]) in seen or (key == "weight_decay" and is_zero(found[1])):
                continue
            seen.add(id(found[1]))
            out.append((f"{label}.{found[0]}", key, found[1]))
    return out


def set_by_every_group(listed: ast.expr | None, call: ast.Call, scopes: list[ast.AST]) -> set[str]:
    """The parameters every group of ``listed`` sets, when the groups are all written out
    (``[{"params": head, "lr": 1e-3}, {"params": body, "lr": 1e-4}]``, lists joined with ``+``
    too): the optimizer's own keyword for them (``lr=3e-4``) is a default no group takes, so it
    is no knob. Empty when any group may be missing (a comprehension, a variable, a loop)."""
    if isinstance(listed, ast.Name):
        listed = assigned(listed.id, call, scopes, (ast.List, ast.Tuple, ast.BinOp))
    elements = _concatenated(listed) if listed is not None else []
    if not elements or any(isinstance(e, (ast.Starred, ast.ListComp)) for e in elements):
        return set()
    keys: set[str] | None = None
    for group in elements:
        if isinstance(group, ast.Name):
            group = assigned(group.id, call, scopes, (ast.Dict, ast.Call)) or group
        items = group_items(group)
        if not items:
            return set()
        keys = {k for k, _ in items} if keys is None else keys & {k for k, _ in items}
    return (keys or set()) - {"params"}


def _resolve(value: ast.expr, env: _Env) -> tuple[ast.expr, bool]:
    """``value`` with the loop variables it uses replaced by what they hold for this group
    (``"lr": LR * mult`` over ``("head", 10.0)``), and whether any was."""
    if isinstance(value, ast.Name) and value.id in env:
        return env[value.id], True
    if isinstance(value, ast.BinOp):
        left, left_bound = _resolve(value.left, env)
        right, right_bound = _resolve(value.right, env)
        if left_bound or right_bound:
            return ast.BinOp(left=left, op=value.op, right=right), True
    return value, False


def _shared(group: ast.expr, groups: list[_Group]) -> bool:
    """Whether one dict literal stands for several groups (a comprehension's or a loop's)."""
    return sum(1 for _, g, _ in groups if g is group) > 1


def _knob(key: str, node: ast.expr) -> tuple[str, ast.expr] | None:
    """``(key, literal)`` for a literal value; ``(key_scale, factor)`` for ``LR * 0.1``
    (``key_div`` for ``LR / 10``); None for anything else."""
    if literal(node) is not None:
        return key, node
    if isinstance(node, ast.BinOp) and isinstance(node.op, _SCALED):
        sides = [node.right] if isinstance(node.op, ast.Div) else [node.left, node.right]
        numbers = [s for s in sides if _is_number(s)]
        other = node.left if numbers and numbers[0] is node.right else node.right
        if len(numbers) == 1 and literal(other) is None:
            return f"{key}_{'div' if isinstance(node.op, ast.Div) else 'scale'}", numbers[0]
    return None


def _is_number(node: ast.expr) -> bool:
    parsed = literal(node)
    return parsed is not None and parsed[0] in ("int", "float")


def _listed(node: ast.expr, call: ast.Call, scopes: list[ast.AST]) -> list[_Group]:
    """The groups of a list literal (a comprehension among its elements counts its own) or a
    comprehension."""
    if isinstance(node, ast.ListComp):
        return _comprehension(node, 0, call, scopes)[0]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # [{...}] + [{...} for ...]
        node = ast.List(elts=_concatenated(node), ctx=ast.Load())
    if not isinstance(node, (ast.List, ast.Tuple)):
        return []
    out: list[_Group] = []
    index: int | None = 0
    for element in node.elts:
        if isinstance(element, ast.Starred) or index is None:
            break  # the indices after it are unknown
        if isinstance(element, ast.ListComp):
            more, index = _comprehension(element, index, call, scopes)
            out += more
            continue
        out.append((index, element, {}))
        index += 1
    return out


def _concatenated(node: ast.expr) -> list[ast.expr]:
    """The elements of lists joined with ``+``, a comprehension as one element; anything else
    (a variable, a call) as a starred element, since how many groups it holds is unknown."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _concatenated(node.left) + _concatenated(node.right)
    if isinstance(node, (ast.List, ast.Tuple)):
        return list(node.elts)
    return [node] if isinstance(node, ast.ListComp) else [ast.Starred(value=node, ctx=ast.Load())]


def _comprehension(
    node: ast.ListComp, first: int, call: ast.Call, scopes: list[ast.AST]
) -> tuple[list[_Group], int | None]:
    """The groups ``[{...} for target in table]`` builds from index ``first``, and the index after
    them (None when the table is not a literal: how many groups it makes is unknown)."""
    if len(node.generators) != 1 or node.generators[0].ifs or node.generators[0].is_async:
        return [], None
    generator = node.generators[0]
    rows = _rows(generator.iter, call, scopes)
    if rows is None:
        return [(None, node.elt, {}), (None, node.elt, {})], None  # a shared literal is still one
    return [(first + i, node.elt, _bind(generator.target, row)) for i, row in enumerate(rows)], first + len(
        rows
    )


def _rows(node: ast.expr, call: ast.Call, scopes: list[ast.AST]) -> list[ast.expr] | None:
    """The items a loop over ``node`` takes, when they can be read: a literal list or tuple (or a
    variable assigned one), or ``zip`` of such."""
    if isinstance(node, ast.Name):
        node = assigned(node.id, call, scopes, (ast.List, ast.Tuple)) or node
    if isinstance(node, (ast.List, ast.Tuple)):
        return None if any(isinstance(e, ast.Starred) for e in node.elts) else list(node.elts)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "zip"
        and not node.keywords
    ):
        columns = [_rows(a, call, scopes) for a in node.args]
        if not columns or any(c is None for c in columns):
            return None
        return [ast.Tuple(elts=list(row), ctx=ast.Load()) for row in zip(*columns, strict=False)]
    return None


def _bind(target: ast.expr, row: ast.expr) -> _Env:
    """What each loop variable holds for ``row``: ``p, wd`` over ``(decay, 0.1)``."""
    if isinstance(target, ast.Name):
        return {target.id: row}
    if isinstance(target, (ast.Tuple, ast.List)) and isinstance(row, (ast.Tuple, ast.List)):
        if len(target.elts) == len(row.elts):
            env: _Env = {}
            for part, value in zip(target.elts, row.elts, strict=True):
                env.update(_bind(part, value))
            return env
    return {}


def _appended(name: str, call: ast.Call, scopes: list[ast.AST]) -> list[_Group]:
    """The groups ``name.append({...})`` adds before ``call``, in the statements of the scope
    that assigned ``name = []``, a ``for`` over a literal table adding one per row; an append in
    any other block (``if``, a loop over something else) ends what can be indexed."""
    scope = next((s for s in scopes if _binds(s, name)), None)
    if scope is None:
        return []
    before = (call.lineno, call.col_offset)
    out: list[_Group] = []
    for stmt in getattr(scope, "body", []):
        if (stmt.lineno, stmt.col_offset) >= before:
            break
        if isinstance(stmt, ast.Assign) and [ast.dump(t) for t in stmt.targets] == [
            ast.dump(ast.Name(name, ast.Store()))
        ]:
            continue  # groups = []: the assignment itself
        dicts = _appends(stmt, name)
        if dicts:
            out += [(len(out), d, {}) for d in dicts]
            continue
        if isinstance(stmt, ast.For) and not stmt.orelse:
            inner = [d for s in stmt.body for d in _appends(s, name)]
            rows = _rows(stmt.iter, call, scopes)
            if (
                inner
                and rows is not None
                and all(_appends(s, name) or not _mentions(s, name) for s in stmt.body)
            ):
                out += [(len(out), d, _bind(stmt.target, row)) for row in rows for d in inner]
                continue
        if _mentions(stmt, name):
            break  # added to some other way: the indices after it are unknown
    return out


def _appends(stmt: ast.stmt, name: str) -> list[ast.expr]:
    """The dicts ``name.append(d)`` or ``name.extend([d, ...])`` adds in ``stmt``; [] otherwise."""
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return []
    func = stmt.value.func
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == name):
        return []
    args = stmt.value.args
    if func.attr == "append" and len(args) == 1:
        return [args[0]]
    if func.attr == "extend" and len(args) == 1 and isinstance(args[0], (ast.List, ast.Tuple)):
        return list(args[0].elts)
    return []


def _mentions(stmt: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(stmt))


def _binds(scope: ast.AST, name: str) -> bool:
    return any(
        isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store)
        for stmt in getattr(scope, "body", [])
        for n in ast.walk(stmt)
    )


def assigned(name: str, use: ast.AST, scopes: list[ast.AST], kinds: tuple[type, ...]) -> ast.expr | None:
    """The value of ``name`` at ``use``: the one assignment ``name = <kinds>`` of the first scope
    that binds the name, before ``use``; None when that scope binds it more than once or any
    other way (a loop, ``+=``, an argument), since then which value reaches the call is unsure."""
    for scope in scopes:
        binds: list[ast.AST] = []
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            binds += [a for a in ast.walk(scope.args) if isinstance(a, ast.arg) and a.arg == name]
        stack = list(ast.iter_child_nodes(scope))
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue  # a scope of its own
            if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                stack.extend(g.iter for g in node.generators)  # its own variables are its own
                continue
            if isinstance(node, ast.Name) and node.id == name and not isinstance(node.ctx, ast.Load):
                binds.append(node)
            stack.extend(ast.iter_child_nodes(node))
        if not binds:
            continue
        if len(binds) != 1 or not isinstance(binds[0], ast.Name):
            return None
        before = (getattr(use, "lineno", 0), getattr(use, "col_offset", 0))
        for stmt in ast.walk(scope):
            target = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and target == [binds[0]]:
                ok = isinstance(stmt.value, kinds) and (stmt.lineno, stmt.col_offset) < before
                return stmt.value if ok else None
        return None
    return None


def is_zero(node: ast.expr) -> bool:
    """A group's ``"weight_decay": 0.0``: the no-decay group (biases, norms, gains) an author
    makes to keep those parameters out of decay, not a value to search."""
    parsed = literal(node)
    return parsed is not None and parsed[0] in ("int", "float") and parsed[1] == 0


def group_items(node: ast.expr) -> list[tuple[str, ast.expr]]:
    """The (key, value) pairs of one parameter group written as ``{"params": ..., "lr": 1e-3}``
    or ``dict(params=..., lr=1e-3)``; nothing for a group built any other way."""
    if isinstance(node, ast.Dict):
        return [
            (key.value, value)
            for key, value in zip(node.keys, node.values, strict=True)
            if isinstance(key, ast.Constant) and isinstance(key.value, str)
        ]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "dict"
        and not node.args
    ):
        return [(k.arg, k.value) for k in node.keywords if k.arg is not None]
    return []
