"""Knobs in Python files: where people keep the settings of a training script.

- ``constant``: a top-level assignment of a literal to an UPPER_CASE name, anywhere in the file
  (``MATRIX_LR = 0.04``), the autoresearch style;
- ``setting``: a lowercase top-level assignment of a literal in the file's leading block of
  settings: after the docstring and imports, up to the first statement that is neither an
  import nor an assignment (``batch_size = 12`` ... ``exec(open("configurator.py").read())``).
  A config file that is only assignments is all settings. Later lowercase assignments
  (``iter_num = 0`` in the middle of a script) are state, not settings;
- ``argparse``/``click``: the ``default=`` literal of ``parser.add_argument("--lr", ...)`` or
  ``@click.option("--lr", ...)``, named after the option (``dest=`` when given);
- ``dataclass``: the default of a field of a ``@dataclass`` class (``lr: float = 3e-4`` or
  ``field(default=3e-4)``).

The values a script declares an option may take travel with the knob as its ``choices``
(:mod:`.choices`): argparse ``choices=[...]``, click ``type=click.Choice([...])``, a field
annotated ``Literal["sgd", "adam"]``. The author wrote them down, so they are the space to search.

A name found twice keeps its first place; the later one is qualified (``TrainConfig.lr`` for a
field, ``--lr`` for an option), so every knob has one literal and an edit means one thing.
"""

from __future__ import annotations

import ast
import re

from nightlab.code.knobs.choices import annotated_choices, listed_choices
from nightlab.code.knobs.literal import KnobValue, LineOffsets, comments_by_line, literal
from nightlab.code.knobs.model import Knob
from nightlab.errors import UserError

_CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]*$")
_SETTING = re.compile(r"^[a-z][a-z0-9_]*$")


def python_knobs(source: str, path: str) -> list[Knob]:
    """Every knob of a Python file, in file order."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise UserError(f"{path}: not valid Python ({exc.msg}, line {exc.lineno}); fix the file") from None
    reader = _Reader(source, path)
    for stmt in tree.body:  # module-level names a choice list or a Literal alias may refer to
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            reader.names[stmt.targets[0].id] = stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            reader.names[stmt.target.id] = stmt.value
    settings = _leading_block(tree.body)
    for stmt in tree.body:
        name, value = _simple_assignment(stmt)
        if name is None or value is None:
            continue
        if _CONSTANT.match(name):
            reader.add(name, value, stmt, "constant", replace=True)
        elif stmt in settings and _SETTING.match(name) and not name.startswith("_"):
            reader.add(name, value, stmt, "setting", replace=True)
    # In file order, so the first of two knobs with one name keeps the plain name.
    nodes = sorted(
        (n for n in ast.walk(tree) if isinstance(n, (ast.Call, ast.ClassDef))),
        key=lambda n: (n.lineno, n.col_offset),
    )
    for node in nodes:
        if isinstance(node, ast.Call):
            _option(reader, node)
        elif any(_is_dataclass(d) for d in node.decorator_list):
            _fields(reader, node)
    return sorted(reader.found.values(), key=lambda k: k.start)


class _Reader:
    """Turns literal nodes into knobs with their exact source spans and trailing comments."""

    def __init__(self, source: str, path: str) -> None:
        self.source, self.path = source, path
        self.offsets = LineOffsets(source)
        self.comments = comments_by_line(source)
        self.found: dict[str, Knob] = {}
        self.names: dict[str, ast.expr] = {}

    def add(self, name: str, node: ast.expr, stmt: ast.AST, source: str, replace: bool = False,
            qualified: str | None = None, choices: tuple[KnobValue, ...] = (),
            flags: tuple[str, ...] = ()) -> None:  # fmt: skip
        parsed = literal(node)
        if parsed is None:
            return
        if name in self.found and not replace:
            if qualified is None or qualified in self.found:
                return
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
        )


def _leading_block(body: list[ast.stmt]) -> set[ast.stmt]:
    """The statements of the leading settings block (see the module docstring)."""
    block: set[ast.stmt] = set()
    for i, stmt in enumerate(body):
        if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # the module docstring
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            block.add(stmt)
            continue
        break
    return block


def _option(reader: _Reader, call: ast.Call) -> None:
    """``add_argument("--lr", default=...)`` or ``click.option("--lr", default=...)``."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in ("add_argument", "option"):
        return
    default = next((k.value for k in call.keywords if k.arg == "default"), None)
    if default is None:
        return
    flags = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    dest = next((k.value for k in call.keywords if k.arg == "dest"), None)
    long = next((f for f in flags if f.startswith("--")), None)
    if isinstance(dest, ast.Constant) and isinstance(dest.value, str):
        knob = dest.value
    elif long is not None:
        knob = long[2:].replace("-", "_")
    else:
        return  # a positional argument or a short flag only: no name a person would search
    source = "argparse" if name == "add_argument" else "click"
    choices = next((k.value for k in call.keywords if k.arg == "choices"), None)
    kind = next((k.value for k in call.keywords if k.arg == "type"), None)
    if choices is None and isinstance(kind, ast.Call) and _call_name(kind) == "Choice" and kind.args:
        choices = kind.args[0]  # click.Choice(["relu", "tanh"])
    listed = listed_choices(choices, reader.names)
    reader.add(knob, default, call, source, qualified=long, choices=listed, flags=tuple(flags))


def _fields(reader: _Reader, cls: ast.ClassDef) -> None:
    for stmt in cls.body:
        name, value = _simple_assignment(stmt)
        if name is None or value is None or name.startswith("_"):
            continue
        if isinstance(value, ast.Call) and _call_name(value) == "field":
            value = next((k.value for k in value.keywords if k.arg == "default"), None)
            if value is None:
                continue
        annotation = stmt.annotation if isinstance(stmt, ast.AnnAssign) else None
        allowed = annotated_choices(annotation, reader.names)
        reader.add(name, value, stmt, "dataclass", qualified=f"{cls.name}.{name}", choices=allowed)


def _is_dataclass(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return _call_name(target) == "dataclass"


def _call_name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _simple_assignment(stmt: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return stmt.target.id, stmt.value
    return None, None
