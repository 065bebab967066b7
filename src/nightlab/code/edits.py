"""Proposals -> file changes: scope checks, SEARCH/REPLACE blocks, whole files, syntax checks.

An edit that cannot be applied is refused with an :class:`~nightlab.errors.EditError` whose
message is written for the agent that made it: which edit, why it failed, and the nearest
lines of the file with their numbers, so an LLM can fix its block on the next try.

Matching is strict first and forgiving only where that cannot pick the wrong place: a SEARCH
block must occur exactly once; failing that, it may match once when trailing whitespace is
ignored, and failing that, once when its indentation differs uniformly from the file's (the
replacement is then re-indented to fit). Any ambiguity is an error, never a guess.

Example::

    >>> edit = Edit(path="train.py", search="LR = 0.01", replace="LR = 0.02")
    >>> apply_edits({"train.py": "LR = 0.01\\n"}, [edit], editable=["*.py"])
    {'train.py': 'LR = 0.02\\n'}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from nightlab.errors import EditError
from nightlab.paths import CONFIG_NAME, matches, normalize
from nightlab.types import Edit

_CONTEXT_LINES = 12  # at most this many file lines are quoted in a "not found" message


# -- paths and scope ------------------------------------------------------------------------
def _scoped_path(number: int, path: str, editable: Sequence[str], frozen: Sequence[str]) -> str:
    try:
        clean = normalize(path)
    except ValueError as exc:
        raise EditError(f"edit {number} ({path}): {exc}; only the editable files may change") from None
    allowed = ", ".join(editable)
    if clean == CONFIG_NAME or matches(clean, frozen):
        raise EditError(
            f"edit {number} ({clean}): {clean} is frozen; only the editable files ({allowed}) may change"
        )
    if not matches(clean, editable):
        raise EditError(
            f"edit {number} ({clean}): {clean} is outside the editable files ({allowed}); edit only those"
        )
    return clean


# -- applying edits ---------------------------------------------------------------------------
def apply_edits(
    files: Mapping[str, str],
    edits: Sequence[Edit],
    editable: Sequence[str],
    frozen: Sequence[str] = (),
) -> dict[str, str]:
    """Apply ``edits`` in order to ``files`` (path -> text); return the new text of every changed file.

    A path outside ``editable`` (or inside ``frozen``, or nightlab.toml) is refused. A whole-file
    edit (``search`` None) may create a new file if its path is editable. Edits to one file
    see the result of the earlier ones. Files left identical are not returned.
    """
    current = dict(files)
    for number, edit in enumerate(edits, 1):
        path = _scoped_path(number, edit.path, editable, frozen)
        if edit.search is None:
            current[path] = edit.replace
        elif path not in current:
            raise EditError(
                f"edit {number} ({path}): {path} does not exist; to create it, send the whole file "
                "without a SEARCH block"
            )
        else:
            current[path] = _replace_once(number, path, current[path], edit.search, edit.replace)
    return {p: text for p, text in current.items() if files.get(p) != text}


def _replace_once(number: int, path: str, text: str, search: str, replace: str) -> str:
    where = f"edit {number} ({path})"
    if not search.strip():
        raise EditError(
            f"{where}: the SEARCH block is empty; quote the lines to replace, or send the whole file"
        )
    starts = _find_all(text, search)
    if len(starts) == 1:
        return text[: starts[0]] + replace + text[starts[0] + len(search) :]
    if len(starts) > 1:
        numbers = ", ".join(str(text.count("\n", 0, s) + 1) for s in starts[:8])
        raise EditError(
            f"{where}: SEARCH block found {len(starts)} times in {path} (starting at lines {numbers}); "
            "it must match exactly once: add a few surrounding lines to make it unique"
        )
    lines = text.splitlines(keepends=True)
    wanted = _trim_blank(search.splitlines())
    new = _trim_blank(replace.splitlines())
    # Tolerance 1: trailing whitespace. Tolerance 2: a uniform indentation shift.
    for tolerant, label in (
        (_match_rstrip, "ignoring trailing whitespace"),
        (_match_indent, "ignoring indentation"),
    ):
        hits = [
            (i, indent)
            for i in range(len(lines) - len(wanted) + 1)
            if (indent := tolerant(lines, i, wanted)) is not None
        ]
        if len(hits) == 1:
            start, indent = hits[0]
            return _splice(lines, start, len(wanted), _reindent(new, _common_indent(wanted), indent))
        if len(hits) > 1:
            numbers = ", ".join(str(i + 1) for i, _ in hits[:8])
            raise EditError(
                f"{where}: SEARCH block not found exactly, and {label} it matches {len(hits)} places "
                f"(lines {numbers}); copy the lines exactly from {path}, with a few surrounding lines"
            )
    raise EditError(_not_found_message(where, path, lines, wanted))


def _find_all(text: str, search: str) -> list[int]:
    starts, pos = [], text.find(search)
    while pos != -1:
        starts.append(pos)
        pos = text.find(search, pos + 1)
    return starts


def _trim_blank(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _common_indent(lines: Iterable[str]) -> str:
    indents = [_indent_of(line) for line in lines if line.strip()]
    if not indents:
        return ""
    common = indents[0]
    for indent in indents[1:]:
        while not indent.startswith(common):
            common = common[:-1]
    return common


def _match_rstrip(lines: list[str], start: int, wanted: list[str]) -> str | None:
    """The block's indentation when ``wanted`` matches at ``start`` up to trailing whitespace."""
    for k, want in enumerate(wanted):
        if lines[start + k].rstrip() != want.rstrip():
            return None
    return _common_indent(wanted)


