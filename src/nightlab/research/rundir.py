"""What a run may leave in its run directory: regular files and folders, nothing else.

The training process writes its run directory, and the harness (unsandboxed) reads it right
after: the log, the metrics file, the progress files. A symlink there could make the harness
read a file the sandbox hid from the run (a data cache's key into the ledger), write or create a
file outside (``progress.final`` -> anywhere), or copy its own environment (``/proc/self/environ``);
a FIFO or device could hang it. :func:`remove_special` runs as soon as the process has ended,
before anything reads its outputs: it removes every such entry and says what the run left, which
makes the run invalid (docs/SECURITY.md: planted files).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nightlab.safefile import special_entries

# Entries a reason names before "and N more".
SHOWN = 3


def remove_special(run_dir: Path) -> str | None:
    """Remove every symlink, FIFO, socket or device under ``run_dir``; the one-line reason the
    run is invalid when there was any (or when it left too many entries to look at), else None."""
    found, capped = special_entries(run_dir)
    # A checkpointing script's own link to a file beside it (``latest.pt -> step_100.pt``) is
    # removed like any link, but says nothing bad about the run: it is not made invalid for it.
    harmless = {rel for rel, _ in found if inner_link(run_dir, rel)}
    for rel, _ in found:
        try:
            os.unlink(run_dir / rel)  # unlink never follows: the link itself goes, not its target
        except OSError:
            pass
    found = [(rel, what) for rel, what in found if rel not in harmless]
    if capped:
        return "the run left too many entries in its run directory to check them"
    if not found:
        return None
    shown = ", ".join(f"a {description}" for _, description in found[:SHOWN])
    more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    return f"the run left {shown}{more}: not allowed in the run directory (regular files only)"


def inner_link(root: Path, rel: str) -> bool:
    """Whether ``root/rel`` is a relative symlink to a plain file or folder inside ``root``
    (``latest.pt -> step_100.pt``); a chain of links, or one that climbs out, is not."""
    try:
        target = os.readlink(root / rel)
    except OSError:
        return False
    if os.path.isabs(target):
        return False
    resolved = os.path.normpath(os.path.join(root, os.path.dirname(rel), target))
    base = os.path.realpath(root)
    try:
        mode = os.lstat(resolved).st_mode
    except OSError:
        return False
    inside = os.path.commonpath([base, os.path.realpath(resolved)]) == base
    return inside and (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def drop_inner_link(root: Path, rel: str) -> None:
    """Remove ``root/rel`` when it is such a link (a declared output such as
    ``checkpoints/last.pt -> step_100.pt``); anything else stays, for the audit to report."""
    if inner_link(root, rel):
        (root / rel).unlink()
