"""Parsing a model's answer into a description, a hypothesis and :class:`Edit` objects.

The answer format (the protocol the prompt teaches)::

    Description: one line saying what changes
    Hypothesis: a short paragraph saying why it should help

    train.py
    <<<<<<< SEARCH
    LR = 0.01
    =======
    LR = 0.02
    >>>>>>> REPLACE

A block whose SEARCH part is empty replaces the whole file. Models wrap blocks in code fences,
bold the path or prefix it with ``File:``; all of that is tolerated. A reasoning model served
without a reasoning parser (Ollama, llama.cpp, LM Studio with Qwen3 or DeepSeek-R1) puts its
thoughts in the answer as ``<think>...</think>``, often with draft descriptions and draft
blocks: they are left out before parsing (:func:`without_reasoning`), so only the answer after
them is proposed. Anything that cannot be
understood raises :class:`AnswerError` with a message the model can act on (which block, what
is missing), because that message goes straight back into the conversation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nightlab.agents.base import bounded_hypothesis
from nightlab.errors import EditError
from nightlab.types import Edit

_SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_DESCRIPTION = re.compile(r"^[\s*_#>-]*description[\s*_]*:[\s*_]*(.*)$", re.IGNORECASE)
_HYPOTHESIS = re.compile(r"^[\s*_#>-]*hypothesis[\s*_]*:[\s*_]*(.*)$", re.IGNORECASE)
_PATH_PREFIX = re.compile(r"^(?:#+\s*)?(?:file(?:name)?|path)\s*:\s*", re.IGNORECASE)
_THOUGHT_OPEN = re.compile(r"\A\s*<(think|thinking|reasoning)>", re.IGNORECASE)
_THOUGHT_CLOSE = re.compile(r"</(think|thinking|reasoning)>", re.IGNORECASE)

MAX_DESCRIPTION = 200


class AnswerError(EditError):
    """The answer breaks the protocol; the message tells the model what to fix."""


@dataclass
class ParsedAnswer:
    """What a model proposed, before the edits are applied."""

    description: str
    hypothesis: str
    edits: list[Edit] = field(default_factory=list)


def parse_answer(text: str, editable_paths: list[str] | None = None) -> ParsedAnswer:
    """Split an answer into description, hypothesis and edits.

    ``editable_paths`` (the editable files by name) lets a block without a path line belong to
    the only editable file, which small models often leave out.
    """
    lines = without_reasoning(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    description = _description(lines)
    hypothesis = _hypothesis(lines)
    edits = _blocks(lines, editable_paths or [])
    if not edits:
        raise AnswerError(
            "your answer has no SEARCH/REPLACE block: give the file path on its own line, then "
            "'<<<<<<< SEARCH', the exact old lines, '=======', the new lines, '>>>>>>> REPLACE'"
        )
    return ParsedAnswer(description=description, hypothesis=hypothesis, edits=edits)


def without_reasoning(text: str, strict: bool = True) -> str:
    """The answer without the reasoning a model wrote before it.

    Leading ``<think>``/``<thinking>``/``<reasoning>`` blocks are dropped, and so is everything
    before a first closing tag that has no opening one (chat templates that open the block in
    the prompt, as DeepSeek-R1's does). An answer that ends inside its reasoning has nothing to
    propose: with ``strict`` that raises :class:`AnswerError`, else it gives ``""``.
    """
    rest = text
    while opened := _THOUGHT_OPEN.match(rest):
        closing = re.compile(rf"</{opened.group(1)}>", re.IGNORECASE).search(rest, opened.end())
        if closing is None:
            if strict:
                raise AnswerError(
                    f"your answer ended inside its <{opened.group(1)}> reasoning, with no answer "
                    "after it: think more briefly, then give the Description line and the blocks"
                )
            return ""
        rest = rest[closing.end() :]
    closing = _THOUGHT_CLOSE.search(rest)
    if closing is not None and not re.search(r"<(think|thinking|reasoning)>", rest[: closing.start()], re.I):
        rest = rest[closing.end() :]
    return rest.lstrip("\n")


def _description(lines: list[str]) -> str:
    for line in lines:
        if _SEARCH.match(line):
            break
        match = _DESCRIPTION.match(line)
        if match:
            value = match.group(1).strip().strip("*_").strip()
            if value:
                return value[:MAX_DESCRIPTION]
    raise AnswerError("your answer has no 'Description: ...' line; start the answer with one")


def _hypothesis(lines: list[str]) -> str:
    """The ``Hypothesis:`` paragraph: its line plus the following ones up to a blank line or a block."""
    for i, line in enumerate(lines):
        if _SEARCH.match(line):
            return ""
        match = _HYPOTHESIS.match(line)
        if not match:
            continue
        parts = [match.group(1).strip()]
        for j in range(i + 1, len(lines)):
            more = lines[j]
            if not more.strip() or _SEARCH.match(more) or _FENCE.match(more) or _DESCRIPTION.match(more):
                break
            if _starts_block(lines, j + 1):  # the block's path line, written without a blank line first
                break
            parts.append(more.strip())
        return bounded_hypothesis(" ".join(p for p in parts if p).strip("*_ "))
    return ""


def _starts_block(lines: list[str], j: int) -> bool:
    """True when a SEARCH marker follows at ``j``, past any fence lines."""
    while j < len(lines) and _FENCE.match(lines[j]):
        j += 1
    return j < len(lines) and bool(_SEARCH.match(lines[j]))


def _clean_path(line: str) -> str | None:
    """A path line as models write it (``**train.py**``, ``File: `train.py` ``) or None."""
    candidate = _PATH_PREFIX.sub("", line.strip().strip("*_").strip())
    candidate = candidate.strip().strip("*`'\"").strip().rstrip(":").strip("*`'\"").strip()
    if not candidate or any(c.isspace() for c in candidate) or len(candidate) > 200:
        return None
    if _DESCRIPTION.match(candidate) or _HYPOTHESIS.match(candidate):
        return None
    if "." not in candidate and "/" not in candidate:
        return None
    return candidate.removeprefix("./")


def _path_before(lines: list[str], start: int, stop: int) -> str | None:
    """The last path-looking line between the previous block's end and this block's start."""
    for line in reversed(lines[stop:start]):
        if not line.strip() or _FENCE.match(line):
            continue
        return _clean_path(line)
    return None


def _blocks(lines: list[str], editable_paths: list[str]) -> list[Edit]:
    edits: list[Edit] = []
    last_path: str | None = None
    after_block = 0
    i = 0
    while i < len(lines):
        if _DIVIDER.match(lines[i]) and _looks_like_block_part(lines, i):
            raise AnswerError(f"block {len(edits) + 1}: '=======' without a '<<<<<<< SEARCH' line before it")
        if _REPLACE.match(lines[i]):
            raise AnswerError(
                f"block {len(edits) + 1}: '>>>>>>> REPLACE' without a '<<<<<<< SEARCH' line before it"
            )
        if not _SEARCH.match(lines[i]):
            i += 1
            continue
        number = len(edits) + 1
        path = _path_before(lines, i, after_block) or last_path
        if path is None and len(editable_paths) == 1:
            path = editable_paths[0]
        if path is None:
            raise AnswerError(
                f"block {number}: no file path; put the path (e.g. {editable_paths[0] if editable_paths else 'train.py'}) "
                "alone on the line before '<<<<<<< SEARCH'"
            )
        search, replace, i = _read_block(lines, i + 1, number, path)
        if search is not None and not search.strip():
            raise AnswerError(
                f"block {number} ({path}): the SEARCH part holds only blank lines; copy real lines "
                "from the file, or leave SEARCH empty to replace the whole file"
            )
        edits.append(Edit(path=path, search=search, replace=replace))
        last_path = path
        after_block = i
    return edits


def _looks_like_block_part(lines: list[str], i: int) -> bool:
    """A stray divider is only an error when a REPLACE marker follows it (else it is markdown)."""
    for line in lines[i + 1 :]:
        if _SEARCH.match(line):
            return False
        if _REPLACE.match(line):
            return True
    return False


def _read_block(lines: list[str], i: int, number: int, path: str) -> tuple[str | None, str, int]:
    """Read one block after its SEARCH marker: (search or None for whole file, replace, next index)."""
    old: list[str] = []
    while True:
        if i >= len(lines):
            raise AnswerError(f"block {number} ({path}): '=======' missing after the SEARCH lines")
        line = lines[i]
        if _DIVIDER.match(line):
            break
        if _SEARCH.match(line) or _REPLACE.match(line):
            raise AnswerError(
                f"block {number} ({path}): expected '=======' between the SEARCH and the REPLACE lines"
            )
        old.append(line)
        i += 1
    i += 1
    new: list[str] = []
    while True:
        if i >= len(lines):
            raise AnswerError(f"block {number} ({path}): '>>>>>>> REPLACE' missing at the end of the block")
        line = lines[i]
        if _REPLACE.match(line):
            break
        if _SEARCH.match(line) or _DIVIDER.match(line):
            raise AnswerError(
                f"block {number} ({path}): '>>>>>>> REPLACE' missing before the next marker; "
                "close every block before starting another"
            )
        new.append(line)
        i += 1
    search = "".join(line + "\n" for line in old) if old else None
    replace = "".join(line + "\n" for line in new)
    return search, replace, i + 1
