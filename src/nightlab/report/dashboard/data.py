"""What the dashboard and the static report show, as JSON-ready dictionaries.

One builder for both: ``nightlab serve`` sends these over HTTP and ``report.html`` embeds them,
so the live page and the file cannot drift apart. Every text an agent or a training script wrote
passes through :func:`nightlab.secrets.redact` here, and holdout values are included only when
the view allows them (:attr:`View.holdout`: a person holding the dashboard's token, or the
report written for people), for the reason ``nightlab status --json`` leaves them out: a
coding agent running commands in the workspace could read an open page.

Experiment numbers are the ledger's, computed the way ``status --json`` computes them, so a
page and ``nightlab status --json`` show the same values (tests compare the two).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from nightlab.report.dashboard.morning import morning
from nightlab.secrets import redact
from nightlab.stats import mean, noise_floor
from nightlab.store.export import holdout_checks
from nightlab.store.ledger import Ledger
from nightlab.store.recorded import read_slot, recorded_run_dir
from nightlab.store.schema import RUN_FIELDS, ExperimentRow, RunRow, experiment_from_row, open_read_only
from nightlab.store.spending import unrecorded_cost
from nightlab.studies.resume import resume_hint, studies_of, study_state
from nightlab.studies.time_to_target import read_curve
from nightlab.types import Direction

# How the page colours and filters experiments; "pruned" is a status of runs stopped early.
OUTCOMES = (
    "baseline",
    "kept",
    "discarded",
    "crashed",
    "pruned",
    "invalid",
    "skipped",
    "running",
    "interrupted",
)
FAILED_STATUSES = ("crash", "timeout", "oom", "nan")


class LedgerReader(Ledger):
    """The ledger opened read-only: the dashboard watches a ledger that ``nightlab run`` writes.

    SQLite's WAL lets this second connection read while the loop writes; ``mode=ro`` makes
    sure the server can never change the research record, and opening creates nothing.
    """

    def __init__(self, path: Path) -> None:  # noqa: D107 - the base class's schema step is skipped on purpose
        self.path = Path(path)
        self._lock = threading.Lock()
        self.created = False
        self.read_only = True
        self._conn = open_read_only(self.path, check=False)

    def data_version(self) -> int:
        """SQLite's counter of commits by other connections: unchanged means nothing to re-read."""
        return int(self._read("PRAGMA data_version")[0][0])

    def running(self) -> list[ExperimentRow]:
        """Experiments of any kind still marked running (research and side studies alike)."""
        rows = self._read("SELECT * FROM experiments WHERE status = 'running' ORDER BY id")
        return [experiment_from_row(r) for r in rows]

    def signatures(self, tag: str) -> dict[int, tuple]:
        """For each research experiment of ``tag``, the columns whose change means its row must be
        read again; a cheap query even over 10,000 experiments (no diffs, no JSON)."""
        rows = self._read(
            "SELECT id, status, decision, finished_at, reason, lesson, n_runs, metric_mean FROM experiments "
            "WHERE tag = ? AND kind IN ('baseline', 'candidate') ORDER BY id",
            (tag,),
        )
        return {int(r[0]): tuple(r) for r in rows}

    def research_ids(self, ids: list[int]) -> list[ExperimentRow]:
        """The experiments with these ids, oldest first."""
        marks = ",".join("?" for _ in ids)
        rows = self._read(f"SELECT * FROM experiments WHERE id IN ({marks}) ORDER BY id", tuple(ids))
        return [experiment_from_row(r) for r in rows]

    def replicates(self, tag: str) -> dict[int, list[RunRow]]:
        """Every replicate of ``tag``'s experiments in full (log tails too), in one query."""
        rows = self._read(
            "SELECT r.* FROM runs r JOIN experiments e ON e.id = r.experiment_id WHERE e.tag = ? "
            "ORDER BY r.experiment_id, r.replicate",
            (tag,),
        )
        out: dict[int, list[RunRow]] = {}
        for r in rows:
            out.setdefault(int(r["experiment_id"]), []).append(RunRow(**{k: r[k] for k in RUN_FIELDS}))
        return out

    def tag_runs(self, tag: str, ids: list[int] | None = None) -> dict[int, list[sqlite3.Row]]:
        """The replicates of ``tag``'s experiments (only of ``ids`` when given), in one query."""
        where, args = "e.tag = ?", [tag]
        if ids is not None:
            where += f" AND r.experiment_id IN ({','.join('?' for _ in ids)})"
            args += ids
        rows = self._read(
            "SELECT r.experiment_id AS eid, r.replicate, r.seed, r.status, r.metric, r.holdout, "
            "r.total_seconds, r.training_seconds "
            f"FROM runs r JOIN experiments e ON e.id = r.experiment_id WHERE {where} "
            "ORDER BY r.experiment_id, r.replicate",
            tuple(args),
        )
        out: dict[int, list[sqlite3.Row]] = {}
        for row in rows:
            out.setdefault(int(row["eid"]), []).append(row)
        return out


