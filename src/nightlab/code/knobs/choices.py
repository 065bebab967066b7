"""The values a knob's author says it may take, read from the script without running it.

A string knob has no range to search; its author usually wrote the alternatives down somewhere:
argparse ``choices=[...]`` or ``click.Choice([...])`` (perhaps through a module-level list,
``choices=OPTIMIZERS``), a ``Literal["sgd", "adam"]`` annotation (perhaps ``Optional[...]``,
``Literal[...] | None``, ``Annotated[...]`` or an alias), or a trailing comment listing them
(``activation: gelu  # relu, gelu or silu``). Those are the space to search, so the user need not
repeat them in nightlab.toml. Anything computed (``choices=range(4)``, a list built by a
function) cannot be read without running the script, and is left out.
"""

from __future__ import annotations

import ast
import re

from nightlab.code.knobs.literal import KnobValue, literal

# How deep an alias chain is followed (``Opt = Literal[...]``, ``Choice = Opt``).
_MAX_ALIAS = 4
# A comment's lead-in before its list: "one of: a, b", "options: a | b", "e.g. a or b".
_LABEL = re.compile(
    r"^(?:(?:one|any)\s+of|options?|choices?|choose\s+(?:from|between)|either|values?|allowed"
    r"|possible\s+values?|can\s+be|supported|e\.?\s?g\.?,?)\s*[:=]?\s*",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(r"\s*(?:,|\||/|\bor\b)\s*")
_WORD = re.compile(r"^[A-Za-z_][\w.+-]*$")


def listed_choices(node: ast.expr | None, names: dict[str, ast.expr]) -> tuple[KnobValue, ...]:
    """The values of a literal list, tuple or set of scalars, or of a module-level name bound to
    one (``names``: the module's top-level assignments); none for anything else."""
    for _ in range(_MAX_ALIAS):
        if not isinstance(node, ast.Name) or node.id not in names:
            break
        node = names[node.id]
    if not isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return ()
    values = []
    for element in node.elts:
        parsed = literal(element)
        if parsed is None or parsed[0] in ("tuple", "list"):
            return ()
        values.append(parsed[1])
    return tuple(dict.fromkeys(values))


def annotated_choices(annotation: ast.expr | None, names: dict[str, ast.expr]) -> tuple[KnobValue, ...]:
    """The values a type annotation allows when it is a ``Literal``: directly, inside
    ``Optional``/``Union``/``Annotated``/``X | None``, through an alias, or quoted."""
    found: list[KnobValue] = []
    _collect(annotation, names, found, _MAX_ALIAS)
    return tuple(dict.fromkeys(found))


def _collect(node: ast.expr | None, names: dict[str, ast.expr], found: list[KnobValue], depth: int) -> None:
    if node is None or depth < 0:
        return
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # "Literal['a', 'b']"
        try:
            parsed = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return
        _collect(parsed, names, found, depth - 1)
    elif isinstance(node, ast.Name) and node.id in names:  # an alias
        _collect(names[node.id], names, found, depth - 1)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # Literal[...] | None
        _collect(node.left, names, found, depth)
        _collect(node.right, names, found, depth)
    elif isinstance(node, ast.Subscript):
        outer = _name(node.value)
        members = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if outer == "Literal":
            found.extend(listed_choices(ast.Tuple(elts=members, ctx=ast.Load()), {}))
        elif outer in ("Optional", "Union"):
            for member in members:
                _collect(member, names, found, depth)
        elif outer == "Annotated" and members:
            _collect(members[0], names, found, depth)


def comment_choices(value: KnobValue, comment: str) -> tuple[KnobValue, ...]:
    """Alternatives a trailing comment lists for a string knob (``# relu, gelu or silu``,
    ``# one of: adam | sgd``): only when the list is of plain words and holds the knob's own
    value, so a comment that merely describes the setting gives nothing."""
    if not isinstance(value, str) or not comment.strip():
        return ()
    text = comment.strip()
    # The whole comment, or what follows a description's colon ("MLP activation: relu, gelu").
    for candidate in (text, text.split(":", 1)[1] if ":" in text else ""):
        listed = _word_list(value, _LABEL.sub("", candidate.strip(), count=1))
        if listed:
            return listed
    return ()


def help_choices(value: KnobValue, text: str) -> tuple[KnobValue, ...]:
    """Alternatives an option's help lists in brackets for a string knob (diffusers' ``--lr_scheduler``:
    ``help='... Choose between ["linear", "cosine", "constant"]'``), holding the knob's value."""
    if not isinstance(value, str):
        return ()
    for inside in re.findall(r"[\[(]([^\[\]()]+)[\])]", text):
        listed = _word_list(value, inside)
        if listed:
            return listed
    return ()


def _word_list(value: str, text: str) -> tuple[KnobValue, ...]:
    text = text.strip().strip("[](){}.;").strip()
    parts = [p.strip().strip("'\"`") for p in _SEPARATOR.split(text)]
    parts = [p for p in parts if p]
    if not 2 <= len(parts) <= 12 or value not in parts or not all(_WORD.match(p) for p in parts):
        return ()
    return tuple(dict.fromkeys(parts))


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr  # typing.Literal
    return node.id if isinstance(node, ast.Name) else ""
