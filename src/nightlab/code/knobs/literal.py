"""Writing a new value the way the old literal was written, in Python, YAML, JSON or TOML.

An experiment's diff should be exactly the numbers that changed, written as their author would:
``3e-4`` stays scientific, ``2**19`` stays a power, ``1_000_000`` keeps its underscores, a float
stays a float, quotes stay single or double. The file formats differ only in how they spell
booleans and strings; numbers are written by the same rules for all of them.
"""

from __future__ import annotations

import ast
import io
import json
import math
import re
import tokenize

from nightlab.code.knobs.model import KnobValue

_POWER = re.compile(r"^\s*(\d+)\s*\*\*\s*(\d+)\s*$")


def format_value(old_text: str, new_value: KnobValue, syntax: str = "python") -> str:
    """Source text for ``new_value`` in ``syntax`` ("python", "yaml", "json" or "toml"), written
    the way ``old_text`` was."""
    if syntax == "python":
        return format_literal(old_text, new_value)
    old = old_text.strip()
    if isinstance(new_value, (tuple, list)):  # [0.9, 0.98]: each number as its old one was written
        masked = re.sub(r"(^|(?<=\s))#[^\n]*", lambda m: " " * len(m.group()), old)  # a block list's comments
        elements = [m for m in re.finditer(r"[^\s,\[\]]+", masked) if m.group() != "-"]
        if len(elements) == len(new_value):
            out = old
            for match, value in reversed(list(zip(elements, new_value, strict=True))):
                out = out[: match.start()] + format_value(match.group(), value, syntax) + out[match.end() :]
            return out
        first = elements[0].group() if elements else "0"
        written = [format_value(first, v, syntax) for v in new_value]
        if syntax == "yaml" and old.startswith("-") and len(elements) > 1 and written:
            # a block list stays one: `layers:` then `- 1` at column 0 cannot take a flow list
            between = masked[elements[0].end() : elements[1].start()]
            return old[: elements[0].start()] + re.sub(r"[ \t]+\n", "\n", between).join(written)
        return "[" + ", ".join(written) + "]"
    if isinstance(new_value, bool):
        return "true" if new_value else "false"
    if isinstance(new_value, str):
        if syntax == "json" or old.startswith('"'):
            return json.dumps(new_value)
        if old.startswith("'"):
            return "'" + new_value.replace("'", "''") + "'"  # YAML's single-quote escape
        return new_value if re.fullmatch(r"[A-Za-z_][\w./-]*", new_value) else json.dumps(new_value)
    if isinstance(new_value, (int, float)) and not isinstance(new_value, bool):
        text = format_literal(old, new_value)
        if _POWER.match(text):  # 2**19 is Python only
            text = str(new_value)
        if syntax == "json":
            text = text.replace("_", "")
        if syntax == "yaml" and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", text):
            mantissa, exponent = re.split("[eE]", text)
            text = f"{mantissa}.0e{exponent}"  # PyYAML (YAML 1.1) reads 6e-4 as a string, 6.0e-4 as a float
        return text
    raise TypeError(f"cannot write {type(new_value).__name__} as a {syntax} value")


def format_literal(old_text: str, new_value: KnobValue) -> str:
    """Source text for ``new_value`` written the way ``old_text`` was.

    The style carries over: ``3e-4`` stays in scientific notation (while the value is small or
    large enough for that to read well), ``2**19`` stays a power, ``1_000_000`` keeps its
    underscores, a float stays a float even when the new value is whole, quotes stay single or
    double (a number written as a string, ``"256"``, stays a string), and a tuple keeps its brackets and separators element by element.
    """
    old = old_text.strip()
    if isinstance(new_value, bool):
        return "True" if new_value else "False"
    if isinstance(new_value, (tuple, list)):
        return _format_sequence(old_text, new_value)
    if isinstance(new_value, str):
        return _format_str(old, new_value)
    quote = old[:1] if old[:1] in "'\"" and len(old) > 1 and old[-1:] == old[:1] else ""
    if quote and isinstance(new_value, (int, float)):
        # A number its script reads from a string (int(os.getenv("HIDDEN", "256"))) stays one:
        # os.environ.setdefault("X", 0.5) raises TypeError, only a string may be stored there.
        return quote + format_literal(old[1:-1], new_value) + quote
    if isinstance(new_value, int):
        if _looks_float(old):
            return _format_float(old, float(new_value))
        return _format_int(old, new_value)
    if isinstance(new_value, float):
        return _format_float(old, new_value)
    raise TypeError(f"cannot write {type(new_value).__name__} as a knob literal")


class LineOffsets:
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


def comments_by_line(source: str) -> dict[int, list[tuple[int, str]]]:
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
        offsets = LineOffsets(stripped)
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


def _number(node: ast.expr) -> int | float | None:
    """A numeric literal, a negated one, an integer power such as ``2**19``, or a product or
    quotient of such (``1e-3 * 4``)."""
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
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
        return _product(node)
    return None


def _product(node: ast.BinOp) -> int | float | None:
    """The value of two numbers multiplied or divided (``default=1e-3 * 4``, the per-GPU rate
    times the GPUs; ``32 * 8``): a move writes the new number over the whole expression."""
    left, right = _number(node.left), _number(node.right)
    if left is None or right is None or (isinstance(node.op, ast.Div) and right == 0):
        return None
    value = left * right if isinstance(node.op, ast.Mult) else left / right
    return value if math.isfinite(value) else None


def literal(node: ast.expr) -> tuple[str, KnobValue] | None:
    """The kind and value of a literal a knob may hold, or None for anything else."""
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
