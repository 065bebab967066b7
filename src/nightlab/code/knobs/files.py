"""Knobs in YAML, JSON and TOML config files: every scalar setting, named by its key path.

``optimizer: {lr: 3e-4}`` gives the knob ``optimizer.lr``, and so does TOML's inline table
``optimizer = {lr = 3e-4}``. Each knob records the exact span of
its value in the file, so rewriting it changes those characters and nothing else: comments,
order, quoting and indentation stay as their author wrote them (well-kept parsers read the
files; the span is found from their positions, so the file is never re-serialised). A list of
numbers written on one line (``betas: [0.9, 0.98]``), or as a block list one number a line
(``betas:`` then ``- 0.9`` and ``- 0.98``), or in JSON over several lines as ``json.dump(...,
indent=2)`` writes it, is a knob, searched element by element as a Python one
is; other lists, multi-line strings and nulls are not knobs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from nightlab.code.knobs.literal import LineOffsets
from nightlab.code.knobs.model import Knob, KnobValue
from nightlab.errors import UserError

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_YAML_ANCHOR = re.compile(r"&[^\s,\[\]{}]+[ \t]+")
_TOML_HEADER = re.compile(r"^\s*\[([^\[\]]+)\]\s*(?:#.*)?$")
_TOML_ARRAY_HEADER = re.compile(r"^\s*\[\[")
_TOML_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=\s*"""
)


def scalar_knob(
    name: str, value: KnobValue, text: str, start: int, end: int, path: str, source: str
) -> Knob | None:
    """The knob whose literal is ``text[start:end]``, with its line, column and trailing comment;
    None for a value that is not a knob (a list, a null, a multi-line string). Shared with the
    Hydra reader, whose defaults-list entries are literals of the same files."""
    kind = _kind(value)
    if kind is None:
        return None
    offsets = LineOffsets(text)
    line = text.count("\n", 0, start) + 1
    end_line = text.count("\n", 0, end) + 1
    rest = text[end : text.find("\n", end) if "\n" in text[end:] else len(text)]
    comment_at = rest.find("#")
    comment = rest[comment_at + 1 :].strip() if comment_at >= 0 else ""
    return Knob(
        name=name,
        value=value,
        kind=kind,
        text=text[start:end],
        line=line,
        col=start - offsets.line_start(line),
        end_line=end_line,
        end_col=end - offsets.line_start(end_line),
        start=start,
        end=end,
        comment=comment,
        path=path,
        source=source,
    )


def _kind(value: object) -> str | None:
    if isinstance(value, list):
        return "list" if _numbers(value) else None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str) and "\n" not in value:
        return "str"
    return None


def _numbers(value: list) -> bool:
    """A non-empty list of plain numbers (no booleans, no nested lists)."""
    return bool(value) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _native(value: object) -> KnobValue:
    """ruamel's and tomlkit's scalar subclasses as plain Python values."""
    if isinstance(value, list):
        return [_native(v) for v in value]
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


# -- YAML ----------------------------------------------------------------------------------------
def yaml_knobs(text: str, path: str) -> list[Knob]:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        data = YAML().load(text)
    except YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    offsets = LineOffsets(text)
    found = []
    for name, mapping, key, flow in _yaml_scalars(data, "", set()):
        line, col = mapping.lc.value(key)
        if (line, col) < tuple(mapping.lc.key(key)):  # an alias (decay: *x): the anchor's knob sets it
            continue
        start = _past_anchor(text, offsets.line_start(line + 1) + col)
        if isinstance(mapping[key], list) and text[start] == "-":  # a block list, one item a line
            end = _block_list_end(text, mapping[key], offsets)
            if end is None:
                continue
        elif isinstance(mapping[key], list):  # a flow list: [0.9, 0.98], on its line
            end = text.find("]", start) + 1
            if text[start] != "[" or end <= 0 or "\n" in text[start:end]:
                continue
        else:
            end = scalar_end(text, start, flow)
        knob = scalar_knob(name, _native(mapping[key]), text, start, end, path, "yaml")
        if knob is not None:
            found.append(knob)
    return found


def _past_anchor(text: str, start: int) -> int:
    """Where the value at ``start`` begins past its anchor (``wd: &x 0.1``): a move writes the
    number and keeps ``&x``, which the file's aliases (``decay: *x``) still name."""
    anchor = _YAML_ANCHOR.match(text, start)
    return anchor.end() if anchor else start


