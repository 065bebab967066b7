"""What a tracker receives: ledger rows turned into runs (params, metrics, tags, the diff).

Every experiment becomes one run:

* params: the description and hypothesis, the agent, the commit, and the knob values: the
  search agent's full set (``knob.LR``) or, for other agents, the constants the diff assigns;
* metrics: the metric's mean over replicates (with its standard error, the improvement over
  the incumbent and its p-value), each replicate's value (step = replicate), the holdout metric, and the
  intermediate points each replicate reported (its progress points);
* tags: the decision and its reason, the outcome, the agent, the research tag;
* the diff, as an artifact.

Every text passes through :func:`nightlab.secrets.redact` first: a key that leaked into a
description or a log never reaches a tracking server.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from nightlab.metrics import read_curve_points
from nightlab.secrets import redact
from nightlab.store.ledger import Ledger
from nightlab.store.recorded import recorded_run_dir, recorded_time
from nightlab.store.schema import RESEARCH_KINDS, ExperimentRow

MAX_PARAM = 500  # characters of a description or hypothesis kept as a param
_ASSIGNMENT = re.compile(r"^\+\s*([A-Z][A-Z0-9_]*)\s*(?::[^=]+)?=\s*(.+?)\s*(?:#.*)?$")


@dataclass
class SessionRecord:
    """The research tag as a whole: what a tracker's parent run (or group) describes."""

    tag: str
    workspace: str
    metric_name: str
    direction: str
    start_commit: str | None = None
    best_id: int | None = None
    best_metric: float | None = None
    baseline_metric: float | None = None
    total: int = 0
    kept: int = 0


@dataclass
class ReplicateRecord:
    """One replicate: its seed, outcome, metric and intermediate points ``(seconds, value, step)``."""

    replicate: int
    seed: int | None
    status: str
    value: float | None
    holdout: float | None
    training_seconds: float | None
    points: list[tuple[float, float, float | None]] = field(default_factory=list)


@dataclass
class ExperimentRecord:
    """One finished experiment, ready to log."""

    id: int
    tag: str
    kind: str
    name: str
    metric_name: str
    decision: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    replicates: list[ReplicateRecord]
    diff: str
    started_ms: int | None
    finished_ms: int | None
    failed: bool


def _ms(text: str | None) -> int | None:
    moment = recorded_time(text)
    return int(moment.timestamp() * 1000) if moment is not None else None


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def read_points(run_dir: Path | None, metric_name: str) -> list[tuple[float, float, float | None]]:
    """``(training_seconds, value, step)`` of each progress point of a run (its learning curve)."""
    if run_dir is None:
        return []
    points = read_curve_points(run_dir, metric_name)
    return sorted((p["seconds"], p["value"], p.get("step")) for p in points if "seconds" in p)


def knob_params(e: ExperimentRow) -> dict[str, str]:
    """Knob values: the search agent's full set from its proposal, else the constants the diff sets."""
    meta = e.meta if isinstance(e.meta, dict) else {}
    knobs = meta.get("knobs")
    if isinstance(knobs, dict) and knobs:
        return {f"knob.{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in knobs.items()}
    found = {}
    for line in (e.diff or "").splitlines():
        if line.startswith("+++"):
            continue
        match = _ASSIGNMENT.match(line)
        if match:
            found[f"knob.{match.group(1)}"] = match.group(2)
    return found


def experiment_record(
    ledger: Ledger, e: ExperimentRow, metric_name: str, state_dir: Path, secrets: list[str]
) -> ExperimentRecord:
    """One finished experiment of the ledger as a tracker run."""

    def text(value: object, limit: int | None = None) -> str:
        clean = redact(str(value or ""), secrets)
        return clean[:limit] if limit else clean

    replicates = [
        ReplicateRecord(
            replicate=r.replicate,
            seed=r.seed,
            status=r.status,
            value=_finite(r.metric),
            holdout=_finite(r.holdout),
            training_seconds=_finite(r.training_seconds),
            points=read_points(recorded_run_dir(state_dir, r.run_dir), metric_name),
        )
        for r in ledger.runs(e.id)
    ]
    params = {
        "description": text(e.description, MAX_PARAM),
        "hypothesis": text(e.hypothesis, MAX_PARAM),
        "agent": e.agent or "",
        "kind": e.kind,
        "commit": e.commit or "",
        "base_commit": e.base_commit or "",
        "incumbent": str(e.incumbent_id or ""),
        "lines_added": str(e.lines_added or 0),
        "lines_removed": str(e.lines_removed or 0),
        **{k: text(v, MAX_PARAM) for k, v in knob_params(e).items()},
    }
    for rep in replicates:
        params[f"seed.{rep.replicate}"] = str(rep.seed)
    metrics = {
        metric_name: e.metric_mean,
        f"{metric_name}_sem": e.metric_sem,
        "improvement": e.delta,  # over the incumbent, in metric units, > 0 is better
        "improvement_se": e.delta_se,
        "p_value": e.p_value,
        "holdout": e.holdout_mean,
        "replicates": float(len(replicates)),
        "compute_seconds": float(sum(r.training_seconds or 0.0 for r in replicates)),
    }
    cost = e.cost if isinstance(e.cost, dict) else {}
    if cost.get("cost_usd") or cost.get("tokens_in"):
        metrics["llm_usd"] = float(cost.get("cost_usd") or 0.0)
        metrics["llm_tokens"] = float((cost.get("tokens_in") or 0) + (cost.get("tokens_out") or 0))
    decision = e.decision or e.status
    tags = {
        "nightlab.tag": e.tag or "",
        "nightlab.experiment_id": str(e.id),
        "nightlab.kind": e.kind,
        "decision": decision,
        "reason": text(e.reason, 5000),
        "status": e.status,
        "agent": e.agent or "",
    }
    if e.lesson:
        tags["lesson"] = text(e.lesson, 5000)
    return ExperimentRecord(
        id=e.id,
        tag=e.tag or "",
        kind=e.kind,
        name=f"#{e.id} {text(e.description, 80)}".strip(),
        metric_name=metric_name,
        decision=decision,
        params=params,
        metrics={k: v for k, v in ((k, _finite(v)) for k, v in metrics.items()) if v is not None},
        tags=tags,
        replicates=replicates,
        diff=text(e.diff),
        started_ms=_ms(e.created_at),
        finished_ms=_ms(e.finished_at),
        failed=e.status not in ("ok", "skipped"),
    )


def finished_research(ledger: Ledger, tag: str) -> list[ExperimentRow]:
    """The experiments a tracker gets: finished baselines and candidates that ran (not skipped)."""
    return [
        e
        for e in ledger.experiments(tag=tag)
        if e.kind in RESEARCH_KINDS and e.finished and e.status != "skipped"
    ]


def session_record(
    ledger: Ledger, tag: str, workspace: str, metric_name: str, direction: str
) -> SessionRecord:
    """The tag's summary as it stands: best, baseline, counts."""
    research = finished_research(ledger, tag)
    best = ledger.incumbent(tag)
    baseline = next((e for e in research if e.decision == "baseline"), None)
    return SessionRecord(
        tag=tag,
        workspace=workspace,
        metric_name=metric_name,
        direction=direction,
        start_commit=ledger.get_meta(f"start_commit:{tag}"),
        best_id=best.id if best else None,
        best_metric=best.metric_mean if best else None,
        baseline_metric=baseline.metric_mean if baseline else None,
        total=len(research),
        kept=sum(1 for e in research if e.decision == "keep"),
    )
