"""Val against holdout for kept changes: a val gain that holdout does not share is flagged."""

from __future__ import annotations

from pathlib import Path

from nightlab.report.summary import render_summary
from nightlab.store.export import holdout_checks, status_dict
from nightlab.store.ledger import Ledger


def _kept(ledger: Ledger, decision: str, val: float, holdout: float | None, incumbent: int | None) -> int:
    exp = ledger.add_experiment(
        kind="baseline" if decision == "baseline" else "candidate",
        tag="t",
        description=f"{decision} val {val}",
        commit=f"{val:.3f}".replace(".", "") * 8,
        base_commit="0" * 40,
        agent="replay",
        incumbent_id=incumbent,
    )
    extra = {"holdout_mean": holdout} if holdout is not None else {}
    ledger.finish_experiment(exp, status="ok", decision=decision, metric_mean=val, n_runs=1, **extra)
    return exp


def test_val_gain_without_holdout_gain_is_flagged(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.set_meta("direction", "minimize")
        base = _kept(ledger, "baseline", 1.00, 1.10, None)
        honest = _kept(ledger, "keep", 0.95, 1.05, base)  # better on both
        overfit = _kept(ledger, "keep", 0.93, 1.06, honest)  # better on val, worse on holdout
        _kept(ledger, "discard", 0.99, 0.90, overfit)  # discarded: never judged
        checks = holdout_checks(ledger, "t", "minimize")
        assert [(c["id"], c["overfit"]) for c in checks] == [(honest, False), (overfit, True)]
        assert abs(checks[1]["val_gain"] - 0.02) < 1e-9 and abs(checks[1]["holdout_delta"] + 0.01) < 1e-9
        text = render_summary(ledger, "t", "val_loss", "minimize", width=200)
        assert f"1 of 2 kept changes also improved the holdout split; #{overfit}: a gain on val" in text
        assert "possible overfitting to the validation split" in text
        status = status_dict(ledger, "t")
        assert status["possible_val_overfit"] == [overfit]
        assert "holdout" not in str(status), "status --json carries no holdout values"


def test_maximized_metric_and_missing_holdout(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        base = _kept(ledger, "baseline", 0.50, 0.40, None)
        better = _kept(ledger, "keep", 0.60, 0.45, base)
        _kept(ledger, "keep", 0.70, None, better)  # no holdout value: not judged
        checks = holdout_checks(ledger, "t", "maximize")
        assert [c["overfit"] for c in checks] == [False, False]
        assert checks[1]["holdout_delta"] is None
        assert "1 of 1 kept changes also improved" in render_summary(
            ledger, "t", "acc", "maximize", width=200
        )