def _yaml_scalars(node: object, prefix: str, seen: set[int]) -> Iterator[tuple[str, object, object, bool]]:
    """Each scalar or list setting of ``node`` with the mapping that holds it. A key a mapping
    inherits through a merge (``<<: *base``) and a mapping met again through an alias
    (``model: *base``) are the anchor's settings, already read where the anchor is written."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if not isinstance(node, CommentedMap) or id(node) in seen:
        return
    seen.add(id(node))
    flow = bool(node.fa.flow_style())
    for key, value in node.items():
        if not isinstance(key, str) or key not in node.lc.data:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, CommentedMap):
            yield from _yaml_scalars(value, name + ".", seen)
        elif isinstance(value, CommentedSeq):  # not a top-level `defaults:`, Hydra's own list
            if _kind(list(value)) is not None and name != "defaults":
                yield name, node, key, flow
        elif _kind(value) is not None:
            yield name, node, key, flow


def _block_list_end(text: str, items: object, offsets: LineOffsets) -> int | None:
    """Where a block list of numbers (``- 0.9`` then ``- 0.98``, one a line) ends: after its
    last item; None when two items share a line or an item is not a plain number."""
    lines = [items.lc.item(i)[0] for i in range(len(items))]  # type: ignore[attr-defined]
    if len(set(lines)) != len(lines):
        return None
    end = 0
    for i, line in enumerate(lines):
        start = offsets.line_start(line + 1) + items.lc.item(i)[1]  # type: ignore[attr-defined]
        end = scalar_end(text, start, flow=False)
        if not _NUMBER.fullmatch(text[start:end].replace("_", "").lstrip("+")) and not _loose_number(
            text[start:end]
        ):
            return None
    return end


def _loose_number(text: str) -> bool:
    """A YAML number ``_NUMBER`` does not spell (``1e-3``, ``.5``, ``+1``)."""
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity")


def scalar_end(text: str, start: int, flow: bool) -> int:
    """Where the scalar starting at ``start`` ends: its closing quote, or the end of a plain
    scalar (before a comment, and in a flow mapping before ``,`` ``}`` ``]``)."""
    if text[start] in "\"'":
        return _quoted_end(text, start)
    line_end = text.find("\n", start)
    line_end = len(text) if line_end < 0 else line_end
    piece = text[start:line_end]
    comment = re.search(r"\s#", piece)
    if comment:
        piece = piece[: comment.start()]
    if flow:
        piece = re.split(r"[,}\]]", piece, maxsplit=1)[0]
    return start + len(piece.rstrip())


def _quoted_end(text: str, start: int) -> int:
    quote, i = text[start], start + 1
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            if quote == "'" and text[i + 1 : i + 2] == "'":  # '' is an escaped quote in YAML
                i += 2
                continue
            return i + 1
        i += 1
    return len(text)


# -- JSON ----------------------------------------------------------------------------------------
def json_knobs(text: str, path: str) -> list[Knob]:
    found: list[Knob] = []
    try:
        _JsonSpans(text, path, found).value(_skip(text, 0), "")
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    except IndexError:  # the text ran out inside a value: "string index out of range" said nothing
        where = (
            f"it ends inside a value, line {text.count(chr(10)) + 1}" if text.strip() else "the file is empty"
        )
        raise UserError(f"{path}: not valid JSON ({where})") from None
    return found


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


class _JsonSpans:
    """A small JSON reader that keeps where each scalar value is (the json module does not)."""

    def __init__(self, text: str, path: str, found: list[Knob]) -> None:
        self.text, self.path, self.found = text, path, found
        self.decoder = json.JSONDecoder()

    def value(self, i: int, name: str, record: bool = True) -> int:
        text = self.text
        if text[i] == "{":
            i = _skip(text, i + 1)
            if text[i] == "}":
                return i + 1
            while True:
                key, i = json.decoder.scanstring(text, i + 1)
                i = _skip(text, i)
                if text[i] != ":":
                    raise ValueError(f"expected ':' at offset {i}")
                i = self.value(_skip(text, i + 1), f"{name}.{key}" if name else key, record)
                i = _skip(text, i)
                if text[i] == "}":
                    return i + 1
                if text[i] != ",":
                    raise ValueError(f"expected ',' or '}}' at offset {i}")
                i = _skip(text, i + 1)
        if text[i] == "[":  # a list of numbers is a knob; any other is not
            start, i = i, _skip(text, i + 1)
            if text[i] == "]":
                return i + 1
            while True:
                i = _skip(text, self.value(i, name, record=False))
                if text[i] == "]":
                    if record and name:  # also as json.dump(indent=2) writes it, one number a line
                        knob = scalar_knob(
                            name, json.loads(text[start : i + 1]), text, start, i + 1, self.path, "json"
                        )
                        self.found.extend([knob] if knob is not None else [])
                    return i + 1
                if text[i] != ",":
                    raise ValueError(f"expected ',' or ']' at offset {i}")
                i = _skip(text, i + 1)
        value, end = self.decoder.raw_decode(text, i)
        if record and name:
            knob = scalar_knob(name, value, text, i, end, self.path, "json")
            if knob is not None:
                self.found.append(knob)
        return end


# -- TOML ----------------------------------------------------------------------------------------
def toml_knobs(text: str, path: str) -> list[Knob]:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        doc = tomlkit.parse(text).unwrap()
    except TOMLKitError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    found: list[Knob] = []
    table: list[str] | None = []
    offset = 0
    for line in text.splitlines(keepends=True):
        header = _TOML_HEADER.match(line)
        if _TOML_ARRAY_HEADER.match(line):
            table = None  # entries of an array of tables are not knobs
        elif header:
            table = _toml_key_path(header.group(1))
        elif table is not None and (key := _TOML_KEY.match(line)):
            start = offset + key.end()
            names = table + _toml_key_path(key.group(1))
            if text[start] == "{":  # opt = {lr = 3e-4, betas = [0.9, 0.95]}
                _inline_table(text, start, names, doc, path, found)
                offset += len(line)
                continue
            end = _array_end(text, start) if text[start] == "[" else scalar_end(text, start, flow=False)
            value = _lookup(doc, names)
            knob = (
                scalar_knob(".".join(names), value, text, start, end, path, "toml")
                if value is not None
                else None
            )
            if knob is not None:
                found.append(knob)
        offset += len(line)
    return found


_TOML_INLINE_KEY = re.compile(_TOML_KEY.pattern.removeprefix("^"))


def _inline_table(text: str, start: int, names: list[str], doc: object, path: str, found: list[Knob]) -> int:
    """Add the knobs of the TOML inline table opening at ``start`` (``{lr = 3e-4, betas = [0.9,
    0.95]}``, tables within it too), each named by its keys below ``names``; returns where the
    table closes. One line, as TOML writes it; a key it cannot read ends the table's knobs."""
    i = start + 1
    while i < len(text):
        while i < len(text) and text[i] in " \t,":
            i += 1
        key = _TOML_INLINE_KEY.match(text, i)
        if text[i : i + 1] == "}" or key is None:
            return i + 1
        keys, i = names + _toml_key_path(key.group(1)), key.end()
        if text[i : i + 1] == "{":
            i = _inline_table(text, i, keys, doc, path, found)
            continue
        end = _array_end(text, i) if text[i : i + 1] == "[" else scalar_end(text, i, flow=True)
        value = _lookup(doc, keys)
        knob = scalar_knob(".".join(keys), value, text, i, end, path, "toml") if value is not None else None
        if knob is not None:
            found.append(knob)
        i = end
    return i


def _array_end(text: str, start: int) -> int:
    """Where the TOML array opening at ``start`` closes, over as many lines as it spans (its
    comments and strings skipped): ``betas = [`` then ``0.9,`` and ``0.98,`` then ``]``."""
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char in "\"'":
            i = _quoted_end(text, i)
            continue
        if char == "#":
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        i += 1
        if depth == 0:
            return i
    return len(text)


def _toml_key_path(text: str) -> list[str]:
    return [part.strip().strip("\"'") for part in re.findall(r"""(?:"[^"]*"|'[^']*'|[^.]+)""", text)]


def _lookup(doc: object, names: list[str]) -> object:
    for name in names:
        if not isinstance(doc, dict) or name not in doc:
            return None
        doc = doc[name]
    return doc
