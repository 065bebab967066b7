"""The one path matcher: which files the editable and frozen globs of nightlab.toml name.

Every part asks here (the files an agent is shown, the edit check, the frozen hashes, ``try``,
the MCP server, the command agent, scales), so a file is editable everywhere or nowhere.

The semantics are those of ``glob.glob(..., recursive=True)`` on repository-relative POSIX
paths, the way people read a gitignore-style pattern (docs/CONFIG.md):

- a pattern is anchored at the workspace root: ``*.py`` names ``train.py`` but not
  ``sub/train.py``;
- ``*`` and ``?`` never cross a ``/``; ``[abc]`` and ``[!abc]`` are character classes;
- ``**/`` is zero or more folders: ``**/*.py`` names ``train.py`` and ``sub/deep/x.py``;
  a trailing ``**`` names everything below a folder (``data/**``);
- a leading ``./`` is ignored; ``*`` also matches names that start with a dot.

Paths that could escape the workspace (``..``, absolute paths) or reach ``.git``/``.nightlab``
are refused by :func:`normalize` before any pattern is consulted, since ``**`` would match them.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

CONFIG_NAME = "nightlab.toml"  # always frozen, never editable
_PRIVATE = (".git", ".nightlab")  # never matched, never written


def normalize(path: str) -> str:
    """A repository-relative POSIX path; ValueError for anything that could escape or reach .git."""
    clean = path.replace("\\", "/")
    while clean.startswith("./"):
        clean = clean[2:]
    parts = clean.split("/")
    if not clean or clean.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"'{path}' is not a plain relative path inside the workspace")
    if parts[0] in _PRIVATE:
        raise ValueError(f"'{path}' is inside {parts[0]}/, which nightlab never lets anything write")
    return clean


@functools.lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    """A glob (the semantics of the module docstring) as an anchored regular expression."""
    pattern = pattern.replace("\\", "/")
    while pattern.startswith("./"):
        pattern = pattern[2:]
    out, i, n = [], 0, len(pattern)
    while i < n:
        at_segment_start = i == 0 or pattern[i - 1] == "/"
        if pattern.startswith("**/", i) and at_segment_start:
            out.append("(?:[^/]+/)*")  # zero or more folders
            i += 3
        elif pattern.startswith("**", i) and at_segment_start and i + 2 == n:
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def escape(path: str) -> str:
    """A pattern that names exactly ``path``, whatever characters it holds."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def matches(path: str, patterns: Iterable[str]) -> bool:
    """True when ``path`` (relative, POSIX) matches one of the globs."""
    return any(_regex(p).match(path) for p in patterns)


def select(paths: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The paths (e.g. the files of a commit) that match one of the globs, sorted."""
    patterns = list(patterns)
    return sorted(p for p in paths if not _is_private(p) and matches(p, patterns))


def is_editable(path: str, editable: Sequence[str], frozen: Sequence[str]) -> bool:
    """The scope rule: editable, not frozen, and never nightlab.toml itself."""
    return path != CONFIG_NAME and matches(path, editable) and not matches(path, frozen)


def editable_files(paths: Iterable[str], editable: Sequence[str], frozen: Sequence[str]) -> list[str]:
    """The paths (e.g. the files of a commit) an agent may change, sorted: :func:`is_editable`."""
    return sorted(p for p in paths if not _is_private(p) and is_editable(p, editable, frozen))


def match_files(root: Path, patterns: Iterable[str]) -> list[str]:
    """Files under ``root`` (relative POSIX paths, sorted) that match one of the globs.

    Folders no pattern can reach are not walked, so a workspace holding a large data folder or
    a virtual environment costs nothing unless a pattern names it; ``.git`` and ``.nightlab``
    are never walked.
    """
    patterns = [p.replace("\\", "/").removeprefix("./") for p in patterns]
    root = Path(root)
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        dirs[:] = [d for d in dirs if _could_contain(prefix + d, patterns)]
        found.extend(prefix + f for f in files if matches(prefix + f, patterns))
    return sorted(p for p in found if not _is_private(p))


def _is_private(path: str) -> bool:
    return path.split("/", 1)[0] in _PRIVATE


def _could_contain(folder: str, patterns: Sequence[str]) -> bool:
    """Whether some pattern may match a file inside ``folder`` (a relative POSIX path)."""
    if _is_private(folder):
        return False
    parts = folder.split("/")
    for pattern in patterns:
        segments = pattern.split("/")
        for k, name in enumerate(parts):
            if k < len(segments) and segments[k] == "**":
                return True
            if k >= len(segments) - 1:  # the pattern's last segment names files, not folders
                break
            if not _regex(segments[k]).match(name):
                break
        else:
            return True
    return False


def walk_stats(root: Path | str) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry beneath ``root`` (folders included) with its own stat, links not followed;
    entries that vanish or cannot be read while walking are passed over."""
    stack = [str(root)]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            yield entry.path, info
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
