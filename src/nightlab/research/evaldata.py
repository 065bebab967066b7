"""The data an evaluation scores stays the data it scored first: its reported fingerprint, checked.

An evaluation may report a fingerprint of what it scored as ``data_sha256`` in its metrics file
(the GPT template's does: a SHA-256 of its val and holdout tokens). Those files live outside the
workspace, in a data cache that the frozen-file hashes do not cover, and a training process that
can write there (no sandbox, or a cache under /tmp, which the sandbox leaves writable: renaming
the cache's folder moves its hidden files aside) can put data of its own in their place, which
the evaluation then scores (found from outside: val and holdout replaced under
``sandbox = "required"``). The first fingerprint reported for a set of frozen files is kept in
the state folder; an evaluation that reports another one makes its run invalid, so results on
other data are never compared with the ones recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

from nightlab.safefile import read_bytes

FINGERPRINT_KEY = "data_sha256"
FOLDER = "eval_data"  # under the state folder: one file per set of frozen files


def reported_fingerprint(metrics_path: Path) -> str | None:
    """The ``data_sha256`` the evaluation wrote into ``metrics_path``; None when it wrote none."""
    try:
        data = json.loads(read_bytes(metrics_path, limit=1 << 20))
    except (OSError, ValueError):
        return None
    value = data.get(FINGERPRINT_KEY) if isinstance(data, dict) else None
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) else None


def data_changed(state_dir: Path, frozen: dict[str, str], metrics_path: Path) -> str | None:
    """Why the evaluation's data differs from what it scored first, or None (also when unknown).

    The reference is keyed by the frozen files' hashes (the template's data.py names the data) and
    written once, atomically, so replicates finishing together agree on the first one.
    """
    digest = reported_fingerprint(metrics_path)
    if digest is None:
        return None
    key = hashlib.sha256(json.dumps(sorted(frozen.items())).encode()).hexdigest()[:16]
    reference = state_dir / FOLDER / f"{key}.sha256"
    if not reference.exists():
        reference.parent.mkdir(parents=True, exist_ok=True)
        draft = reference.with_name(f"{reference.name}.{os.getpid()}.{id(metrics_path)}.tmp")
        draft.write_text(digest + "\n")
        with contextlib.suppress(FileExistsError):  # another replicate wrote it first: it counts
            os.link(draft, reference)
        draft.unlink()
    try:
        known = read_bytes(reference, limit=256).decode().strip()
    except (OSError, ValueError):
        return f"cannot read {reference}, the fingerprint of the evaluation's data: delete it to start afresh"
    if known == digest:
        return None
    return (
        f"the evaluation scored other data than it first did ({FINGERPRINT_KEY} {digest[:12]}, first "
        f"{known[:12]}): its val or holdout files changed, a run may have rewritten the data cache; "
        f"rebuild the data (the target's setup), or if you changed it on purpose, delete {reference}"
    )