@dataclass
class View:
    """For whom a page is built: the tag and metric, whether holdout values may be shown, and the
    secret values to redact from every text."""

    tag: str
    metric_name: str = "val_bpb"
    direction: Direction = Direction.MINIMIZE
    holdout: bool = False
    secrets: list[str] = field(default_factory=list)
    # False when no harness holds the workspace: a "running" experiment then was interrupted
    # (its harness died) and is shown so, as `nightlab status` does.
    harness_alive: bool = True
    # The command of the harness holding it (studies.resume.harness_kind): a study still
    # "running" in the ledger runs only under a harness of its own kind.
    harness_kind: str | None = None

    def text(self, value: object) -> str:
        return redact(str(value), self.secrets) if value not in (None, "") else ""


def outcome(e: ExperimentRow, harness_alive: bool = True) -> str:
    """One word per experiment for colours and filters (see :data:`OUTCOMES`)."""
    if e.status == "running":
        return "running" if harness_alive else "interrupted"
    if e.status == "skipped":
        return "skipped"
    if e.decision == "baseline":
        return "baseline"
    if e.decision == "keep":
        return "kept"
    if e.status == "pruned":
        return "pruned"
    if e.status == "invalid" or e.decision == "invalid":
        return "invalid"
    if e.status in FAILED_STATUSES or e.decision == "crash":
        return "crashed"
    return "discarded"


def _cost(e: ExperimentRow) -> dict:
    cost = e.cost if isinstance(e.cost, dict) else {}
    tokens = int(cost.get("tokens_in") or 0) + int(cost.get("tokens_out") or 0)
    return {"usd": float(cost.get("cost_usd") or 0.0), "tokens": tokens}


def experiment_row(e: ExperimentRow, runs: list[sqlite3.Row], view: View) -> dict:
    """One experiment as the plot and the table need it (the diff and logs are in :func:`details`)."""
    metric, n = e.metric_mean, e.n_runs
    if e.status == "running":  # what the replicates so far say, as status --json shows it
        values = [r["metric"] for r in runs if r["status"] == "ok" and r["metric"] is not None]
        metric, n = (mean(values) if values else None), len(runs)
    meta = e.meta if isinstance(e.meta, dict) else {}
    cost = _cost(e)
    row = {
        "id": e.id,
        "kind": e.kind,
        "agent": e.agent or "",
        "description": view.text(e.description),
        "outcome": outcome(e, view.harness_alive),
        "status": e.status,
        "decision": e.decision,
        "reason": view.text(e.reason),
        "metric": metric,
        "spread": e.metric_sem,
        "runs": n or 0,
        # As in status --json: the metric's own change against the incumbent (the "Δ" of the
        # reason), and the improvement the ledger stores (> 0 is better).
        "delta": None if e.delta is None else view.direction.sign * e.delta,
        "improvement": e.delta,
        "delta_se": e.delta_se,
        "p_value": e.p_value,
        "incumbent": e.incumbent_id,
        "finished_at": e.finished_at,
        "seconds": sum(r["total_seconds"] or 0.0 for r in runs),
        "training_seconds": sum(r["training_seconds"] or 0.0 for r in runs if r["total_seconds"]),
        "usd": cost["usd"],
        "tokens": cost["tokens"],
        "lesson": bool(e.lesson),
        "audit": [view.text(a) for a in meta.get("audit") or []] or None,
        # Replicates: [replicate, seed, metric or None, status]
        "values": [[r["replicate"], r["seed"], r["metric"], r["status"]] for r in runs],
    }
    if view.holdout:
        row["holdout"] = e.holdout_mean
    return row


