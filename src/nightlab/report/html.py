"""``report.html``: the dashboard's views in one self-contained file, to read over breakfast.

The same page as ``nightlab serve`` (:mod:`nightlab.report.dashboard.page`) with the data
inlined: the interactive progress plot, the experiments table with every experiment's diff,
replicates and log tail (a discarded experiment's only when it is among the newest: see
:func:`inlined_logs`), the noise floor, val against holdout, cost, and the validate and
ablate studies. It opens from disk with no server and no network (its Content-Security-Policy
forbids any request), so it can be mailed or copied off a cluster.

At its top, written in plain HTML so it reads even where scripts are off (a mail preview), the
morning summary: what was kept, by how much, what it cost, and what to look at. All agent-written
text is escaped, and secret values from the environment are redacted, before it reaches the file.
"""

from __future__ import annotations

import base64
import html
import os
from datetime import datetime, timezone
from pathlib import Path

from nightlab.config import MetricConfig
from nightlab.report.dashboard.data import LedgerReader, View, details, experiment_rows, overview
from nightlab.report.dashboard.page import static_page
from nightlab.report.files import write_atomically
from nightlab.report.summary import render_summary
from nightlab.secrets import redact, secret_values
from nightlab.store.ledger import Ledger
from nightlab.studies.resume import harness_kind
from nightlab.types import Direction

# The newest experiments keep their log tail in the report whatever their outcome.
NEWEST_LOGS = 50


def inlined_logs(rows: list[dict]) -> set[int]:
    """The experiments whose log tail report.html carries: every one but a discarded one, an
    audit-flagged one whatever it is, and the newest ``NEWEST_LOGS``. Every replicate's 2 KB log
    of 10,000 experiments was 4/5 of a 50 MB page; a discarded experiment's metric, reason,
    replicates and diff stay, and its log is a click away in ``nightlab serve``."""
    keep = {r["id"] for r in rows if r["outcome"] != "discarded" or r.get("audit")}
    return keep | {r["id"] for r in rows[max(0, len(rows) - NEWEST_LOGS) :]}


def report_data(ledger: Ledger, view: View, state_dir: Path) -> dict:
    """What the page embeds: the snapshot the live dashboard would send, and every experiment's
    details (the live page fetches those one at a time), read in two queries."""
    reader = LedgerReader(ledger.path)
    try:
        found = reader.research(view.tag)
        rows = experiment_rows(reader, view, found=found)
        snapshot = {
            "experiments": rows,
            "overview": overview(reader, rows, view),
            "running": [],
            "loop": {},
        }
        replicates = reader.replicates(view.tag)
        logs = inlined_logs(rows)
        every = {
            str(e.id): details(
                reader,
                e.id,
                view,
                state_dir,
                "shown" if e.id in logs else "none",
                (e, replicates.get(e.id, [])),
            )
            for e in found
        }
    finally:
        reader.close()
    return {"snapshot": snapshot, "details": every}


def morning_html(summary: dict) -> str:
    """The morning summary as escaped HTML (the page's first section)."""
    e = html.escape
    kept = "".join(f"<li>#{item['id']} {e(item['text'])}</li>" for item in summary["kept"])
    look = "".join(f"<li>{e(line)}</li>" for line in summary["look_at"])
    return (
        f'<section class="morning" id="morning"><h2>{e(summary["headline"])}</h2>'
        + (f"<ul>{kept}</ul>" if kept else "")
        + f"<div>{e(summary['cost'])}</div>"
        + (f'<div class="look"><b>What to look at</b><ul>{look}</ul></div>' if look else "")
        + "</section>"
    )


def render_html(
    ledger: Ledger,
    tag: str,
    metric_name: str,
    direction: Direction,
    plot: Path | None,
    state_dir: Path | None = None,
) -> str:
    """The page as a string (tests read it; :func:`write_html_report` writes it)."""
    secrets = secret_values(os.environ)
    state_dir = state_dir or ledger.path.parent
    # Who holds the workspace now: an experiment or study still "running" in the ledger whose
    # harness was killed is shown as interrupted, as `nightlab status` shows it.
    kind = harness_kind(state_dir)
    view = View(
        tag,
        metric_name,
        Direction(direction),
        holdout=True,
        secrets=secrets,
        harness_alive=kind is not None,
        harness_kind=kind,
    )
    data = report_data(ledger, view, state_dir)
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    top = morning_html(data["snapshot"]["overview"]["morning"])
    top += f'<p class="muted">Written {written}; <code>nightlab report --html</code> writes it again.</p>'
    fallback = ""
    if plot is not None and plot.is_file():
        image = base64.b64encode(plot.read_bytes()).decode()
        fallback = f'<img alt="progress" src="data:image/png;base64,{image}" style="max-width:100%">'
    summary = render_summary(ledger, tag, metric_name, direction, live=kind is not None, harness_kind=kind)
    text = html.escape(redact(summary, secrets))
    top += (
        "<noscript><p>The plot and the tables below need JavaScript; here are the static plot and the "
        f"summary instead.</p>{fallback}<pre>{text}</pre></noscript>"
    )
    boot = {"mode": "static", "tag": tag, "metric_name": metric_name, "direction": Direction(direction).value}
    return static_page(boot, data, top)


def report_page(ledger: Ledger, tag: str, metric: MetricConfig) -> str:
    """The self-contained page of :func:`write_html_report` as text (``report --out -`` prints
    it): the progress.png and run directories beside the ledger, never beside where it goes."""
    reports = ledger.path.parent
    return render_html(ledger, tag, metric.name, metric.direction, reports / "progress.png", reports)


def write_html_report(ledger: Ledger, tag: str, metric: MetricConfig, path: Path) -> Path:
    """Write the self-contained report to ``path`` (embedding the progress.png beside the ledger,
    for readers without JavaScript, when present: never a file that happens to lie beside
    ``path``); the run directories are those beside the ledger."""
    page = report_page(ledger, tag, metric)
    if path.exists() and not path.is_file():
        # /dev/stdout, a pipe, a device: written into, never replaced. Replacing /dev/null (as
        # `--out /dev/null` did) turns it into a file of the report for the whole machine.
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(page)
        return path
    return write_atomically(path, lambda handle: handle.write(page.encode("utf-8")))
