"""The knobs of a training script: its block of UPPER_CASE constants, found and rewritten.

A knob is a module-level assignment of a literal to an UPPER_CASE name::

    MATRIX_LR = 0.04        # learning rate for matrix parameters (Muon)
    ADAM_BETAS = (0.8, 0.95)
    WINDOW_PATTERN = "SSSL"
    TOTAL_BATCH_SIZE = 2**19

:func:`find_knobs` reads them with :mod:`ast` (values, exact source spans) and :mod:`tokenize`
(the comment beside each one). :func:`set_knobs` rewrites only the literals' text, so a file
keeps every comment, space and line of its author: the diff of an experiment is exactly the
numbers that changed, which is what a person reviewing the research branch wants to see.

Example::

    >>> src = "LR = 3e-4  # peak\\nDEPTH = 4\\n"
    >>> [k.name for k in find_knobs(src)]
    ['LR', 'DEPTH']
    >>> set_knobs(src, {"LR": 0.0006, "DEPTH": 6})
    'LR = 6e-4  # peak\\nDEPTH = 6\\n'
"""

from __future__ import annotations

import ast
import io
import math
import re
import tokenize
from dataclasses import dataclass

from nightlab.errors import UserError

_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_POWER = re.compile(r"^\s*(\d+)\s*\*\*\s*(\d+)\s*$")

KnobValue = object  # int | float | bool | str | tuple | list of numbers


@dataclass(frozen=True)
class Knob:
    """One constant of a script.

    ``line``/``col`` and ``end_line``/``end_col`` locate the literal (lines from 1, columns in
    characters from 0, end exclusive); ``start``/``end`` are the same span as offsets into the
    source text. ``text`` is the literal exactly as written, ``comment`` the trailing comment
    without its ``#`` (empty when there is none).
    """

    name: str
    value: KnobValue
    kind: str  # "int" | "float" | "bool" | "str" | "tuple" | "list"
    text: str
    line: int
    col: int
    end_line: int
    end_col: int
    start: int
    end: int
    comment: str = ""
    path: str = "train.py"


def find_knobs(source: str, path: str = "train.py") -> list[Knob]:
    """Every knob of ``source``, in file order.

    Only top-level statements count (a constant inside ``if`` or a function is not a knob the
    whole run sees). A name assigned twice keeps its last assignment, the one Python uses.
    Chained (``A = B = 1``) and unpacking assignments are skipped: one literal must belong to
    one name for an edit to mean one thing.
    """
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise UserError(f"{path}: not valid Python ({exc.msg}, line {exc.lineno}); fix the file") from None
    offsets = _LineOffsets(source)
    comments = _comments_by_line(source)
    found: dict[str, Knob] = {}
    for stmt in tree.body:
        target, value = _simple_assignment(stmt)
        if target is None or value is None or not _NAME.match(target):
            continue
        parsed = _literal(value)
        if parsed is None:
            continue
        kind, python_value = parsed
        start = offsets.offset(value.lineno, value.col_offset)
        end = offsets.offset(value.end_lineno, value.end_col_offset)
        end_line, end_col = value.end_lineno, end - offsets.line_start(value.end_lineno)
        stmt_end_line = stmt.end_lineno or end_line
        comment = ""
        for col, text in comments.get(stmt_end_line, []):
            if stmt_end_line != end_line or col >= end_col:
                comment = text
                break
        found.pop(target, None)  # a re-assignment moves the knob to its last position
        found[target] = Knob(
            name=target,
            value=python_value,
            kind=kind,
            text=source[start:end],
            line=value.lineno,
            col=start - offsets.line_start(value.lineno),
            end_line=end_line,
            end_col=end_col,
            start=start,
            end=end,
            comment=comment,
            path=path,
        )
    return sorted(found.values(), key=lambda k: k.start)


def knob_values(source: str, path: str = "train.py") -> dict[str, KnobValue]:
    """``{name: value}`` for every knob of ``source``."""
    return {k.name: k.value for k in find_knobs(source, path)}


