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
from pathlib import Path

from nightlab.safefile import special_entries

# Entries a reason names before "and N more".
SHOWN = 3


def remove_special(run_dir: Path) -> str | None:
    """Remove every symlink, FIFO, socket or device under ``run_dir``; the one-line reason the
    run is invalid when there was any (or when it left too many entries to look at), else None."""
    found, capped = special_entries(run_dir)
    for rel, _ in found:
        try:
            os.unlink(run_dir / rel)  # unlink never follows: the link itself goes, not its target
        except OSError:
            pass
    if capped:
        return "the run left too many entries in its run directory to check them"
    if not found:
        return None
    shown = ", ".join(f"a {description}" for _, description in found[:SHOWN])
    more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    return f"the run left {shown}{more}: not allowed in the run directory (regular files only)"
