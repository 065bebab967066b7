"""The dashboard's data: the same numbers as `status --json`, changes seen cheaply, what runs now."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import edit, make_workspace, nightlab, record_timed_runs
from nightlab.errors import UserError
from nightlab.report.dashboard.data import (
    LedgerReader,
    View,
    details,
    experiment_rows,
    overview,
    without_holdout,
)
from nightlab.report.dashboard.live import Watcher
from nightlab.report.dashboard.page import script_json, static_page
from nightlab.store.ledger import Ledger
from nightlab.types import RunResult, RunStatus
from nightlab.workspace.lock import acquire

XSS = "<script>window.pwned=1</script></script><!-- {{DATA}} & <b>bold</b>"


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished toy night: a baseline, a keep, a discard, a crash, with holdout values."""
    root = make_workspace(
        tmp_path_factory.mktemp("night") / "ws",
        proposals=[
            edit("LR = 0.1", "LR = 0.3", XSS),
            edit("WIDTH = 64", "WIDTH = 8", "WIDTH 8"),
            edit("LR = 0.3", "LR = 0.3\nraise SystemExit(3)", "crashes"),
        ],
        evaluate=True,
    )
    toml = (
        (root / "nightlab.toml")
        .read_text()
        .replace('direction = "minimize"', 'direction = "minimize"\nholdout = "holdout_loss"')
    )
    (root / "nightlab.toml").write_text(toml)
    from helpers import git

    git(root, "commit", "-qam", "holdout")
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 0, res.stderr
    return root


def _tag(root: Path) -> str:
    reader = LedgerReader(root / ".nightlab" / "ledger.db")
    try:
        return reader.get_meta("current_tag") or ""
    finally:
        reader.close()


def test_rows_show_the_numbers_status_json_shows(night: Path) -> None:
    status = json.loads(nightlab("status", str(night), "--json").stdout)
    reader = LedgerReader(night / ".nightlab" / "ledger.db")
    rows = experiment_rows(reader, View(_tag(night), "val_loss", holdout=True))
    reader.close()
    assert [r["id"] for r in rows] == [e["id"] for e in status["experiments"]]
    for row, e in zip(rows, status["experiments"], strict=True):
        for ours, theirs in (("metric", "metric"), ("spread", "spread"), ("runs", "runs"), ("delta", "delta"),
                             ("p_value", "p_value"), ("decision", "decision"), ("status", "status"),
                             ("description", "description"), ("reason", "reason")):  # fmt: skip
            assert row[ours] == e[theirs], (ours, row, e)
    outcomes = [r["outcome"] for r in rows]
    assert outcomes == ["baseline", "kept", "discarded", "crashed"]
    assert all(isinstance(r["holdout"], float) for r in rows if r["outcome"] in ("baseline", "kept"))
    assert [v[1] for v in rows[0]["values"]] == [
        0 + 1000,
        1 + 1000,
    ]  # replicate seeds: run.seed + 1000*id + replicate


def test_the_ledger_reader_cannot_write(night: Path) -> None:
    reader = LedgerReader(night / ".nightlab" / "ledger.db")
    with pytest.raises(UserError, match="readonly"):
        reader.set_meta("x", "y")
    reader.close()


def test_overview_and_morning_summary(night: Path) -> None:
    reader = LedgerReader(night / ".nightlab" / "ledger.db")
    view = View(_tag(night), "val_loss", holdout=True)
    rows = experiment_rows(reader, view)
    ov = overview(reader, rows, view)
    reader.close()
    assert ov["counts"] == {"baseline": 1, "kept": 1, "discarded": 1, "crashed": 1}
    assert ov["best"] == rows[1]["id"] and ov["baseline"] == rows[0]["id"]
    assert ov["noise_floor"]["groups"] == 1  # the baseline's two replicates
    assert [c["id"] for c in ov["holdout_checks"]] == [rows[1]["id"]]
    assert ov["holdout_checks"][0]["holdout_delta"] > 0 and not ov["holdout_checks"][0]["overfit"]
    assert ov["cost"]["kept"] == 1 and ov["cost"]["compute_hours"] > 0
    morning = ov["morning"]
    assert morning["headline"].startswith("1 change kept: val_loss ")
    assert f"{rows[0]['metric']:.6f} → {rows[1]['metric']:.6f}" in morning["headline"]
    assert morning["kept"][0]["id"] == rows[1]["id"] and XSS in morning["kept"][0]["text"]
    assert any(line.startswith(f"1 crashed: #{rows[3]['id']}") for line in morning["look_at"])
    # Without the token: overfitting flags stay, holdout values go.
    public = without_holdout({"experiments": rows, "overview": ov})
    assert all("holdout" not in r for r in public["experiments"])
    assert public["overview"]["holdout_checks"] == [{"id": rows[1]["id"], "overfit": False}]