def set_knobs(source: str, values: dict[str, KnobValue], path: str = "train.py") -> str:
    """``source`` with the named knobs' literals replaced; every other byte is unchanged.

    Raises :class:`UserError` for a name that is not a knob of the file, naming the knobs that
    are, so a typo in ``[scales.*] constants`` or a stale proposal is caught before a run; and
    for a value of another kind (a string for a number, a number for a bool, NaN), since the
    script would then run with a type its author never wrote.
    """
    knobs = {k.name: k for k in find_knobs(source, path)}
    unknown = [name for name in values if name not in knobs]
    if unknown:
        known = ", ".join(knobs) or "none"
        raise UserError(f"{path}: no knob named {', '.join(unknown)} (knobs found: {known})")
    for name, value in values.items():
        problem = _incompatible(knobs[name], value)
        if problem:
            raise UserError(f"{path}: {name} is {problem}; cannot set it to {value!r}")
    out = source
    for knob in sorted((knobs[n] for n in values), key=lambda k: k.start, reverse=True):
        new_text = format_literal(knob.text, values[knob.name])
        out = out[: knob.start] + new_text + out[knob.end :]
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _incompatible(knob: Knob, value: object) -> str:
    """Why ``value`` cannot replace ``knob``'s literal ("" when it can): the kind must stay."""
    what = f"a {knob.kind} knob ({knob.text})"
    if knob.kind == "bool":
        return "" if isinstance(value, bool) else what
    if knob.kind == "str":
        return "" if isinstance(value, str) else what
    if knob.kind in ("int", "float"):
        return "" if _is_number(value) else what
    ok = isinstance(value, (tuple, list)) and len(value) > 0 and all(_is_number(v) for v in value)
    return "" if ok else what


def format_literal(old_text: str, new_value: KnobValue) -> str:
    """Source text for ``new_value`` written the way ``old_text`` was.

    The style carries over: ``3e-4`` stays in scientific notation (while the value is small or
    large enough for that to read well), ``2**19`` stays a power, ``1_000_000`` keeps its
    underscores, a float stays a float even when the new value is whole, quotes stay single or
    double, and a tuple keeps its brackets and separators element by element.
    """
    old = old_text.strip()
    if isinstance(new_value, bool):
        return "True" if new_value else "False"
    if isinstance(new_value, (tuple, list)):
        return _format_sequence(old_text, new_value)
    if isinstance(new_value, str):
        return _format_str(old, new_value)
    if isinstance(new_value, int):
        if _looks_float(old):
            return _format_float(old, float(new_value))
        return _format_int(old, new_value)
    if isinstance(new_value, float):
        return _format_float(old, new_value)
    raise TypeError(f"cannot write {type(new_value).__name__} as a knob literal")


# ---------------------------------------------------------------------------------------------
# Reading


