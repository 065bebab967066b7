"""What the harness writes beside the ledger, so that a lost ledger can be rebuilt as it was.

Git keeps every experiment's code (its ref) and the research branch; the run directories keep
the logs. What neither holds is what the harness *concluded*: a replicate's status and the
metric as read with the pattern of that night (a pattern fixed later would read an old log
differently), an experiment's decision and reason, a refused proposal. So each of those is also
written as a small JSON file, the ledger's backup, where ``nightlab recover`` looks:

* ``runs/<id>/<replicate>/replicate.json``: the replicate as the ledger's ``runs`` row has it
  (status, metric, holdout, metrics, seed, times, memory, exit code, reason, log tail);
* ``runs/<id>/experiment.json``: the finished experiment's ledger row, every column.

Written after the ledger (the ledger stays the record; these are its backup), each through a
temporary file and a rename, so a kill leaves the old file or the new one, never half of one.
An experiment with replicate files but no ``experiment.json`` had not finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from nightlab.safefile import read_bytes
from nightlab.store.schema import DECISIONS, EXPERIMENT_COLUMNS, KINDS, STATUSES, ExperimentRow
from nightlab.types import RunResult, RunStatus

EXPERIMENT_RECORD = "experiment.json"
REPLICATE_RECORD = "replicate.json"


def experiment_dir(state_dir: Path, experiment_id: int) -> Path:
    """``.nightlab/runs/<id>``: where an experiment's replicates and its record live."""
    return Path(state_dir) / "runs" / f"{experiment_id:04d}"


def save_experiment(state_dir: Path, row: ExperimentRow) -> None:
    """Write a finished experiment's ledger row to ``runs/<id>/experiment.json``."""
    _write(experiment_dir(state_dir, row.id) / EXPERIMENT_RECORD, dataclasses.asdict(row))


def save_replicate(run_dir: Path, result: RunResult, metric: float | None, holdout: float | None) -> None:
    """Write one replicate's outcome, as the ledger records it, to ``run_dir/replicate.json``."""
    data = {
        "status": result.status.value,
        "metric": metric,
        "holdout": holdout,
        "metrics": result.metrics,
        "seed": result.seed,
        "training_seconds": result.training_seconds,
        "total_seconds": result.total_seconds,
        "peak_memory_mb": result.peak_memory_mb,
        "exit_code": result.exit_code,
        "reason": result.reason,
        "log_tail": result.log_tail,
        "command": result.command,
    }
    _write(Path(run_dir) / REPLICATE_RECORD, data)


def save_role(run_dir: Path, role: str) -> None:
    """Add the replicate's role (a fresh ``compare`` or ``report`` run) to its record, which the
    runner wrote without knowing it: what a rebuilt ledger must still tell apart."""
    data = _read(Path(run_dir) / REPLICATE_RECORD)
    if data is not None:
        _write(Path(run_dir) / REPLICATE_RECORD, {**data, "role": role})


def load_role(run_dir: Path) -> str | None:
    """The role recorded for a replicate (None: a run a decision was made on)."""
    data = _read(Path(run_dir) / REPLICATE_RECORD) or {}
    role = data.get("role")
    return role if isinstance(role, str) else None


def load_experiment(folder: Path) -> dict[str, Any] | None:
    """The ledger row in ``folder/experiment.json`` (only known columns), or None."""
    data = _read(Path(folder) / EXPERIMENT_RECORD)
    if data is None or not isinstance(data.get("id"), int) or data.get("kind") is None:
        return None
    row = {k: v for k, v in data.items() if k in EXPERIMENT_COLUMNS or k == "id"}
    return row if _fits_columns(row) else None


def _fits_columns(row: dict[str, Any]) -> bool:
    """Whether a record's values fit the ledger's columns. A damaged or hand-edited record (a
    kind nightlab does not know, text where a number goes) stopped `nightlab recover` with a
    traceback, or entered the ledger; one that does not fit counts as missing, and recover
    rebuilds that experiment from git as from before the records."""
    for column, sql in EXPERIMENT_COLUMNS.items():
        value = row.get(column)
        if value is None:
            if column in row and "NOT NULL" in sql:  # an absent one gets its default
                return False
        elif sql.startswith(("REAL", "INTEGER")):
            allowed = int if sql.startswith("INTEGER") else (int, float)
            if isinstance(value, bool) or not isinstance(value, allowed):
                return False
        elif not isinstance(value, str):
            return False
    enums = {"kind": KINDS, "status": STATUSES, "decision": DECISIONS}
    return all(row.get(c) is None or row.get(c) in allowed for c, allowed in enums.items())


def load_replicate(run_dir: Path) -> tuple[RunResult, float | None, float | None] | None:
    """The replicate recorded in ``run_dir/replicate.json`` as (result, metric, holdout), or None."""
    data = _read(Path(run_dir) / REPLICATE_RECORD)
    if data is None:
        return None
    try:
        result = RunResult(
            status=RunStatus(data["status"]),
            metrics=dict(data.get("metrics") or {}),
            training_seconds=data.get("training_seconds"),
            total_seconds=float(data.get("total_seconds") or 0.0),
            peak_memory_mb=data.get("peak_memory_mb"),
            log_tail=str(data.get("log_tail") or ""),
            seed=int(data.get("seed") or 0),
            exit_code=data.get("exit_code"),
            reason=str(data.get("reason") or ""),
            command=str(data.get("command") or ""),
        )
    except (KeyError, ValueError, TypeError):
        return None
    return result, data.get("metric"), data.get("holdout")


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, sort_keys=True, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(read_bytes(path).decode("utf-8", errors="surrogateescape"))  # never via a link
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
