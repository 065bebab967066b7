"""Checks that a run did not touch what it must not: frozen files and tracked files.

The frozen set is fixed when the research starts (hashes of the start commit's frozen files,
plus nightlab.toml). Every replicate is checked against it before and after it runs, so a
training script that rewrites ``prepare.py`` to flatter itself is caught even if it restores
the file afterwards inside the same run only partly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nightlab.config import Config
from nightlab.paths import CONFIG_NAME, match_files, walk_stats
from nightlab.safefile import NotRegularFile, open_read

# The hash of a frozen file that is now a symlink, FIFO, socket or device: never read (a FIFO
# would block the harness forever, a link to /dev/zero fill its memory), always a change.
NOT_REGULAR = "not a regular file"


def frozen_paths(config: Config, root: Path) -> list[str]:
    """Relative paths of every frozen file in ``root``; nightlab.toml is always frozen."""
    paths = set(match_files(root, config.target.frozen))
    if (root / CONFIG_NAME).is_file():
        paths.add(CONFIG_NAME)
    return sorted(paths)


def hash_paths(root: Path, paths: Iterable[str]) -> dict[str, str]:
    """sha256 of each file under ``root``, by relative path.

    ``"missing"`` when there is no file to read (gone, a directory now, or a parent that became a
    file), :data:`NOT_REGULAR` for a symlink, FIFO or device (a run may plant one in its worktree;
    it is never followed or opened for reading), so deleting or replacing a frozen file counts as
    a change rather than a crash or a hang.
    """
    out: dict[str, str] = {}
    for rel in paths:
        path = Path(root) / rel
        try:
            digest = hashlib.sha256()
            with open_read(path) as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023 (used at once)
                    digest.update(block)
            out[rel] = digest.hexdigest()
        except NotRegularFile:
            out[rel] = "missing" if path.is_dir() and not path.is_symlink() else NOT_REGULAR
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            out[rel] = "missing"
    return out


@dataclass
class FrozenCheck:
    """The expected hashes; ``violations`` names every file that differs."""

    expected: dict[str, str]

    def violations(self, root: Path) -> list[str]:
        actual = hash_paths(root, sorted(self.expected))
        return [rel for rel, digest in self.expected.items() if actual.get(rel) != digest]

    def describe(self, root: Path) -> str | None:
        actual = hash_paths(root, sorted(self.expected))
        bad = [rel for rel, digest in self.expected.items() if actual.get(rel) != digest]
        if not bad:
            return None
        named = [
            f"{rel} (no longer a regular file)" if actual.get(rel) == NOT_REGULAR else rel for rel in bad
        ]
        return "frozen file changed during the run: " + ", ".join(named)


Stamp = tuple[int, int]  # (inode, ctime in ns)


def tree_stamps(root: Path) -> dict[str, Stamp]:
    """The inode and change time of every entry under ``root`` (folders included, links not
    followed), by relative path.

    A file written and then put back as it was keeps its hash but not its change time, which no
    process can set back: comparing stamps taken before and after a run shows any write, even one
    undone, and a folder's stamp shows a file added and removed again (a module planted for one
    import).
    """
    stamps = {os.path.relpath(path, root): (info.st_ino, info.st_ctime_ns) for path, info in walk_stats(root)}
    try:
        info = Path(root).stat()
        stamps["."] = (info.st_ino, info.st_ctime_ns)
    except OSError:
        pass
    return stamps


def changed_entries(before: dict[str, Stamp], after: dict[str, Stamp]) -> list[str]:
    """Entries added, removed or changed between two :func:`tree_stamps`, sorted."""
    return sorted(rel for rel in before.keys() | after.keys() if before.get(rel) != after.get(rel))