def _simple_assignment(stmt: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return stmt.target.id, stmt.value
    return None, None


def _number(node: ast.expr) -> int | float | None:
    """A numeric literal, a negated one, or an integer power such as ``2**19``."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _number(node.operand)
        if inner is None:
            return None
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exp = node.left, node.right
        if (
            isinstance(base, ast.Constant)
            and isinstance(exp, ast.Constant)
            and type(base.value) is int
            and type(exp.value) is int
            and 0 <= exp.value <= 64
        ):
            return base.value**exp.value
    return None


def _literal(node: ast.expr) -> tuple[str, KnobValue] | None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            return "bool", node.value
        if isinstance(node.value, str):
            return "str", node.value
    number = _number(node)
    if number is not None:
        return ("float" if isinstance(number, float) else "int"), number
    if isinstance(node, (ast.Tuple, ast.List)) and node.elts:
        items = [_number(e) for e in node.elts]
        if any(i is None for i in items):
            return None
        if isinstance(node, ast.Tuple):
            return "tuple", tuple(items)
        return "list", list(items)
    return None


class _LineOffsets:
    """Maps ast's (line, UTF-8 byte column) positions to offsets into the source string."""

    def __init__(self, source: str) -> None:
        self.lines = io.StringIO(source, newline="").readlines() or [""]
        self.starts: list[int] = []
        total = 0
        for line in self.lines:
            self.starts.append(total)
            total += len(line)
        self.starts.append(total)

    def line_start(self, line: int) -> int:
        return self.starts[line - 1]

    def offset(self, line: int, byte_col: int) -> int:
        text = self.lines[line - 1] if line - 1 < len(self.lines) else ""
        return self.starts[line - 1] + len(text.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def _comments_by_line(source: str) -> dict[int, list[tuple[int, str]]]:
    out: dict[int, list[tuple[int, str]]] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                out.setdefault(tok.start[0], []).append((tok.start[1], tok.string[1:].strip()))
    except (tokenize.TokenError, SyntaxError):  # pragma: no cover - ast already parsed the file
        pass
    return out


# ---------------------------------------------------------------------------------------------
# Writing


def _looks_float(text: str) -> bool:
    body = text.lstrip("+-").strip()
    if body.lower().startswith(("0x", "0o", "0b")):
        return False
    return any(c in body for c in ".eE") or body.lower() in ("inf", "nan")


def _format_int(old: str, value: int) -> str:
    power = _POWER.match(old)
    if power is not None:
        base = int(power.group(1))
        exp = _int_log(value, base)
        if exp is not None:
            spacing = " ** " if " " in old.strip() else "**"
            return f"{base}{spacing}{exp}"
    body = old.lstrip("+-")
    if body.lower().startswith("0x"):
        text = format(abs(value), "x" if body[1] == "x" else "X")
        return ("-" if value < 0 else "") + body[:2] + text
    if "_" in old and abs(value) >= 1000:
        return f"{value:_}"
    return str(value)


def _int_log(value: int, base: int) -> int | None:
    """``k`` with ``base**k == value``, if there is one."""
    if base < 2 or value < 1:
        return None
    exp, rest = 0, value
    while rest % base == 0:
        rest //= base
        exp += 1
    return exp if rest == 1 else None


def _format_float(old: str, value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        raise TypeError(f"cannot write {value} as a knob literal")
    if value == 0:
        return "0.0"
    old_sci = "e" in old.lower() and not old.lower().lstrip("+-").startswith("0x")
    shortest = repr(value)
    plain_reads_well = 1e-3 <= abs(value) < 1e6
    # Scientific notation where the author used it, unless the value is one a person would
    # write plainly (0.5, 12.0); and where repr itself needs it (1e-07).
    if (old_sci and not (0.1 <= abs(value) < 1000)) or ("e" in shortest and not plain_reads_well):
        return _scientific(value, upper="E" in old)
    if "e" in shortest:  # repr chose e-notation for a value that reads fine plainly
        return f"{value:.15f}".rstrip("0").rstrip(".") if not value.is_integer() else f"{value:.1f}"
    if "_" in old and abs(value) >= 1000 and value.is_integer():
        return f"{value:_.1f}"
    return shortest


def _scientific(value: float, upper: bool = False) -> str:
    """``6e-4`` rather than ``6.000000e-04``: the shortest mantissa that round-trips."""
    for digits in range(17):
        text = f"{value:.{digits}e}"
        if float(text) == value:
            break
    mantissa, exponent = text.split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}{'E' if upper else 'e'}{int(exponent)}"


def _format_str(old: str, value: str) -> str:
    match = re.match(r"^([rRbBuUfF]*)('''|\"\"\"|'|\")", old)
    prefix, quote = (match.group(1), match.group(2)) if match else ("", '"')
    raw = "r" in prefix.lower()
    if raw and quote not in value and not value.endswith("\\") and "\n" not in value:
        return f"{prefix}{quote}{value}{quote}"
    escaped = value.replace("\\", "\\\\")
    if len(quote) == 1:
        escaped = escaped.replace(quote, "\\" + quote).replace("\n", "\\n").replace("\r", "\\r")
    else:
        escaped = escaped.replace(quote[0], "\\" + quote[0])
    keep = "".join(c for c in prefix if c.lower() not in "rf")
    return f"{keep}{quote}{escaped}{quote}"


def _format_sequence(old_text: str, values: tuple | list) -> str:
    """Element-wise rewrite when the length is unchanged (separators kept), else a fresh one."""
    try:
        node = ast.parse(old_text.strip(), mode="eval").body
    except SyntaxError:
        node = None
    stripped = old_text.strip()
    if isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) == len(values):
        offsets = _LineOffsets(stripped)
        out = stripped
        spans = [
            (offsets.offset(e.lineno, e.col_offset), offsets.offset(e.end_lineno, e.end_col_offset))
            for e in node.elts
        ]
        for (a, b), value in sorted(zip(spans, values, strict=True), key=lambda p: p[0][0], reverse=True):
            out = out[:a] + format_literal(stripped[a:b], value) + out[b:]
        return out
    olds = [ast.get_source_segment(stripped, e) or "0" for e in node.elts] if node is not None else []
    items = [format_literal(olds[min(i, len(olds) - 1)] if olds else "0", v) for i, v in enumerate(values)]
    if isinstance(node, ast.List) or (node is None and stripped.startswith("[")):
        return "[" + ", ".join(items) + "]"
    body = ", ".join(items) + ("," if len(items) == 1 else "")
    parenthesised = stripped.startswith("(") or node is None
    return f"({body})" if parenthesised else body
