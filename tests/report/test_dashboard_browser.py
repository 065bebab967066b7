"""The dashboard and the static report in a real browser: Debian's chromium, driven by Playwright.

The live test runs `nightlab serve` against a workspace where `nightlab run` is researching a
slow toy target, and checks what a person would: the experiments are there, a new one appears
without reload, a diff opens, a description holding `<script>` is text, pausing without the
token is refused (403) and with it the loop pauses after the experiment it was running.
The static test opens report.html from a file:// address with every network request refused
and compares its numbers with `nightlab status --json`.

Screenshots go to $NIGHTLAB_SCREENSHOTS when set (the tmp dir otherwise).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dashboard_kit import SLOW_TRAIN, TOKEN, browser, chromium_or_skip, screenshot_dir, serving, wait_for

from helpers import edit, make_workspace, nightlab

XSS = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2> LR 0.3 <b>bold</b>"


def _count(page) -> int:  # noqa: ANN001 - a Playwright page
    text = page.inner_text("#count")
    return int(text.split()[0]) if text and text[0].isdigit() else 0


def _ledger_counts(root: Path) -> tuple[int, int]:
    conn = sqlite3.connect(f"file:{root / '.nightlab' / 'ledger.db'}?mode=ro", uri=True)
    try:
        total = conn.execute("SELECT COUNT(*) FROM experiments").fetchone()[0]
        running = conn.execute("SELECT COUNT(*) FROM experiments WHERE status = 'running'").fetchone()[0]
        return int(total), int(running)
    finally:
        conn.close()


def _loop_state(root: Path) -> str:
    try:
        return json.loads((root / ".nightlab" / "loop.json").read_text()).get("state", "")
    except (OSError, ValueError):
        return ""


@pytest.mark.slow
def test_live_dashboard_follows_a_run_and_pauses_it_with_the_token(tmp_path: Path) -> None:
    chromium_or_skip()
    proposals = [edit("LR = 0.1", "LR = 0.3", XSS)]
    proposals += [
        edit("LR = 0.3", f"LR = {0.3 + 0.01 * i:.2f}", f"LR {0.3 + 0.01 * i:.2f}") for i in range(1, 30)
    ]
    root = make_workspace(tmp_path / "ws", proposals=proposals, train=SLOW_TRAIN)
    env = {**os.environ, "TOY_SLEEP": "0.3", "TOY_STEPS": "4"}
    run = subprocess.Popen(
        [sys.executable, "-m", "nightlab.cli", "run", str(root), "--plain"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    shots = screenshot_dir(tmp_path)
    try:
        with serving(root) as base, browser() as b:
            page = b.new_page(viewport={"width": 1300, "height": 1000})
            dialogs: list[str] = []
            errors: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base)
            page.wait_for_selector("body[data-ready]", timeout=30_000)
            assert page.inner_text("#loop").startswith("loop:")
            wait_for(lambda: _count(page) >= 2, what="the baseline and a first candidate on the page")
            # A new experiment appears without reload.
            before = _count(page)
            wait_for(lambda: _count(page) > before, timeout=60, what="a new experiment to appear")
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
            # The description with <script> and HTML is shown as text, and nothing ran.
            row = page.locator("#table-body .row", has_text="LR 0.3 <b>bold</b>")
            assert row.count() == 1
            assert XSS in row.inner_text()
            assert page.evaluate("window.pwned") is None and dialogs == []
            # Its diff opens.
            row.click()
            page.wait_for_selector("#details:not([hidden]) .diff", timeout=10_000)
            assert "+LR = 0.3" in page.inner_text("#details .diff")
            assert XSS in page.inner_text("#details h2")
            page.screenshot(path=str(shots / "dashboard-details.png"))
            page.click("#details-close")
            # Running now: a slot with the command and the live log tail.
            page.wait_for_selector("#running .slot", timeout=30_000)
            assert "python train.py" in page.inner_text("#running .slot")
            page.screenshot(path=str(shots / "dashboard-live.png"), full_page=True)
            # Pause without the token: refused, and the loop goes on.
            with page.expect_response("**/api/control") as refused:
                page.click("button[data-action=pause]")
            assert refused.value.status == 403
            assert "403" in page.inner_text("#control-note")
            assert _loop_state(root) == "running"
            # With the token: the loop pauses after the current experiment.
            page.fill("#token", TOKEN)
            page.press("#token", "Enter")
            page.wait_for_selector("body[data-ready]")
            with page.expect_response("**/api/control") as accepted:
                page.click("button[data-action=pause]")
            assert accepted.value.status == 200
            wait_for(lambda: _loop_state(root) == "paused", timeout=60, what="the loop to pause")
            total, running = _ledger_counts(root)
            assert running == 0  # the experiment in flight finished first
            time.sleep(3)
            assert _ledger_counts(root) == (total, 0)  # and nothing new started
            page.wait_for_selector("#loop .paused", timeout=10_000)
            wait_for(lambda: _count(page) == total, what="the page to catch up")
            page.screenshot(path=str(shots / "dashboard-paused.png"), full_page=True)
            # Resume, then stop.
            page.click("button[data-action=resume]")
            wait_for(lambda: _ledger_counts(root)[0] > total, timeout=60, what="the loop to resume")
            page.click("button[data-action=stop]")
            out, _ = run.communicate(timeout=120)
            assert run.returncode == 0, out
            assert "paused from the dashboard" in out and "resumed from the dashboard" in out
            assert "stopped: stopped by the user" in out
            assert errors == []
    finally:
        if run.poll() is None:
            run.terminate()
            run.wait(timeout=30)


def test_static_report_opens_from_disk_without_network_with_status_numbers(tmp_path: Path) -> None:
    chromium_or_skip()
    root = make_workspace(
        tmp_path / "ws",
        proposals=[edit("LR = 0.1", "LR = 0.3", XSS), edit("WIDTH = 64", "WIDTH = 8", "WIDTH 8"),
                   edit("LR = 0.3", "LR = 0.3\nraise SystemExit(3)", "crashes")],
    )  # fmt: skip
    assert nightlab("run", str(root), "--plain").returncode == 0
    res = nightlab("report", str(root), "--html")
    assert res.returncode == 0, res.stderr
    url = next(line.split("open: ", 1)[1] for line in res.stdout.splitlines() if line.startswith("open: "))
    assert url.startswith("file://") and url.endswith("/.nightlab/report.html")
    status = json.loads(nightlab("status", str(root), "--json").stdout)
    requests: list[str] = []
    with browser() as b:
        context = b.new_context(viewport={"width": 1300, "height": 1000}, offline=True)
        context.route(
            "**/*",
            lambda route: route.continue_() if route.request.url.startswith("file://") else route.abort(),
        )
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url))
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        page.wait_for_selector("body[data-ready]", timeout=30_000)
        assert requests == [url]  # the file itself, nothing else
        assert errors == []  # no blocked resource, no CSP violation
        assert page.evaluate("window.pwned") is None
        headline = page.inner_text("#morning h2")
        best, baseline = status["best"], status["baseline"]
        assert headline == (
            f"1 change kept: val_loss {baseline['metric']:.6f} → {best['metric']:.6f} "
            f"({100 * (best['metric'] - baseline['metric']) / baseline['metric']:+.2f}%) over 4 experiments"
        ).replace("(-", "(−")
        assert _count(page) == status["total"] == 4
        for e in status["experiments"]:
            cells = page.locator(f"#table-body .row[data-id='{e['id']}'] > span").all_inner_texts()
            assert cells[0] == str(e["id"])
            assert cells[3] == (f"{e['metric']:.6f}" if e["metric"] is not None else "")
            assert cells[7] == str(e["runs"])
            assert cells[9] == e["description"] and cells[10] == e["reason"]
            if e["delta"] is not None:
                assert cells[5] == f"{e['delta']:+.6f}".replace("-", "−")
        assert page.locator("#table-body .row[data-id='2'] .o-kept").count() == 1
        page.screenshot(path=str(screenshot_dir(tmp_path) / "report-static.png"), full_page=True)
        page.click("#table-body .row[data-id='2']")
        page.wait_for_selector("#details:not([hidden]) .diff")
        assert "+LR = 0.3" in page.inner_text("#details .diff")
        context.close()
