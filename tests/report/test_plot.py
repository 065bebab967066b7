"""progress.png and the terminal summary, drawn from real ledgers."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from helpers import record_timed_runs
from nightlab.report.plot import plot_progress
from nightlab.report.summary import render_summary
from nightlab.store.ledger import Ledger
from nightlab.types import RunResult, RunStatus

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def night(ledger: Ledger, n: int, direction_sign: float = -1.0, seed: int = 0) -> None:
    """A plausible night: a baseline, keeps, discards, crashes and invalid edits."""
    rng = random.Random(seed)
    level = 1.0

    def record(kind: str, desc: str, values: list[float], decision: str, status: str = "ok", **extra) -> None:
        exp = ledger.add_experiment(kind=kind, tag="t", description=desc)
        for i, v in enumerate(values):
            ledger.add_run(exp, i, RunResult(RunStatus.OK, seed=i), v, None, f"r/{exp}/{i}")
        if not values and status != "invalid":
            ledger.add_run(exp, 0, RunResult(RunStatus(status), seed=0), None, None, f"r/{exp}/0")
        mean = sum(values) / len(values) if values else None
        ledger.finish_experiment(
            exp, status=status, decision=decision, metric_mean=mean, n_runs=len(values), **extra
        )

    record(
        "baseline", "baseline", [level + rng.gauss(0, 0.002) for _ in range(2)], "baseline", holdout_mean=1.1
    )
    for i in range(n):
        roll = rng.random()
        if roll < 0.06:
            record("candidate", f"wider model {i} (OOM)", [], "crash", "oom")
        elif roll < 0.08:
            record("candidate", f"edit prepare.py {i}", [], "invalid", "invalid")
        elif i % 8 == 3:
            level += direction_sign * 0.005
            values = [level + rng.gauss(0, 0.002) for _ in range(3)]
            record("candidate", f"[lr] schedule change number {i} with a long description", values, "keep",
                   p_value=0.004, delta_se=0.0012, holdout_mean=1.1 + direction_sign * 0.001 * i)  # fmt: skip
        else:
            record("candidate", f"idea {i}", [level - direction_sign * abs(rng.gauss(0, 0.01))], "discard")


def test_plot_writes_a_png_with_keeps_discards_and_crashes(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        night(ledger, 40)
        out = plot_progress(ledger, "t", tmp_path / "reports" / "progress.png", "val_bpb", "minimize")
    assert out == tmp_path / "reports" / "progress.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000


@pytest.mark.slow  # ~2-4 s: 300 experiments written with fsyncs, and a big figure
def test_plot_handles_300_experiments_and_maximize(tmp_path: Path) -> None:
    image = pytest.importorskip("matplotlib.image")
    with Ledger(tmp_path / "ledger.db") as ledger:
        night(ledger, 300, direction_sign=1.0, seed=3)
        out = plot_progress(ledger, "t", tmp_path / "progress.png", "accuracy", "maximize")
    pixels = image.imread(out)
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 2000  # 16x8 inches at 150 dpi


def test_plot_of_an_empty_or_baseline_only_ledger(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        empty = plot_progress(ledger, "t", tmp_path / "empty.png", "val_bpb", "minimize")
        exp = ledger.add_experiment(kind="baseline", tag="t", description="baseline")
        ledger.finish_experiment(exp, status="ok", decision="baseline", metric_mean=1.0, n_runs=1)
        one = plot_progress(ledger, "t", tmp_path / "one.png", "val_bpb", "minimize")
    assert empty.read_bytes().startswith(PNG_MAGIC) and one.read_bytes().startswith(PNG_MAGIC)


def test_summary_lists_baseline_best_and_kept_changes(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        assert "no baseline yet" in render_summary(ledger, "t")
        night(ledger, 30, seed=1)
        kept = [e for e in ledger.research("t") if e.decision == "keep"]
        text = render_summary(ledger, "t", "val_bpb", "minimize")
    assert "Baseline" in text and "Best" in text and "Improvement" in text and "Noise floor" in text
    assert "Kept changes" in text and "99.6%" in text  # 1 - p_value
    assert "[lr] schedule change number" in text  # brackets survive: plain text, no markup
    for e in kept:
        assert f"\n{e.id} " in text or f" {e.id} " in text
    assert "\x1b[" not in text  # no colour codes
    # Holdout got better alongside val here, so nothing is flagged.
    assert "not on holdout" not in text


def _record(ledger: Ledger, kind: str, values: list[float], decision: str, desc: str = "") -> int:
    exp = ledger.add_experiment(kind=kind, tag="t", description=desc or decision)
    for i, v in enumerate(values):
        ledger.add_run(exp, i, RunResult(RunStatus.OK, seed=i), v, None, f"r/{exp}/{i}")
    ledger.finish_experiment(
        exp, status="ok", decision=decision, metric_mean=sum(values) / len(values), n_runs=len(values)
    )
    return exp


def _pinned(figure, label: str) -> list[tuple[float, float]]:  # noqa: ANN001 - a matplotlib Figure
    """The (x, y in axes units) of the scatter points drawn under ``label``."""
    (ax,) = figure.axes
    found = [c for c in ax.collections if c.get_label() == label]
    return [tuple(xy) for c in found for xy in c.get_offsets()]


@pytest.mark.parametrize("direction, sign", [("minimize", -1.0), ("maximize", 1.0)])
def test_a_discarded_result_better_than_the_best_is_not_labelled_worse(
    tmp_path: Path, direction: str, sign: float
) -> None:
    """Issue 17: a discarded experiment that beat the best (but not significantly) was pinned to
    the top edge as "Discarded (worse, off scale)"."""
    import matplotlib.pyplot as plt

    from nightlab.report.plot import progress_figure

    with Ledger(tmp_path / "ledger.db") as ledger:
        _record(ledger, "baseline", [1.0, 1.0 - sign * 0.001], "baseline")
        _record(ledger, "candidate", [1.0 + sign * 0.01], "keep")
        _record(ledger, "candidate", [1.0 + sign * 0.5], "discard", "lucky, not confirmed")  # far better
        _record(ledger, "candidate", [1.0 - sign * 0.5], "discard", "far worse")
        _record(ledger, "candidate", [1.0 + sign * 0.005], "discard", "in range")
        figure = progress_figure(ledger, "t", "metric", direction)
    try:
        better = _pinned(figure, "Discarded (better than the best, not confirmed; off scale)")
        worse = _pinned(figure, "Discarded (worse, off scale)")
        inside = _pinned(figure, "Discarded")
    finally:
        plt.close(figure)
    # Better is down for a minimised metric and up for a maximised one; worse the other way.
    better_edge, worse_edge = (0.015, 0.955) if direction == "minimize" else (0.955, 0.015)
    assert better == [(3.0, better_edge)]
    assert worse == [(4.0, worse_edge)]
    assert [x for x, _ in inside] == [5.0]


def test_summary_counts_every_outcome_and_unfinished_ones_as_interrupted(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        _record(ledger, "baseline", [1.0, 1.001], "baseline")
        only_baseline = render_summary(ledger, "t", "val_bpb", "minimize")
        ledger.add_experiment(kind="candidate", tag="t", description="in flight")
        live = render_summary(ledger, "t", "val_bpb", "minimize")
        dead = render_summary(ledger, "t", "val_bpb", "minimize", live=False)
    # issue 17: was "1 total:" and nothing after it
    assert "1 total (the baseline and 0 experiments): baseline 1" in only_baseline
    assert "2 total (the baseline and 1 experiment): baseline 1 · running 1" in live
    assert "2 total (the baseline and 1 experiment): baseline 1 · interrupted 1" in dead


def test_summary_says_what_share_of_the_runs_wall_time_was_training(tmp_path: Path) -> None:
    record_timed_runs(tmp_path / "ledger.db")
    with Ledger(tmp_path / "ledger.db") as ledger:
        text = render_summary(ledger, "t", "val_bpb", "minimize")
        untrained = Ledger(tmp_path / "empty.db")
        _record(untrained, "baseline", [1.0], "baseline")
        none_yet = render_summary(untrained, "t", "val_bpb", "minimize")
        untrained.close()
    # 66 s of training in 120 s of wall time; the crash's start-up counts as time not training.
    assert "Training" in text and "55% of the runs' wall time: 1.1 of 2.0 min in 3 runs" in text
    assert "of the runs' wall time" not in none_yet  # no run recorded its training time


def test_a_figure_cut_off_mid_write_leaves_the_previous_file_whole(tmp_path: Path, monkeypatch) -> None:
    """Figures were saved straight onto their path: a crash or Ctrl-C mid-write left a torn PNG
    (report.html then embedded it). Now the old file stays until the new one is complete."""
    from matplotlib.figure import Figure

    from nightlab.report.validation import plot_ablation

    with Ledger(tmp_path / "ledger.db") as ledger:
        night(ledger, 5)
        good = plot_progress(ledger, "t", tmp_path / "progress.png", "val_bpb")
        assert isinstance(good, Path) and good.read_bytes().startswith(PNG_MAGIC)
        before = good.read_bytes()

        def torn(self, target, **kwargs) -> None:  # writes half a file, then is interrupted
            if isinstance(target, (str, Path)):
                Path(target).write_bytes(PNG_MAGIC + b"half")
            else:
                target.write(PNG_MAGIC + b"half")
            raise KeyboardInterrupt

        monkeypatch.setattr(Figure, "savefig", torn)
        with pytest.raises(KeyboardInterrupt):
            plot_progress(ledger, "t", good, "val_bpb")
        rows = [{"id": 2, "description": "d", "value": 0.1, "interval": [0.0, 0.2], "status": "ok"}]
        with pytest.raises(KeyboardInterrupt):
            plot_ablation(rows, tmp_path / "ablation.png", "val_bpb")
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if "png" in p.name) == ["progress.png"]  # no temp left


def test_a_file_where_the_folder_should_be_is_named(tmp_path: Path) -> None:
    """`report --out FILE/sub/r.html` said "(File exists)", which reads as the report's own name."""
    from nightlab.report.files import write_atomically

    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError) as caught:
        write_atomically(tmp_path / "afile" / "sub" / "r.html", lambda handle: handle.write(b"page"))
    assert caught.value.strerror == f"{tmp_path / 'afile'} is a file, not a folder"
    written = write_atomically(tmp_path / "new" / "r.html", lambda handle: handle.write(b"page"))
    assert written.read_bytes() == b"page" and oct(written.stat().st_mode & 0o777) == "0o644"


def test_the_report_draws_the_latest_whole_study_not_one_cut_off(tmp_path: Path) -> None:
    """`nightlab report` redrew validation.png from the newest study even when it had been
    interrupted after two runs, over the figure of the last complete validation."""
    from nightlab.report.validation import study_experiments

    with Ledger(tmp_path / "ledger.db") as ledger:
        for study, status, reason in (("whole", "ok", None), ("cut", "crash", "interrupted")):
            for side in "AB":
                exp = ledger.add_experiment(kind="validate", description=side, meta_json={"study": study})
                ledger.finish_experiment(exp, status=status, reason=reason)
        assert {e.meta["study"] for e in study_experiments(ledger, "validate")} == {"whole"}
        assert len(study_experiments(ledger, "validate", "cut")) == 2  # asked for by name, it is given
        ledger.add_experiment(kind="ablate", description="running", meta_json={"study": "only"})
        assert len(study_experiments(ledger, "ablate")) == 1  # nothing whole: the latest still shows
