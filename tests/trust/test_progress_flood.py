"""Progress files the training process floods: the harness reads a bounded share of each.

Found from outside: a train.py that wrote 800 MB into ``progress.jsonl`` without a newline (the
default config has no run-directory limit) took the harness to 1.76 GB resident when it read the
run's points (`/usr/bin/time` over ``nightlab run``): every progress file was read whole, and
copied, by the end-of-night report (``metrics.read_curve_points``) and by the runner. Both now
read at most ``MAX_PROGRESS_BYTES`` of a file; the runner drops lines longer than
``MAX_LINE_BYTES``, and the report's reader no longer follows a link the run left.
"""

from __future__ import annotations

import json
from pathlib import Path

from nightlab import metrics
from nightlab.config import load_config
from nightlab.research import progress
from nightlab.research.progress import ProgressReader

TOML = """\
[target]
editable = ["train.py"]
run = "python train.py"
[budget]
seconds = 5
[metric]
name = "val_loss"
direction = "minimize"
source = "json"
[agent]
kind = "replay"
file = "p.jsonl"
"""


def _reader(tmp_path: Path) -> tuple[ProgressReader, Path]:
    (tmp_path / "nightlab.toml").write_text(TOML)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return ProgressReader(run_dir, load_config(tmp_path)), run_dir


def _point(fraction: float) -> bytes:
    return (json.dumps({"fraction": fraction, "val_loss": 2 - fraction}) + "\n").encode()


def test_a_flooded_progress_file_is_read_only_up_to_the_cap(tmp_path: Path) -> None:
    reader, run_dir = _reader(tmp_path)
    path = run_dir / "progress.jsonl"
    with path.open("wb") as fh:
        fh.write(_point(0.25))
        fh.truncate(3 * progress.MAX_PROGRESS_BYTES)  # sparse: no disk, no newline after the point
    assert [p.x for p in reader.points()] == [0.25]
    own = reader._own  # what the harness took into memory of it
    assert own.offset == progress.MAX_PROGRESS_BYTES  # before: the whole 192 MB, at once
    assert len(own.rest) <= progress.MAX_LINE_BYTES
    with path.open("ab") as fh:
        fh.write(_point(0.5))
    assert [p.x for p in reader.points()] == [0.25]  # nothing more is read after the cap


def test_a_line_too_long_is_dropped_and_the_lines_after_it_still_count(tmp_path: Path) -> None:
    reader, run_dir = _reader(tmp_path)
    path = run_dir / "progress.jsonl"
    path.write_bytes(_point(0.25) + b'{"fraction": 0.3, "pad": "' + b"x" * (2 * progress.MAX_LINE_BYTES))
    assert [p.x for p in reader.points()] == [0.25]
    assert reader._own.rest == b""  # the long line's start was not kept
    with path.open("ab") as fh:
        fh.write(b'", "val_loss": 0.1}\n' + _point(0.5))
    assert [p.x for p in reader.points()] == [0.25, 0.5]  # the long line's end is not a point


def test_the_reports_curve_reader_reads_a_bounded_share_and_never_through_a_link(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / "progress.jsonl"
    with path.open("wb") as fh:
        fh.write(_point(0.25))
        fh.truncate(3 * progress.MAX_PROGRESS_BYTES)
    read: list[int] = []
    real = metrics.read_text
    metrics.read_text = lambda p, limit=None: read.append(limit) or real(p, limit)  # type: ignore[assignment]
    try:
        assert [p["fraction"] for p in metrics.read_curve_points(run_dir, "val_loss")] == [0.25]
    finally:
        metrics.read_text = real  # type: ignore[assignment]
    assert read and set(read) == {progress.MAX_PROGRESS_BYTES}  # before: read_text() of the whole 192 MB
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(_point(0.5))
    path.unlink()
    path.symlink_to(outside)  # what a run could leave while the dashboard reads it live
    assert metrics.read_curve_points(run_dir, "val_loss") == []
