"""The ledger seen from outside: autoresearch's ``results.tsv`` and the status JSON.

``results.tsv`` keeps exactly the five columns of Karpathy's autoresearch (``commit``, the
metric, ``memory_gb``, ``status``, ``description``) so its ``analysis.ipynb`` runs on it:

* The metric column is named after the metric (``val_bpb`` for the GPT template, so the
  notebook runs unchanged there); another metric keeps its own name rather than pretending to
  be bits per byte. The notebook also assumes lower is better.
* ``status`` is autoresearch's vocabulary: the baseline is ``keep`` (the notebook takes the
  first kept row as the baseline), kept is ``keep``, discarded is ``discard``, and everything
  that produced no usable result (crash, timeout, oom, nan, invalid) is ``crash``, with
  ``0.000000`` and ``0.0``, as autoresearch's program.md asks. A run stopped early (pruned)
  measured no final metric either: ``pruned``, with ``0.000000``, so it is neither counted
  as a crash nor plotted as a discarded value (the notebook only plots keep and discard).
* The metric is the mean over the experiment's ok replicates (6 decimals); ``memory_gb`` is
  the largest peak memory of its runs in GiB (1 decimal); the commit is 7 characters
  (``-------`` when no commit was made, e.g. an edit that did not apply).
* Only finished baseline and candidate experiments appear; validate/ablate runs do not, nor
  do proposals skipped without running (comment-only edits and the like: no metric to show),
  nor a baseline that failed (the retried one is the baseline the notebook reads).

Files are written to a temporary name and renamed, so a kill never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from nightlab.stats import noise_floor
from nightlab.store.recorded import in_flight
from nightlab.store.spending import unrecorded_cost
from nightlab.types import Direction

if TYPE_CHECKING:
    from nightlab.store.ledger import ExperimentRow, Ledger

# Warnings the loop records once per tag (ledger meta "warning:<kind>:<tag>").
WARNING_KINDS = ("seeds", "log_metric")
TSV_STATUS = {"baseline": "keep", "keep": "keep", "discard": "discard"}


def _clean(text: str | None) -> str:
    """One line without tabs: descriptions come from agents and may contain anything."""
    return " ".join((text or "").split())


def tsv_rows(ledger: Ledger, tag: str) -> list[tuple[str, str, str, str, str]]:
    """The rows of results.tsv (header excluded), oldest experiment first."""
    rows = []
    for e in ledger.research(tag):
        if not e.finished or e.status == "skipped":
            continue
        if e.kind == "baseline" and e.decision != "baseline":
            continue  # a baseline that failed measured nothing; the retried one is the baseline
        status = TSV_STATUS.get(e.decision or "", "crash")
        runs = ledger.runs(e.id)
        memory = [r.peak_memory_mb for r in runs if r.peak_memory_mb is not None]
        if e.status == "pruned":
            metric, memory_gb, status = "0.000000", "0.0", "pruned"
        elif status == "crash" or e.metric_mean is None:
            metric, memory_gb, status = "0.000000", "0.0", "crash"
        else:
            metric = f"{e.metric_mean:.6f}"
            memory_gb = f"{max(memory) / 1024:.1f}" if memory else "0.0"
        commit = (e.commit or "")[:7] or "-------"
        rows.append((commit, metric, memory_gb, status, _clean(e.description)))
    return rows


def export_tsv(ledger: Ledger, path: Path, tag: str, metric_name: str | None = None) -> Path:
    """Write results.tsv for ``tag``; the metric column is ``metric_name``, or the ledger's
    ``metric_name`` meta value, or ``val_bpb``."""
    name = metric_name or ledger.get_meta("metric_name") or "val_bpb"
    lines = ["\t".join(("commit", name, "memory_gb", "status", "description"))]
    lines += ["\t".join(row) for row in tsv_rows(ledger, tag)]
    _atomic_write(path, "\n".join(lines) + "\n")
    return path


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _summary(ledger: Ledger, e: ExperimentRow, live: bool, sign: float) -> dict:
    metric, spread, n = e.metric_mean, e.metric_sem, e.n_runs
    if not e.finished:  # live view: what the replicates so far say
        values = ledger.ok_metrics(e.id)
        metric = sum(values) / len(values) if values else None
        n = len(ledger.runs(e.id))
    # The ledger stores the improvement (> 0 is better). ``delta`` is the metric's own change,
    # candidate minus incumbent, the sign of the "Δ" in the reason (docs/ARCHITECTURE.md).
    return {
        "id": e.id,
        "kind": e.kind,
        "commit": e.commit,
        # A "running" experiment whose harness is gone (kill -9, a crash) was interrupted: the
        # next `nightlab run` runs it again.
        "status": e.status if e.finished or live else "interrupted",
        "decision": e.decision,
        "metric": metric,
        "spread": spread,
        "runs": n,
        "delta": None if e.delta is None else sign * e.delta,
        "improvement": e.delta,
        "delta_se": e.delta_se,
        "p_value": e.p_value,
        "description": e.description,
        "reason": e.reason,
        # What the report and the dashboard show beside the description: which agent proposed
        # it, why it should help, and what the agent and the loop noted (its proposal id, the
        # files hash, a pruned run's evidence, a coding CLI's status and log). Agents see the
        # same meta in their history, so nothing here is new to them.
        "agent": e.agent,
        "hypothesis": e.hypothesis,
        "meta": e.meta if isinstance(e.meta, dict) else {},
        # Why the diff audit flagged it ([audit] mode = "mark"); None when it was not flagged.
        "audit": e.meta.get("audit") if isinstance(e.meta, dict) else None,
        "created_at": e.created_at,
        "finished_at": e.finished_at,
    }


def status_dict(ledger: Ledger, tag: str, live: bool = True) -> dict:
    """Everything ``nightlab status --json`` shows, holdout values excluded.

    The holdout stays out because agents that run commands in the workspace could read this;
    ``nightlab report`` shows it to people. ``live`` says whether a harness is working in the
    workspace (its lock is held): without one, unfinished experiments show as ``interrupted``.
    """
    research = ledger.research(tag)
    counts: dict[str, int] = {}
    for e in research:
        outcome = (
            ("running" if live else "interrupted")
            if not e.finished
            else ("skipped" if e.status == "skipped" else e.decision or e.status)
        )
        counts[outcome] = counts.get(outcome, 0) + 1
    best = ledger.incumbent(tag)
    baseline = next((e for e in research if e.decision == "baseline"), None)
    noise = noise_floor(ledger.replicate_groups(tag))
    sign = Direction(ledger.get_meta("direction") or "minimize").sign
    return {
        "tag": tag,
        "metric_name": ledger.get_meta("metric_name"),
        "direction": ledger.get_meta("direction"),
        "experiments": [_summary(ledger, e, live, sign) for e in research],
        "best": _summary(ledger, best, live, sign) if best else None,
        "baseline": _summary(ledger, baseline, live, sign) if baseline else None,
        "noise_floor": {"sd": noise.sd, "df": noise.df, "groups": noise.groups} if noise else None,
        "counts": counts,
        "total": len(research),
        # Kept changes whose val gain did not show on holdout (ids only: no holdout values here).
        "possible_val_overfit": _overfit_ids(ledger, tag, research),
        # What the user should fix for the night to be honest (a script that ignores its seed).
        "warnings": warnings(ledger, tag),
        # What each slot runs now (none without a live harness: those replicates were interrupted).
        "running": in_flight(ledger.path.parent, _running(ledger, research)) if live else [],
        # The agent's spending no experiment's cost carries (store/spending.py).
        "agent_cost_outside_experiments": unrecorded_cost(ledger, tag),
    }


def _running(ledger: Ledger, research: list) -> list[tuple[int, str, set[int]]]:
    return [
        (e.id, e.description or "", {r.replicate for r in ledger.runs(e.id)})
        for e in research
        if not e.finished
    ]


def _overfit_ids(ledger: Ledger, tag: str, research: list[ExperimentRow]) -> list[int]:
    direction = ledger.get_meta("direction") or "minimize"
    return [c["id"] for c in holdout_checks(ledger, tag, direction, research) if c["overfit"]]


def holdout_checks(
    ledger: Ledger, tag: str, direction: Direction | str, research: list[ExperimentRow] | None = None
) -> list[dict]:
    """For each kept change: its gain on val and on holdout over the code it replaced.

    ``overfit`` is True when val improved and holdout did not: the agent may be fitting the
    validation split (it sees val, never holdout). ``holdout_delta`` is None where either
    side has no holdout value. ``research`` is ``ledger.research(tag)`` when the caller has
    read it already (reading 10,000 experiments twice was a fifth of ``status``'s time).
    """
    direction = Direction(direction)
    research = ledger.research(tag) if research is None else research
    previous = next((e for e in research if e.decision == "baseline"), None)
    out = []
    for e in (e for e in research if e.decision == "keep"):
        reference = ledger.incumbent_of(e) or previous
        previous = e
        if reference is None:
            continue
        val = holdout = None
        if e.metric_mean is not None and reference.metric_mean is not None:
            val = direction.improvement(e.metric_mean, reference.metric_mean)
        if e.holdout_mean is not None and reference.holdout_mean is not None:
            holdout = direction.improvement(e.holdout_mean, reference.holdout_mean)
        overfit = val is not None and holdout is not None and val > 0 and holdout <= 0
        out.append({"id": e.id, "val_gain": val, "holdout_delta": holdout, "overfit": overfit})
    return out


def warnings(ledger: Ledger, tag: str) -> list[str]:
    """The warnings recorded for ``tag`` (each once, with its fix), oldest first."""
    found = (ledger.get_meta(f"warning:{kind}:{tag}") for kind in WARNING_KINDS)
    return [text for text in found if text]