def test_details_hold_diff_replicates_seeds_log_and_metrics(night: Path) -> None:
    reader = LedgerReader(night / ".nightlab" / "ledger.db")
    tag = _tag(night)
    rows = experiment_rows(reader, View(tag, "val_loss"))
    d = details(reader, rows[1]["id"], View(tag, "val_loss"), night / ".nightlab")
    with pytest.raises(KeyError):
        details(reader, 999, View(tag, "val_loss"), night / ".nightlab")
    reader.close()
    assert "-LR = 0.1" in d["diff"] and "+LR = 0.3" in d["diff"]
    assert d["description"] == XSS
    assert d["runs"][0]["seed"] == 1000 * rows[1]["id"] and "val_loss" in d["runs"][0]["log_tail"]
    assert "val_loss" in d["runs"][0]["metrics"]
    assert all("holdout" not in k for k in d["runs"][0]["metrics"]) and "holdout" not in d["runs"][0]


def test_watcher_sees_a_new_experiment_and_what_runs_now(night: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(night, root)
    state = root / ".nightlab"
    watcher = Watcher(state, View(_tag(root), "val_loss"), command="python train.py", budget_seconds=5)
    first = watcher.poll()
    assert first is not None and len(first["experiments"]) == 4
    assert watcher.poll() is None  # nothing written: nothing to send
    harness = acquire(state)  # a live harness holds the workspace while its experiment runs
    ledger = Ledger(state / "ledger.db")
    new = ledger.add_experiment(kind="candidate", tag=_tag(root), description="in flight", commit="abc")
    ledger.add_run(
        new,
        0,
        RunResult(status=RunStatus.OK, seed=7, total_seconds=1.0),
        1.05,
        None,
        str(state / "runs" / f"{new:04d}" / "0"),
    )
    running_dir = state / "runs" / f"{new:04d}" / "1"
    running_dir.mkdir(parents=True)
    (running_dir / "run.log").write_text("".join(f"step {i} | loss {2 - i / 10:.2f}\n" for i in range(60)))
    (running_dir / "curve.jsonl").write_text(
        '{"training_seconds": 1.0, "val_loss": 1.9}\nnot json\n{"training_seconds": 2.0, "val_loss": 1.7}\n'
    )
    patch = watcher.poll()
    assert [r["id"] for r in patch["experiments"]] == [new] and patch["experiments"][0][
        "outcome"
    ] == "running"
    assert patch["experiments"][0]["metric"] == 1.05 and patch["experiments"][0]["runs"] == 1
    [slot] = patch["running"]
    assert (slot["experiment"], slot["replicate"], slot["stage"], slot["command"]) == (
        new,
        1,
        "train",
        "python train.py",
    )
    assert (
        slot["log_tail"].splitlines()[-1] == "step 59 | loss -3.90"
        and len(slot["log_tail"].splitlines()) == 40
    )
    assert slot["points"] == [[1.0, 1.9], [2.0, 1.7]]
    assert slot["elapsed"] is not None and slot["elapsed"] >= 0
    harness.release()  # the harness is gone (killed): its experiment shows as interrupted
    patch = watcher.poll()
    assert [r["outcome"] for r in patch["experiments"]] == ["interrupted"]
    ledger.finish_experiment(new, status="ok", decision="discard", reason="done", n_runs=2)
    ledger.add_run(new, 1, RunResult(status=RunStatus.OK, seed=8), 1.07, None, str(running_dir))
    ledger.close()
    patch = watcher.poll()
    assert patch["experiments"][0]["outcome"] == "discarded" and patch["running"] == []
    assert watcher.snapshot()["overview"]["counts"]["discarded"] == 2
    watcher.close()


def test_a_watcher_waits_for_a_ledger_that_does_not_exist_yet(tmp_path: Path) -> None:
    watcher = Watcher(tmp_path / ".nightlab", View("t"))
    assert watcher.poll() is None or watcher.snapshot()["experiments"] == []
    assert watcher.snapshot()["ledger"] is False
    assert not (tmp_path / ".nightlab").exists()  # looking creates nothing


def test_the_static_page_keeps_agent_text_inert() -> None:
    data = {"snapshot": {"experiments": [{"description": XSS}]}}
    page = static_page({"mode": "static", "tag": "t"}, data, "")
    block = page.split('<script id="data" type="application/json">')[1].split("</script>")[0]
    assert json.loads(block) == data  # the whole JSON survives, unbroken by </script> or {{DATA}}
    assert "<script>window.pwned" not in page and "<!--" not in block
    assert script_json({"a": "</script>"}) == '{"a":"\\u003c/script\\u003e"}'
    csp = page.split('http-equiv="Content-Security-Policy" content="')[1].split('"')[0]
    assert (
        "default-src 'none'" in csp
        and "script-src 'sha256-" in csp
        and "unsafe-inline" not in csp.split("style-src")[0]
    )


def test_validate_and_ablate_studies_are_shown_with_their_verdict(night: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(night, root)
    tag = _tag(root)
    ledger = Ledger(root / ".nightlab" / "ledger.db")
    for label, value in (("A", 1.10), ("B", 1.05)):
        exp = ledger.add_experiment(
            kind="validate", tag=None, description=f"validate {label} at gpu", agent="validate",
            meta_json={"study": "v1", "research_tag": tag, "label": label, "scale": "gpu"},
        )  # fmt: skip
        ledger.finish_experiment(exp, status="ok", metric_mean=value, metric_sem=0.01, n_runs=3,
                                 reason="transfers: B beats A by 0.05 ± 0.01 (p=0.002)")  # fmt: skip
    other = ledger.add_experiment(
        kind="ablate", tag=None, description="another tag's", meta_json={"study": "x", "research_tag": "zzz"}
    )
    ledger.close()
    reader = LedgerReader(root / ".nightlab" / "ledger.db")
    view = View(tag, "val_loss")
    rows = experiment_rows(reader, view)
    ov = overview(reader, rows, view)
    reader.close()
    [study] = ov["studies"]
    assert (study["kind"], study["study"], study["scale"]) == ("validate", "v1", "gpu")
    assert [(a["label"], a["metric"], a["runs"]) for a in study["arms"]] == [("A", 1.10, 3), ("B", 1.05, 3)]
    assert other not in [a["id"] for a in study["arms"]]
    assert "validate v1: transfers: B beats A by 0.05 ± 0.01 (p=0.002)" in ov["morning"]["look_at"]
    assert not any("not validated" in line for line in ov["morning"]["look_at"])


def test_the_cost_says_how_much_of_the_compute_was_training(tmp_path: Path) -> None:
    record_timed_runs(tmp_path / "ledger.db")
    reader = LedgerReader(tmp_path / "ledger.db")
    view = View("t", "val_bpb")
    rows = experiment_rows(reader, view)
    ov = overview(reader, rows, view)
    untrained = overview(reader, rows[1:], view, checks=[])
    reader.close()
    assert [r["training_seconds"] for r in rows] == [66.0, 0.0]
    assert ov["cost"]["training_share"] == pytest.approx(66 / 120)
    assert "compute 2.0 min (55% of it training)" in ov["morning"]["cost"]
    assert untrained["cost"]["training_share"] is None
    assert "of it training" not in untrained["morning"]["cost"]
