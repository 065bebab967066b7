"""The slot record a run directory holds while it trains (``slot.json``), as the run can leave it.

The training process can write its run directory, ``slot.json`` included, which ``nightlab
status``, the dashboard and the live view read while the run trains. Found from outside: a run
that replaced it by a FIFO hung ``nightlab status --json`` (still waiting after 20 s; an open of
a FIFO waits for a writer even after the harness removed it). ``store/recorded.read_slot`` now
opens it as ``safefile`` does: a regular file only, never through a link, at most 1 MB. The
dashboard's tail of a running run's log had the same hang (a ``run.log`` the run replaced by a
FIFO); it opens the log so too.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from nightlab.report.dashboard.live import tail
from nightlab.store.recorded import SLOT_FILE, read_slot


def _read_within(run_dir: Path, seconds: float = 3, read=read_slot) -> object:
    """What ``read`` gives, or None when it has not returned within ``seconds``."""
    found: list[object] = []
    reader = threading.Thread(target=lambda: found.append(read(run_dir)), daemon=True)
    reader.start()
    reader.join(seconds)
    return found[0] if found else None


def test_a_slot_record_replaced_by_a_fifo_is_no_record_and_no_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / SLOT_FILE)
    assert _read_within(tmp_path) == {}  # before: blocked until a writer came, forever


def test_a_slot_record_replaced_by_a_link_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"slot": 7, "device": "what the link names"}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / SLOT_FILE).symlink_to(outside)
    assert _read_within(run_dir) == {}
    (run_dir / SLOT_FILE).unlink()
    (run_dir / SLOT_FILE).write_text(json.dumps({"slot": 1, "device": "cuda:1"}))
    assert _read_within(run_dir) == {"slot": 1, "device": "cuda:1"}


def test_the_dashboards_tail_of_a_log_replaced_by_a_fifo_or_a_link_is_empty(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "run.log")
    assert _read_within(tmp_path / "run.log", read=tail) == ""  # before: blocked for good
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("what the link names\n")
    (tmp_path / "eval.log").symlink_to(secret)
    assert _read_within(tmp_path / "eval.log", read=tail) == ""
