"""What every reader of Python knobs shares: turning a literal node into a :class:`Knob` with its
exact span and trailing comment, and the small questions asked of an ``ast`` node.

The knobs of one file come from several readers (:mod:`.python` for constants, settings, options
and fields; :mod:`.entry` for the defaults of the function a script runs; :mod:`.absl` for absl
flags and ml_collections configs). They share one :class:`Reader`, so a name taken by one is
qualified by the next, and every knob is built the same way whatever found it.
"""

from __future__ import annotations

import ast

from nightlab.code.knobs.callers import Callers
from nightlab.code.knobs.literal import KnobValue, LineOffsets, comments_by_line, literal
from nightlab.code.knobs.model import Knob


class Reader:
    """Turns literal nodes into knobs with their exact source spans and trailing comments.

    ``found`` holds the knobs by name; ``names`` the module's top-level assignments, which a
    choice list or a ``Literal`` alias may refer to. ``command`` is the run command (which
    method ``fire.Fire(Trainer)`` calls is on it: "" when unknown) and ``callers`` the calls to
    the file's classes from the other editable files (None when the file is read alone)."""

    def __init__(self, source: str, path: str, command: str = "", callers: Callers | None = None) -> None:
        self.source, self.path = source, path
        self.command, self.callers = command, callers
        self.offsets = LineOffsets(source)
        self.comments = comments_by_line(source)
        self.found: dict[str, Knob] = {}
        self.names: dict[str, ast.expr] = {}

    def add(self, name: str, node: ast.expr, stmt: ast.AST, source: str, replace: bool = False,
            qualified: str | None = None, choices: tuple[KnobValue, ...] = (),
            flags: tuple[str, ...] = (), selected_by: tuple[tuple[str, str], ...] = ()) -> Knob | None:  # fmt: skip
        """A knob for ``node``'s literal (nothing for any other expression); returns it, or None
        when none was added.

        A name already taken keeps its knob unless ``replace`` (a re-assignment of a constant);
        the newcomer then takes ``qualified`` when that is free. The trailing comment is the one
        on the last line of ``stmt``, after the literal."""
        parsed = literal(node)
        if parsed is None:
            return None
        if name in self.found and not replace:
            if qualified is None or qualified in self.found:
                return None
            name = qualified
        kind, value = parsed
        start = self.offsets.offset(node.lineno, node.col_offset)
        end = self.offsets.offset(node.end_lineno or node.lineno, node.end_col_offset or 0)
        end_line = node.end_lineno or node.lineno
        end_col = end - self.offsets.line_start(end_line)
        stmt_end = getattr(stmt, "end_lineno", None) or end_line
        comment = ""
        for col, text in self.comments.get(stmt_end, []):
            if stmt_end != end_line or col >= end_col:
                comment = text
                break
        self.found.pop(name, None)  # a re-assignment moves the knob to its last position
        self.found[name] = Knob(
            name=name,
            value=value,
            kind=kind,
            text=self.source[start:end],
            line=node.lineno,
            col=start - self.offsets.line_start(node.lineno),
            end_line=end_line,
            end_col=end_col,
            start=start,
            end=end,
            comment=comment,
            path=self.path,
            source=source,
            choices=choices,
            flags=flags,
            selected_by=selected_by,
        )
        return self.found[name]


def call_name(node: ast.expr) -> str:
    """The last part of a called or named thing: ``field`` for ``dataclasses.field(...)``."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def dotted_path(node: ast.expr) -> list[str] | None:
    """``["config", "model", "hidden"]`` for ``config.model.hidden``; None for anything else."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def simple_assignment(stmt: ast.stmt) -> tuple[str | None, ast.expr | None]:
    """``(name, value)`` of ``name = value`` or ``name: T = value``; ``(None, None)`` otherwise."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return stmt.target.id, stmt.value
    return None, None


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    """The value of a call's keyword argument ``name``, or None."""
    return next((k.value for k in call.keywords if k.arg == name), None)


def string_args(call: ast.Call) -> list[str]:
    """The call's positional arguments that are string literals, in order."""
    return [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]


def is_main_guard(stmt: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either side of the ``==``)."""
    if not isinstance(stmt, ast.If) or not isinstance(stmt.test, ast.Compare):
        return False
    parts = [stmt.test.left, *stmt.test.comparators]
    names = {p.id for p in parts if isinstance(p, ast.Name)}
    strings = {p.value for p in parts if isinstance(p, ast.Constant)}
    return names == {"__name__"} and strings == {"__main__"}


def main_block(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements of the top-level ``if __name__ == "__main__":`` blocks of ``body``."""
    return [s for stmt in body if is_main_guard(stmt) for s in stmt.body]  # type: ignore[attr-defined]


def as_annotated(node: ast.expr, annotation: ast.expr | None) -> ast.expr:
    """``node`` read as its annotation says: a whole number where ``float`` is declared
    (``weight_decay: float = 0``, ``type=float, default=0``) is the float it means, at the same
    place, so it is searched as one (an int knob at 0 searched 0..10: a weight decay or dropout of
    8); anything else unchanged."""
    floats = isinstance(annotation, ast.Name) and annotation.id == "float"
    if isinstance(annotation, ast.Subscript) and call_name(annotation.value) == "Optional":
        floats = isinstance(annotation.slice, ast.Name) and annotation.slice.id == "float"
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):  # float | None
        floats = any(isinstance(s, ast.Name) and s.id == "float" for s in (annotation.left, annotation.right))
    if floats and isinstance(node, ast.Constant) and type(node.value) is int:
        return ast.copy_location(ast.Constant(value=float(node.value)), node)
    if floats and isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = as_annotated(node.operand, annotation)
        return (
            node if inner is node.operand else ast.copy_location(ast.UnaryOp(op=node.op, operand=inner), node)
        )
    return node


def is_field_module(cls: ast.ClassDef) -> bool:
    """Whether ``cls`` is a module whose fields are its constructor's parameters, as a
    dataclass's are: a flax ``nn.Module`` or an equinox ``eqx.Module`` (``features: int = 256``,
    built as ``MLP(features=512)``). Told from a torch ``nn.Module`` by having annotated fields
    with defaults and no ``__init__`` of its own (a torch module sets its layers up there)."""
    module_base = any(call_name(b) == "Module" for b in cls.bases)
    init = any(isinstance(s, ast.FunctionDef) and s.name == "__init__" for s in cls.body)
    fields = any(isinstance(s, ast.AnnAssign) and s.value is not None for s in cls.body)
    return module_base and fields and not init
