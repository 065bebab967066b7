"""How fast the dashboard is with a large ledger: 10,000 experiments in Chromium, and a new one.

Builds a synthetic workspace ledger (N experiments of one tag with two replicates each, a mix
of kept, discarded, crashed and invalid, diffs, reasons and log tails), starts ``nightlab serve``
on it, and measures with Playwright driving Debian's chromium (headless):

1. the server: seconds to build the whole state once (``/api/state``, as a page's snapshot);
2. the page: from navigation start until the plot and the table are drawn with every
   experiment (``body[data-ready]`` and two animation frames after it);
3. a new experiment: from the commit of a new row to the ledger (by another connection, as
   ``nightlab run`` writes it) until the page shows it, without reload;
4. the static report: writing ``report.html`` for the same ledger, its size, and the time to
   open it from ``file://`` until drawn.

Run: ``.venv/bin/python benchmarks/dashboard_speed.py [--experiments 10000] [--repeat 3]``.
Needs chromium at /usr/bin/chromium (``apt-get install chromium``) and the dev extra.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOML = """\
[target]
editable = ["train.py"]
run = "python train.py"
[metric]
name = "val_bpb"
direction = "minimize"
[run]
tag = "bench"
"""
DIFF = "--- a/train.py\n+++ b/train.py\n@@ -1,3 +1,3 @@\n-LR = 0.1\n+LR = {lr}\n WIDTH = 64\n"


def synthetic_ledger(root: Path, n: int, tag: str = "bench", seed: int = 0) -> Path:
    """A workspace folder with nightlab.toml and a ledger of ``n`` experiments of ``tag``."""
    from nightlab.store.ledger import Ledger

    root.mkdir(parents=True, exist_ok=True)
    (root / "nightlab.toml").write_text(TOML)
    path = root / ".nightlab" / "ledger.db"
    Ledger(path).close()  # the schema, as nightlab creates it
    rng = random.Random(seed)
    best = 1.5
    experiments, runs = [], []
    now = "2026-01-01T00:00:00+00:00"
    for i in range(1, n + 1):
        kind = "baseline" if i == 1 else "candidate"
        roll = rng.random()
        values = [best + rng.gauss(0.01, 0.01) for _ in range(2)]
        status, decision = "ok", "discard"
        if i == 1:
            decision = "baseline"
        elif roll < 0.05:
            status, decision, values = "crash", "crash", []
        elif roll < 0.07:
            status, decision, values = "invalid", "invalid", []
        elif roll < 0.12:
            values = [best - abs(rng.gauss(0.004, 0.002)) for _ in range(2)]
            decision = "keep"
        metric = sum(values) / len(values) if values else None
        if decision == "keep" and metric is not None:
            best = metric
        experiments.append(
            (i, kind, tag, f"{i:040x}", "search", f"LR {0.1 + i * 1e-5:.5f}, WIDTH {64 + i % 7}",
             "a hypothesis " * 3, DIFF.format(lr=0.1 + i * 1e-5), status, decision,
             f"Δ {rng.gauss(0, 0.01):+.5f} ± 0.00300 (2 runs), {decision}", metric,
             0.002 if metric is not None else None, len(values) or 1, now, now)
        )  # fmt: skip
        for r, value in enumerate(values or [None]):
            runs.append(
                (i, r, 1000 * i + r, "ok" if value is not None else status, value, 30.0, 31.0,
                 "step 100 | loss 3.2\n---\nval_bpb: 1.23\n", str(root / ".nightlab" / "runs" / f"{i:04d}" / str(r)), now)
            )  # fmt: skip
    insert_rows(path, experiments, runs, {"current_tag": tag})
    return path


def insert_rows(path: Path, experiments: list[tuple], runs: list[tuple], meta: dict[str, str]) -> None:
    """Write synthetic experiment and run rows (and ``meta`` keys) into the ledger at ``path``,
    made by nightlab's own schema; shared with status_report_speed.py."""
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            'INSERT INTO experiments (id, kind, tag, "commit", agent, description, hypothesis, diff, status, '
            "decision, reason, metric_mean, metric_sem, n_runs, created_at, finished_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            experiments,
        )
        conn.executemany(
            "INSERT INTO runs (experiment_id, replicate, seed, status, metric, training_seconds, total_seconds, "
            "log_tail, run_dir, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            runs,
        )
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta.items())
    conn.close()


def add_experiment(path: Path, tag: str = "bench") -> int:
    """One more finished experiment, committed the way the loop commits: returns its id."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.execute(
            "INSERT INTO experiments (kind, tag, description, status, decision, reason, metric_mean, n_runs, "
            "created_at, finished_at) VALUES ('candidate', ?, 'a new experiment', 'ok', 'discard', 'late', 1.6, 1, "
            "'2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00')",
            (tag,),
        )
        conn.execute("COMMIT")
        return int(cur.lastrowid)
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


DRAWN = (
    "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(performance.now()))))"
)


def measure(n: int, repeat: int) -> dict:
    from playwright.sync_api import sync_playwright

    from nightlab.config import MetricConfig
    from nightlab.report.html import write_html_report
    from nightlab.store.ledger import Ledger

    out: dict = {"experiments": n}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        started = time.perf_counter()
        path = synthetic_ledger(root, n)
        out["ledger_seconds"] = time.perf_counter() - started
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "nightlab.cli", "serve", str(root), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "NIGHTLAB_DASHBOARD_TOKEN": "benchmark-token-0123456789"},
        )
        base = f"http://127.0.0.1:{port}/"
        try:
            wait_http(base + "api/state")
            state_times = []
            for _ in range(repeat):
                t = time.perf_counter()
                body = urllib.request.urlopen(base + "api/state", timeout=60).read()
                state_times.append(time.perf_counter() - t)
            out["state_bytes"] = len(body)
            out["state_request_seconds"] = statistics.median(state_times)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                loads, news = [], []
                for _ in range(repeat):
                    page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
                    page.goto(base)
                    page.wait_for_selector("body[data-ready]", timeout=60_000)
                    loads.append(page.evaluate(DRAWN) / 1000)
                    shown = page.inner_text("#count")
                    assert shown.startswith(f"{n + len(news)} "), shown
                    new_id = add_experiment(path)
                    t = time.perf_counter()
                    page.wait_for_function(
                        f"document.querySelector('#count').textContent.startsWith('{n + len(news) + 1} ')",
                        timeout=30_000,
                        polling="raf",
                    )
                    news.append(time.perf_counter() - t)
                    assert new_id
                    page.close()
                out["page_load_seconds"] = loads
                out["new_experiment_seconds"] = news
                # The static report of the same ledger.
                ledger = Ledger(path)
                t = time.perf_counter()
                report = write_html_report(
                    ledger, "bench", MetricConfig(name="val_bpb"), root / "report.html"
                )
                out["report_write_seconds"] = time.perf_counter() - t
                ledger.close()
                out["report_bytes"] = report.stat().st_size
                opens = []
                for _ in range(repeat):
                    page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
                    page.goto(report.as_uri())
                    page.wait_for_selector("body[data-ready]", timeout=60_000)
                    opens.append(page.evaluate(DRAWN) / 1000)
                    page.close()
                out["report_open_seconds"] = opens
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} not found: apt-get install chromium")
    result = measure(args.experiments, args.repeat)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
