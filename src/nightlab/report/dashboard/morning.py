"""The morning summary: what was kept, by how much, what it cost, and what to look at.

Built from the same rows and overview the pages show (:mod:`nightlab.report.dashboard.data`),
so the summary at the top of report.html and on the live dashboard agree with the plot and the
table below them. Plain strings only: each page escapes them its own way.
"""

from __future__ import annotations

from nightlab.formatting import fixed, signed
from nightlab.store.spending import outside_text

WEAK_P = 0.01  # a keep with p above this deserves a second look (a rerun, `nightlab validate`)


def _pct(change: float, reference: float) -> str:
    return f" ({signed(100 * change / abs(reference), 2)}%)" if reference else ""


def morning(rows: list[dict], overview: dict) -> dict:
    """``headline``, ``kept`` (``{id, text}`` each), ``cost`` and ``look_at`` lines."""
    by_id = {r["id"]: r for r in rows}
    name = overview.get("metric_name") or "metric"
    baseline = by_id.get(overview.get("baseline") or -1)
    best = by_id.get(overview.get("best") or -1)
    kept = [r for r in rows if r["outcome"] == "kept"]
    total = overview.get("total", len(rows))
    if baseline is None or baseline.get("metric") is None:
        headline = f"No baseline measured yet ({total} experiments recorded)"
    elif not kept or best is None or best.get("metric") is None:
        headline = (
            f"No change kept yet after {total} experiments: {name} stays at {fixed(baseline['metric'])}"
        )
    else:
        change = best["metric"] - baseline["metric"]
        headline = (
            f"{len(kept)} change{'s' if len(kept) != 1 else ''} kept: {name} {fixed(baseline['metric'])} → "
            f"{fixed(best['metric'])}{_pct(change, baseline['metric'])} over {total} experiments"
        )
    items = []
    for r in kept:
        gain = f"Δ {signed(r['delta'])}" if r.get("delta") is not None else "Δ unknown"
        se = f" ± {fixed(r['delta_se'])}" if r.get("delta_se") is not None else ""
        p = f", p {r['p_value']:.3g}" if r.get("p_value") is not None else ""
        runs = f", {r['runs']} run{'s' if r['runs'] != 1 else ''}"
        items.append({"id": r["id"], "text": f"{r['description']}: {gain}{se}{p}{runs}"})
    return {
        "headline": headline,
        "kept": items,
        "cost": _cost_line(overview),
        "look_at": look_at(rows, overview),
    }


def _cost_line(overview: dict) -> str:
    c = overview.get("cost") or {}
    text = f"Cost: LLM {c.get('tokens', 0):,} tokens, ${c.get('usd', 0.0):.2f}"
    if c.get("outside_experiments"):
        text += outside_text(c["outside_experiments"], cents=True)
    text += f"; compute {_hours(c.get('compute_hours'))}"
    if c.get("training_share"):
        text += f" ({100 * c['training_share']:.0f}% of it training)"
    if c.get("kept"):
        text += f"; per kept change ${c.get('usd_per_kept') or 0.0:.2f} and {_hours(c.get('compute_hours_per_kept'))}"
    return text


def _hours(hours: float | None) -> str:
    hours = hours or 0.0
    return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def _ids(rows: list[dict], limit: int = 6) -> str:
    shown = ", ".join(f"#{r['id']}" for r in rows[-limit:])
    return shown if len(rows) <= limit else f"{shown} (latest {limit} of {len(rows)})"


def look_at(rows: list[dict], overview: dict) -> list[str]:
    """What deserves a person's attention before trusting the night's result."""
    out = []
    for check in overview.get("holdout_checks") or []:
        if check.get("overfit"):
            out.append(
                f"#{check['id']}: a gain on val but not on holdout: possible overfitting to the validation split"
            )
    for r in rows:
        if r["outcome"] == "kept" and r.get("p_value") is not None and r["p_value"] > WEAK_P:
            out.append(
                f"#{r['id']} was kept with p {r['p_value']:.3g}: rerun it, or check it with `nightlab validate`"
            )
        if r.get("audit"):
            out.append(f"#{r['id']} was flagged by the diff audit: {'; '.join(r['audit'])}")
    invalid = [r for r in rows if r["outcome"] == "invalid"]
    if invalid:
        out.append(f"{len(invalid)} invalid (refused edits or a changed frozen file): {_ids(invalid)}")
    crashed = [r for r in rows if r["outcome"] == "crashed"]
    if crashed:
        out.append(f"{len(crashed)} crashed: {_ids(crashed)}; their log tails are in the details")
    pruned = [r for r in rows if r["outcome"] == "pruned"]
    if pruned:
        out.append(f"{len(pruned)} stopped early, their curves hopeless against the best's: {_ids(pruned)}")
    running = [r for r in rows if r["outcome"] == "running"]
    if running:
        out.append(f"still running: {_ids(running)}")
    studies = overview.get("studies") or []
    for study in studies:
        verdicts = {a["reason"] for a in study["arms"] if a.get("reason")}
        if study.get("state") == "interrupted":  # killed with its harness, or cut off: it goes on
            out.append(f"{study['kind']} {study['study']} was interrupted: {study.get('resume', '')}")
        elif verdicts:
            out.append(f"{study['kind']} {study['study']}: {' / '.join(sorted(verdicts))}")
    if any(r["outcome"] == "kept" for r in rows) and not any(s["kind"] == "validate" for s in studies):
        out.append(
            "the kept changes are not validated at a bigger scale yet: `nightlab validate DIR --scale NAME`"
        )
    return out
