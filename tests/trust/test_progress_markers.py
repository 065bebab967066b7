"""The markers nightlab creates for its progress evaluator (``progress.done``, ``progress.final``),
created by the run instead.

Found from outside: a train.py that created ``progress.done`` in its run directory as it started
stopped its progress evaluator at once: the run had no progress point (the baseline had its
checkpoint's), was never prunable on a curve, and was recorded ``ok``. The runner asks
``ProgressReader.stop_reason`` while training runs and once right after it, before nightlab
creates the markers itself; a marker there then is the run's, and the run is invalid.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nightlab.config import load_config
from nightlab.research.progress import DONE_FILE, FINAL_FILE, ProgressReader

TOML = """\
[target]
editable = ["train.py"]
run = "python train.py"
progress_evaluate = "python follow.py"
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


def _reader(tmp_path: Path, scores: bool = True) -> tuple[ProgressReader, Path]:
    (tmp_path / "nightlab.toml").write_text(TOML)
    run_dir, folder = tmp_path / "run", tmp_path / "run.scores"
    run_dir.mkdir()
    folder.mkdir()
    return ProgressReader(run_dir, load_config(tmp_path), scores=folder if scores else None), run_dir


@pytest.mark.parametrize("marker", [DONE_FILE, FINAL_FILE])
def test_a_marker_the_run_created_makes_it_stop_and_stays_seen_once_removed(
    tmp_path: Path, marker: str
) -> None:
    reader, run_dir = _reader(tmp_path)
    assert reader.stop_reason(None) is None
    (run_dir / marker).touch()
    reason = reader.stop_reason(None)
    assert reason is not None and reason.startswith(
        f"the run created {marker}, which only nightlab may create"
    )
    (run_dir / marker).unlink()  # removed again before the run ends: too late
    assert reader.stop_reason(None) == reason


def test_without_a_progress_evaluator_a_file_of_that_name_is_the_runs_own(tmp_path: Path) -> None:
    reader, run_dir = _reader(tmp_path, scores=False)
    (run_dir / DONE_FILE).touch()
    assert reader.stop_reason(None) is None