def _match_indent(lines: list[str], start: int, wanted: list[str]) -> str | None:
    """The file's indentation of the block when ``wanted`` matches at ``start`` after re-indenting."""
    window = [line.rstrip("\r\n") for line in lines[start : start + len(wanted)]]
    if window[0].strip() != wanted[0].strip():  # cheap rejection before the full comparison
        return None
    file_indent, want_indent = _common_indent(window), _common_indent(wanted)
    for have, want in zip(window, wanted, strict=True):
        if not have.strip() and not want.strip():
            continue
        if have.rstrip()[len(file_indent) :] != want.rstrip()[len(want_indent) :]:
            return None
    return file_indent


def _reindent(lines: list[str], old: str, new: str) -> list[str]:
    """Shift ``lines`` written at indentation ``old`` to indentation ``new``."""
    if old == new:
        return lines
    out = []
    for line in lines:
        if not line.strip():
            out.append("")
        elif line.startswith(old):
            out.append(new + line[len(old) :])
        else:  # less indented than the SEARCH block: keep the same relative outdent
            outdent = len(old) - len(_indent_of(line))
            out.append(new[: max(0, len(new) - outdent)] + line.lstrip(" \t"))
    return out


def _splice(lines: list[str], start: int, count: int, block: list[str]) -> str:
    last = lines[start + count - 1]
    newline = "\r\n" if lines[start].endswith("\r\n") else "\n"
    tail = newline if last.endswith("\n") else ""
    body = newline.join(block) + tail if block else ""
    return "".join(lines[:start]) + body + "".join(lines[start + count :])


def _trigrams(line: str) -> frozenset[str]:
    text = f" {' '.join(line.split())} "
    return frozenset(text[i : i + 3] for i in range(len(text) - 2))


def _closest_window(lines: list[str], wanted: list[str]) -> int:
    """Start of the run of ``len(wanted)`` file lines most like ``wanted``, line by line.

    Similarity is the Jaccard index of character trigrams per aligned line pair: robust to
    typos and renamed variables, and linear in the file size (a character-level difflib ratio
    per window took minutes on a 2,000-line file).
    """
    have = [_trigrams(line) for line in lines]
    want = [_trigrams(line) for line in wanted]

    def similarity(a: frozenset[str], b: frozenset[str]) -> float:
        return len(a & b) / len(a | b) if a or b else 1.0

    scores = [
        sum(similarity(have[i + k], w) for k, w in enumerate(want)) for i in range(len(lines) - len(want) + 1)
    ]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def _not_found_message(where: str, path: str, lines: list[str], wanted: list[str]) -> str:
    if not lines:
        return f"{where}: SEARCH block not found: {path} is empty; send the whole file instead"
    size = min(len(wanted), len(lines))
    best = _closest_window(lines, wanted[:size])
    shown = lines[best : best + min(size, _CONTEXT_LINES)]
    quoted = "\n".join(f"{best + k + 1:>5} | {line.rstrip()}" for k, line in enumerate(shown))
    message = (
        f"{where}: SEARCH block not found. The closest lines in {path} are "
        f"{best + 1}-{best + len(shown)}:\n{quoted}"
    )
    for k, (have, want) in enumerate(zip(lines[best : best + size], wanted, strict=False)):
        if have.strip() != want.strip():
            message += (
                f"\nFirst difference: SEARCH line {k + 1} is {want.strip()!r} but line {best + k + 1} "
                f"of {path} is {have.strip()!r}."
            )
            break
    return message + "\nCopy the SEARCH lines exactly as they are in the file."


# -- checks -----------------------------------------------------------------------------------
def python_syntax_error(path: str, text: str) -> str | None:
    """One line describing the first syntax error of a .py file, or None (also for other files).

    Checked before anything runs, so a typo costs a message to the agent, not a training slot.
    """
    if not path.endswith(".py"):
        return None
    # As bytes, as Python reads the file: a file that is not UTF-8 (its bytes held as lone
    # surrogates) compiles under its coding line, and is refused as Python would without one.
    source = text if text.isascii() else text.encode("utf-8", "surrogateescape")
    try:
        compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        # The line from the text checked: Python fills exc.text for some errors by reading
        # ``path`` from disk, which is the current directory's file, not this proposal's.
        lines = text.splitlines()
        line = lines[exc.lineno - 1].strip() if exc.lineno and 0 < exc.lineno <= len(lines) else ""
        where = f"line {exc.lineno}" if exc.lineno else "(unknown line)"
        return f"{path} {where}: {exc.msg}" + (f": {line}" if line else "")
    except ValueError as exc:  # e.g. a NUL byte in the source
        return f"{path}: {exc}"
    return None


def syntax_errors(files: Mapping[str, str]) -> list[str]:
    """:func:`python_syntax_error` for every file, errors only."""
    return [err for path, text in files.items() if (err := python_syntax_error(path, text))]