def experiment_rows(
    ledger: LedgerReader, view: View, ids: list[int] | None = None, found: list[ExperimentRow] | None = None
) -> list[dict]:
    """The baseline and candidate experiments of the view's tag (only ``ids`` when given), oldest
    first; ``found``: those experiments when the caller read them already."""
    if ids is not None and not ids:
        return []
    runs = ledger.tag_runs(view.tag, ids)
    if found is None:
        found = ledger.research(view.tag) if ids is None else ledger.research_ids(ids)
    return [experiment_row(e, runs.get(e.id, []), view) for e in found]


def overview(ledger: LedgerReader, rows: list[dict], view: View, checks: list[dict] | None = None) -> dict:
    """Everything beside the experiments: best, noise floor, val against holdout, cost, studies."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    groups = [
        [v[2] for v in row["values"] if v[3] == "ok" and v[2] is not None]
        for row in rows
        if row["status"] != "running"
    ]
    noise = noise_floor([g for g in groups if len(g) >= 2])
    best = next((r for r in reversed(rows) if r["outcome"] in ("kept", "baseline")), None)
    baseline = next((r for r in rows if r["outcome"] == "baseline"), None)
    if checks is None:
        checks = holdout_checks(ledger, view.tag, view.direction)
    if not view.holdout:  # the flag stays (status --json shows it too), the values go
        checks = [{"id": c["id"], "overfit": c["overfit"]} for c in checks]
    kept = counts.get("kept", 0)
    outside = unrecorded_cost(ledger, view.tag)  # dropped proposals, the last lessons
    usd = sum(r["usd"] for r in rows) + outside["cost_usd"]
    tokens = sum(r["tokens"] for r in rows) + outside["tokens_in"] + outside["tokens_out"]
    ledger_seconds = sum(r["seconds"] for r in rows)
    trained = sum(r.get("training_seconds") or 0.0 for r in rows)
    result = {
        "tag": view.tag,
        "metric_name": view.metric_name,
        "direction": view.direction.value,
        "holdout_shown": view.holdout,
        "counts": counts,
        "total": len(rows),
        "best": best["id"] if best else None,
        "baseline": baseline["id"] if baseline else None,
        "noise_floor": {"sd": noise.sd, "df": noise.df, "groups": noise.groups} if noise else None,
        "holdout_checks": checks,
        "cost": {
            "usd": usd,
            "tokens": tokens,
            "compute_hours": ledger_seconds / 3600,
            # The share of the runs' wall time spent training (the rest: start-up, evaluation).
            "training_share": trained / ledger_seconds if ledger_seconds > 0 and trained > 0 else None,
            "kept": kept,
            "usd_per_kept": usd / kept if kept else None,
            "compute_hours_per_kept": ledger_seconds / 3600 / kept if kept else None,
            "outside_experiments": outside,
        },
        "studies": studies(ledger, view),
    }
    result["morning"] = morning(rows, result)
    return result


def studies(ledger: Ledger, view: View) -> list[dict]:
    """The ``validate`` and ``ablate`` studies of the view's tag, newest first, one row per arm,
    each with its state: a study whose harness was killed is ``interrupted`` (with what takes it
    up), never ``running`` for ever."""
    out = []
    for study_id, rows in studies_of(ledger, view.tag).items():
        meta = rows[0].meta if isinstance(rows[0].meta, dict) else {}
        state = study_state(rows, view.harness_kind)
        study = {
            "study": study_id,
            "kind": rows[0].kind,
            "scale": meta.get("scale"),
            "state": state,
            "arms": [],
        }
        if state == "interrupted":
            study["resume"] = resume_hint(rows, ledger.path.parent.parent)
        for e in rows:
            arm_meta = e.meta if isinstance(e.meta, dict) else {}
            runs = e.n_runs or 0
            status = e.status
            if e.status == "running":  # what it holds so far; its harness may be gone
                runs = len(ledger.runs(e.id))
                status = "running" if state == "running" else "interrupted"
            arm = {
                "id": e.id,
                "label": view.text(arm_meta.get("label") or arm_meta.get("side") or ""),
                "description": view.text(e.description),
                "status": status,
                "decision": e.decision,
                "metric": e.metric_mean,
                "spread": e.metric_sem,
                "runs": runs,
                "reason": view.text(e.reason),
            }
            if view.holdout:
                arm["holdout"] = e.holdout_mean
            study["arms"].append(arm)
        out.append(study)
    return sorted(out, key=lambda s: -max(a["id"] for a in s["arms"]))


def details(
    ledger: Ledger,
    experiment_id: int,
    view: View,
    state_dir: Path,
    logs: str = "all",
    known: tuple[ExperimentRow, list[RunRow]] | None = None,
) -> dict:
    """One experiment in full: diff, hypothesis, lesson, every replicate with its seed, metrics,
    log tail and intermediate points. KeyError when there is no such experiment.

    ``logs`` says which log tails come along: ``all`` (the live page), ``shown`` (only the one
    the page shows, the last replicate's that has one: report.html, where the others were
    megabytes nobody could see) or ``none`` (report.html for an experiment whose log does not
    matter there: ``log_note`` then says where to read it). ``known`` is the experiment and its
    replicates when the caller read them already (one query for 10,000, not 20,000 queries)."""
    e, recorded = (
        known if known is not None else (ledger.experiment(experiment_id), ledger.runs(experiment_id))
    )
    meta = e.meta if isinstance(e.meta, dict) else {}
    runs = []
    shown = next((r.replicate for r in reversed(recorded) if r.log_tail), None)
    for r in recorded:
        run_dir = recorded_run_dir(state_dir, r.run_dir)
        inlined = logs == "all" or (logs == "shown" and r.replicate == shown)
        item = {
            "replicate": r.replicate,
            "seed": r.seed,
            "status": r.status,
            "metric": r.metric,
            "metrics": {k: v for k, v in r.metrics.items() if isinstance(v, (int, float))}
            if isinstance(r.metrics, dict)
            else {},
            "training_seconds": r.training_seconds,
            "total_seconds": r.total_seconds,
            "peak_memory_mb": r.peak_memory_mb,
            "reason": view.text(r.reason),
            "log_tail": view.text(r.log_tail) if inlined else "",
            "points": read_points(run_dir, view.metric_name) if run_dir else [],
            "slot": _slot_text(run_dir),
        }
        if view.holdout:
            item["holdout"] = r.holdout
        else:
            item["metrics"] = {k: v for k, v in item["metrics"].items() if "holdout" not in k}
        runs.append(item)
    knobs = meta.get("knobs") if isinstance(meta.get("knobs"), dict) else None
    note = ""
    if logs == "none" and shown is not None:
        where = recorded_run_dir(state_dir, next(r.run_dir for r in recorded if r.replicate == shown))
        note = "not in this report (a discarded experiment): `nightlab serve` shows it"
        note += f"; its run's files are in {where}" if where is not None else ""
    return {
        "id": e.id,
        "kind": e.kind,
        "agent": e.agent or "",
        "commit": e.commit,
        "base_commit": e.base_commit,
        "description": view.text(e.description),
        "hypothesis": view.text(e.hypothesis),
        "lesson": view.text(e.lesson),
        "diff": view.text(e.diff),
        "reason": view.text(e.reason),
        "knobs": {view.text(k): view.text(v) for k, v in knobs.items()} if knobs else None,
        "cost": e.cost if isinstance(e.cost, dict) else {},
        "lines": [e.lines_added, e.lines_removed],
        "runs": runs,
        "log_note": view.text(note),
    }


def _slot_text(run_dir: Path | None) -> str:
    """Where a replicate ran, ``2 (gpu 1)``, when it ran in one of several slots."""
    where = read_slot(run_dir) if run_dir is not None else {}
    if not isinstance(where.get("slot"), int):
        return ""
    return f"{where['slot']} ({where.get('device') or '?'})"


def read_points(run_dir: Path | None, metric_name: str) -> list[list[float]]:
    """The intermediate evaluations a run reported (its progress points): ``[training_seconds, value]``."""
    if run_dir is None:
        return []
    return [[p.training_seconds, p.value] for p in read_curve(run_dir, metric_name)]


def without_holdout(payload: dict) -> dict:
    """A snapshot or patch with every holdout value removed (the overfitting flags stay), for a
    page opened without the token."""
    out = dict(payload)
    if "experiments" in out:
        out["experiments"] = [{k: v for k, v in r.items() if k != "holdout"} for r in out["experiments"]]
    if out.get("overview"):
        view = dict(out["overview"])
        view["holdout_shown"] = False
        view["holdout_checks"] = [
            {"id": c["id"], "overfit": c["overfit"]} for c in view.get("holdout_checks", [])
        ]
        view["studies"] = [
            {**s, "arms": [{k: v for k, v in a.items() if k != "holdout"} for a in s["arms"]]}
            for s in view.get("studies", [])
        ]
        out["overview"] = view
    return out
