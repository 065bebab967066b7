"""``report.html``: one self-contained page to read a night's research over breakfast.

Everything is inlined (the plot as a data URI, styles in the head), so the file can be mailed
or copied off a cluster. All agent-written text is escaped, and secret values from the
environment are redacted, before it reaches the page.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from nightlab.config import MetricConfig
from nightlab.formatting import fixed
from nightlab.report.summary import render_summary
from nightlab.secrets import redact, secret_values
from nightlab.store.export import status_dict
from nightlab.store.ledger import ExperimentRow, Ledger
from nightlab.types import Direction

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:13px} td,th{padding:3px 6px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top} th{background:#f6f6f6} .keep{background:#e9f7ea} .baseline{background:#eef3fb}
.crash,.invalid{color:#a33} .skipped,.discard{color:#777} pre{background:#f8f8f8;padding:.6em;overflow-x:auto;
font-size:12px} img{max-width:100%;border:1px solid #eee} .num{text-align:right;font-variant-numeric:tabular-nums}
details summary{cursor:pointer;color:#246}
"""


def _e(text: object, secrets: list[str]) -> str:
    return html.escape(redact(str(text if text is not None else ""), secrets))


def _row(e: ExperimentRow, secrets: list[str]) -> str:
    outcome = e.decision or e.status
    diff = ""
    if e.diff:
        diff = f"<details><summary>diff</summary><pre>{_e(e.diff, secrets)}</pre></details>"
    hypothesis = f"<div><i>{_e(e.hypothesis, secrets)}</i></div>" if e.hypothesis else ""
    lesson = f"<div>lesson: {_e(e.lesson, secrets)}</div>" if e.lesson else ""
    return (
        f'<tr class="{_e(outcome, secrets)}"><td>{e.id}</td><td>{_e(outcome, secrets)}</td>'
        f'<td class="num">{fixed(e.metric_mean, missing="")}</td><td class="num">{fixed(e.metric_sem, 4, missing="")}</td>'
        f'<td class="num">{fixed(e.holdout_mean, missing="")}</td><td class="num">{e.n_runs or 0}</td>'
        f"<td>{_e(e.description, secrets)}{hypothesis}{lesson}{diff}</td><td>{_e(e.reason, secrets)}</td></tr>"
    )


def render_html(ledger: Ledger, tag: str, metric_name: str, direction: Direction, plot: Path | None) -> str:
    """The page as a string (tests read it; ``write_html_report`` writes it)."""
    secrets = secret_values(os.environ)
    status = status_dict(ledger, tag)
    summary = render_summary(ledger, tag, metric_name, direction)
    image = ""
    if plot is not None and plot.is_file():
        data = base64.b64encode(plot.read_bytes()).decode()
        image = f'<img alt="progress" src="data:image/png;base64,{data}">'
    rows = "\n".join(_row(e, secrets) for e in ledger.research(tag))
    counts = ", ".join(f"{k} {v}" for k, v in sorted(status["counts"].items()))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nightlab {_e(tag, secrets)}</title>
<style>{STYLE}</style></head><body>
<h1>nightlab: {_e(tag, secrets)}</h1>
<div>{_e(metric_name, secrets)} ({direction.value}) · {status["total"]} experiments · {_e(counts, secrets)}</div>
<h2>Progress</h2>{image}
<h2>Summary</h2><pre>{_e(summary, secrets)}</pre>
<h2>Every experiment</h2>
<table><tr><th>#</th><th>outcome</th><th>{_e(metric_name, secrets)}</th><th>± se</th><th>holdout</th>
<th>runs</th><th>description</th><th>reason</th></tr>
{rows}
</table>
</body></html>
"""


def write_html_report(ledger: Ledger, tag: str, metric: MetricConfig, path: Path) -> Path:
    """Write ``report.html`` next to progress.png (which it embeds when present)."""
    page = render_html(ledger, tag, metric.name, metric.direction, path.parent / "progress.png")
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path
