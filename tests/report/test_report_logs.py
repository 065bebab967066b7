"""Which log tails report.html carries. Every replicate's 2 KB log of 10,000 experiments was
4/5 of a 50 MB page (benchmarks/status_report_speed.py); the page shows one log per experiment,
the last replicate's, so only that one goes in, and a discarded experiment that is not among the
newest says where its log is instead. Everything else about every experiment stays."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from dashboard_kit import browser, chromium_or_skip

from helpers import edit, make_workspace, nightlab
from nightlab.config import MetricConfig
from nightlab.report import html
from nightlab.report.dashboard.data import View
from nightlab.report.html import NEWEST_LOGS, report_data, write_html_report
from nightlab.store.ledger import Ledger

N = NEWEST_LOGS + 20


def many(path: Path) -> Path:
    """A ledger of ``N`` experiments with two replicates each, each run's log naming itself."""
    Ledger(path).close()
    conn = sqlite3.connect(path)
    with conn:
        for i in range(1, N + 1):
            decision = "baseline" if i == 1 else "keep" if i == 4 else "crash" if i == 6 else "discard"
            status = "crash" if decision == "crash" else "ok"
            conn.execute(
                "INSERT INTO experiments (id, kind, tag, description, diff, status, decision, metric_mean, n_runs, "
                "created_at, finished_at) VALUES (?, ?, 't', ?, ?, ?, ?, 1.0, 2, 'x', 'x')",
                (i, "baseline" if i == 1 else "candidate", f"change {i}", f"+LR = {i}\n", status, decision),
            )
            for r in range(2):
                conn.execute(
                    "INSERT INTO runs (experiment_id, replicate, seed, status, metric, log_tail, created_at) "
                    "VALUES (?, ?, ?, ?, 1.0, ?, 'x')",
                    (i, r, r, status, f"log of {i}/{r}"),
                )
    conn.close()
    return path


def tails(d: dict) -> list[str]:
    return [run["log_tail"] for run in d["runs"]]


def test_the_report_carries_the_log_tails_that_matter_and_says_where_the_others_are(tmp_path: Path) -> None:
    path = many(tmp_path / "ledger.db")
    with Ledger(path) as ledger:
        data = report_data(ledger, View("t", "val_loss"), tmp_path)
    every = data["details"]
    assert sorted(int(k) for k in every) == list(range(1, N + 1))  # every experiment is there
    for i in (1, 4, 6, N - NEWEST_LOGS + 1, N):  # baseline, kept, crashed, the newest
        assert tails(every[str(i)]) == ["", f"log of {i}/1"] and every[str(i)]["log_note"] == ""
    old = every["5"]  # discarded, older than the newest
    assert (
        tails(old) == ["", ""]
        and old["diff"] == "+LR = 5\n"
        and [r["metric"] for r in old["runs"]] == [1.0, 1.0]
    )
    assert old["log_note"] == "not in this report (a discarded experiment): `nightlab serve` shows it"
    assert every[str(N - NEWEST_LOGS)]["log_note"] and not every[str(N - NEWEST_LOGS + 1)]["log_note"]


@pytest.mark.slow
def test_the_static_page_shows_the_note_where_a_log_was_left_out(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    chromium_or_skip()
    proposals = [edit("LR = 0.1", "LR = 0.3", "up"), edit("WIDTH = 64", "WIDTH = 8", "narrow")]
    root = make_workspace(tmp_path / "ws", proposals=proposals)
    assert nightlab("run", str(root), "--plain").returncode == 0
    monkeypatch.setattr(html, "NEWEST_LOGS", 0)  # as if these were old experiments of a long night
    with Ledger(root / ".nightlab" / "ledger.db") as ledger:
        outcomes = {e.id: e.decision for e in ledger.research(ledger.get_meta("current_tag"))}
        report = write_html_report(
            ledger, ledger.get_meta("current_tag"), MetricConfig(name="val_loss"), tmp_path / "r.html"
        )
    discarded = next(i for i, d in outcomes.items() if d == "discard")
    with browser() as b:
        page = b.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(report.as_uri())
        page.wait_for_selector("body[data-ready]", timeout=30_000)
        page.click(f"#table-body .row[data-id='{discarded}']")
        page.wait_for_selector("#details:not([hidden]) .diff")
        body = page.inner_text("#details")
        assert (
            "not in this report (a discarded experiment): `nightlab serve` shows it; its run's files are in"
            in body
        )
        assert page.locator("#details .log").count() == 0
        page.click("#details-close")
        page.click("#table-body .row[data-id='1']")  # the baseline keeps its log
        page.wait_for_selector("#details:not([hidden]) .log")
        assert "not in this report" not in page.inner_text("#details")
