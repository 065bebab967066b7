"""Reading a run's metrics: a malformed file is the run's failure, never a user error."""

from __future__ import annotations

from pathlib import Path

import pytest

from nightlab.errors import UserError
from nightlab.metrics import (
    MetricsFileError,
    parse_log_metric,
    read_curve_points,
    read_metrics_json,
    scores_dir,
)


def test_read_metrics_json_keeps_numbers_only(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text('{"val_bpb": 1.25, "steps": 40, "causal": true, "note": "x", "nested": {"a": 1}}')
    assert read_metrics_json(path) == {"val_bpb": 1.25, "steps": 40.0}


@pytest.mark.parametrize("text", ["[1, 2]", "3.5", "null"])
def test_read_metrics_json_that_is_not_an_object_has_no_metrics(tmp_path: Path, text: str) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(text)
    assert read_metrics_json(path) == {}


def test_read_metrics_json_of_json_lines_takes_each_names_last_number(tmp_path: Path) -> None:
    """A log of evaluations, one JSON object per line (found from outside: such a file was
    refused as holding 'no number'); a line cut off by a killed writer is skipped."""
    path = tmp_path / "log.jsonl"
    path.write_text(
        '{"step": 10, "val_loss": 1.5, "lr": 0.001}\n'
        '{"step": 20, "train_loss": 1.1}\n'
        '{"step": 30, "val_loss": 1.25, "note": "x"}\n'
        '{"step": 40, "val_lo'
    )
    assert read_metrics_json(path) == {"step": 30.0, "val_loss": 1.25, "lr": 0.001, "train_loss": 1.1}


def test_read_metrics_json_missing_file_has_no_metrics(tmp_path: Path) -> None:
    assert read_metrics_json(tmp_path / "metrics.json") == {}


@pytest.mark.parametrize("content", [b'{"val_bpb": 1.2', b"\xff\xfe not text", b""])
def test_read_metrics_json_malformed_is_a_metrics_file_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with pytest.raises(MetricsFileError, match="metrics.json: not valid JSON") as caught:
        read_metrics_json(path)
    assert not isinstance(caught.value, UserError)  # the script's fault: no exit code 2
    assert isinstance(caught.value, ValueError)


def test_read_metrics_json_unreadable_path_is_a_metrics_file_error(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(MetricsFileError):
        read_metrics_json(tmp_path / "metrics.json")


def test_parse_log_metric_takes_the_last_match() -> None:
    log = "val_bpb: 2.0\nstep 10\nval_bpb: 1.5\nval_bpb: n/a\n"
    assert parse_log_metric(log, r"^val_bpb:\s*(\S+)") == 1.5
    assert parse_log_metric("nothing here", r"^val_bpb:\s*(\S+)") is None


def test_a_run_still_training_shows_the_scores_beside_its_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "0001" / "0"
    run_dir.mkdir(parents=True)
    (run_dir / "progress.eval.jsonl").write_text('{"seconds": 1, "val_bpb": 9.0}\n')  # what training wrote
    assert read_curve_points(run_dir, "val_bpb") == [{"value": 9.0, "seconds": 1.0}]
    scores = scores_dir(run_dir)
    assert scores == tmp_path / "runs" / "0001" / "0.scores"  # not a replicate's folder (not a number)
    scores.mkdir()
    (scores / "progress.eval.jsonl").write_text(
        '{"seconds": 2, "val_bpb": 3.0, "sig": "x"}\n{"invalid": "no"}\n'
    )
    assert read_curve_points(run_dir, "val_bpb") == [{"value": 3.0, "seconds": 2.0}]
