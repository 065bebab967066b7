"""What a run may leave in its run directory: regular files and folders, nothing else.

The training process writes its run directory, and the harness (unsandboxed) reads it right
after: the log, the metrics file, the progress files. A symlink there could make the harness
read a file the sandbox hid from the run (a data cache's key into the ledger), write or create a
file outside (``progress.final`` -> anywhere), or copy its own environment (``/proc/self/environ``);
a FIFO or device could hang it. :func:`remove_special` runs as soon as the process has ended,
before anything reads its outputs: it removes every such entry and says what the run left, which
makes the run invalid (docs/SECURITY.md: planted files).

Beside it, the folder the progress evaluator writes its scores in while the run trains
(:func:`prepare_scores`), which the training process cannot see, and :func:`merge_scores`, which
moves them into the run directory once nothing of the run is left.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path

from nightlab.executor.slots import Slot
from nightlab.metrics import scores_dir
from nightlab.safefile import special_entries
from nightlab.store.recorded import SLOT_FILE

# Entries a reason names before "and N more".
SHOWN = 3
# Where nightlab tells a progress evaluator to write its scores (``progress.eval.jsonl``).
SCORES_VARIABLE = "NIGHTLAB_SCORES_DIR"


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


def fresh_run_dir(run_dir: Path, slot: Slot | None) -> Path:
    """``run_dir`` emptied (a replicate interrupted by a crash of the harness starts afresh),
    with the record of the slot it runs in."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.rmtree(scores_dir(run_dir), ignore_errors=True)
    run_dir.mkdir(parents=True)
    write_slot(run_dir, slot)
    return run_dir


def write_slot(run_dir: Path, slot: Slot | None, command: str = "") -> None:
    """Where a replicate runs, since when and (once known) the command as it runs, beside its
    log: what `nightlab status` and the live view show for each slot while it runs
    (:func:`nightlab.store.recorded.read_slot`)."""
    if slot is None:
        return
    record = {**slot.to_dict(), "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if command:
        record["command"] = command
    (run_dir / SLOT_FILE).write_text(json.dumps(record))


def prepare_scores(run_dir: Path) -> Path:
    """An empty folder beside ``run_dir`` for the progress evaluator's scores and log.

    In the run directory the training process could read them while it trains (its checkpoints'
    val scores: a validation oracle to adapt to). Here, under the sandbox, it cannot: the folder
    exists before training starts, so it is hidden from the training process as the private files
    are (an empty, read-only, locked folder in its view), and Landlock keeps it from writing there.
    """
    folder = scores_dir(run_dir).resolve()  # absolute: the sandbox's launcher mounts over it
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def merge_scores(run_dir: Path) -> None:
    """Move the files of the scores folder (the evaluator's scores and log) into ``run_dir``,
    replacing whatever the run left under those names, and remove the folder: once the run and
    its evaluator have ended, the run directory holds the record every reader looks in."""
    folder = scores_dir(run_dir)
    if not folder.is_dir():
        return
    for source in sorted(folder.iterdir()):
        target = run_dir / source.name
        if not source.is_file() or source.is_symlink():
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(source, target)  # replaces a file or a link itself, never what a link names
    shutil.rmtree(folder, ignore_errors=True)
