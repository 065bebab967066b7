"""What kind of change a proposal is, and how big, before anything runs.

A change that cannot move the metric (comments, whitespace, only the random seed) is never
worth a training run: under noise, running it can only produce a false "improvement". The
loop asks :func:`classify_change` first and skips those. :func:`line_counts` measures the
size of a change for the simplicity penalty, counting only lines that carry code.

Example::

    >>> classify_change({"train.py": "LR = 0.01\\n"}, {"train.py": "LR = 0.01  # tuned\\n"})
    'cosmetic'
    >>> classify_change({"train.py": "SEED = 1\\n"}, {"train.py": "SEED = 2\\n"})
    'seed'
    >>> line_counts({"train.py": "a = 1\\n"}, {"train.py": "a = 2\\nb = 3\\n# note\\n"})
    (2, 1)
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
from collections.abc import Mapping
from typing import Literal

ChangeKind = Literal["none", "cosmetic", "seed", "code"]
_RANK = {"none": 0, "cosmetic": 1, "seed": 2, "code": 3}


def classify_change(old: Mapping[str, str], new: Mapping[str, str]) -> ChangeKind:
    """ "none", "cosmetic", "seed" or "code": the strongest kind over all changed files.

    Python files are compared by syntax tree (``ast.dump``), so comments, blank lines and
    formatting vanish while any change the interpreter sees, docstrings included, counts. Other
    files are compared with whitespace collapsed. A file added or removed is code.
    """
    kind: ChangeKind = "none"
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path), new.get(path)
        if before == after:
            continue
        if before is None or after is None:
            return "code"
        this = _classify_file(path, before, after)
        if _RANK[this] > _RANK[kind]:
            kind = this
        if kind == "code":
            break
    return kind


def _classify_file(path: str, before: str, after: str) -> ChangeKind:
    if not path.endswith(".py"):
        return "cosmetic" if before.split() == after.split() else "code"
    try:
        tree_before, tree_after = ast.parse(before), ast.parse(after)
    except (SyntaxError, ValueError):
        return "code"  # a syntax error is a change the run will surely notice
    if ast.dump(tree_before) == ast.dump(tree_after):
        return "cosmetic"
    return "seed" if _only_seed_differs(tree_before, tree_after) else "code"


def _only_seed_differs(before: ast.Module, after: ast.Module) -> bool:
    """True when the modules differ only in the values of module-level seed constants."""
    if len(before.body) != len(after.body):
        return False
    for a, b in zip(before.body, after.body, strict=True):
        if ast.dump(a) == ast.dump(b):
            continue
        name_a, name_b = _assigned_name(a), _assigned_name(b)
        if name_a is None or name_a != name_b or not _is_seed_name(name_a):
            return False
    return True


def _assigned_name(node: ast.stmt) -> str | None:
    """The single name a plain ``NAME = value`` (or ``NAME: type = value``) statement binds."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return node.target.id
    return None


def _is_seed_name(name: str) -> bool:
    # SEED must be a whole word of the name: RANDOM_SEED and SEED_OFFSET pick the seed, but
    # N_SEEDS or NUM_SEEDS choose how many runs to average, which does change the result.
    return "SEED" in name.upper().split("_")


def _significant(text: str) -> list[str]:
    """Lines that carry code: not blank, not comment-only; trailing whitespace dropped."""
    return [line.rstrip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def line_counts(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[int, int]:
    """(lines added, lines removed) over all files, blank and comment-only lines ignored.

    The simplicity penalty charges added lines and credits removed ones, so a comment or a
    blank line must cost nothing; a changed line counts once as removed and once as added.
    """
    added = removed = 0
    for path in sorted(set(old) | set(new)):
        before, after = _significant(old.get(path, "")), _significant(new.get(path, ""))
        if before == after:
            continue
        matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag != "equal":
                removed += i2 - i1
                added += j2 - j1
    return added, removed


def code_hash(files: Mapping[str, str]) -> str:
    """A fingerprint of a set of editable files (path -> text): equal exactly when the code is.

    Two proposals written differently (a SEARCH/REPLACE block, a whole file) that end in the
    same files get the same hash, so the loop and agents recognise an experiment already tried.
    """
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:16]
