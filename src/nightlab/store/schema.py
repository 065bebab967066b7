"""The ledger's schema: tables, columns, migrations, and the row types read from them.

Adding a column to :data:`EXPERIMENT_COLUMNS` or :data:`RUN_COLUMNS` (and the field to its row
type) is a complete migration: opening an older ledger adds whatever columns it lacks. Changes
that adding columns cannot express go in :data:`MIGRATIONS`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nightlab.errors import UserError

SCHEMA_VERSION = 1
KINDS = ("baseline", "candidate", "validate", "ablate")
# "skipped": a proposal the loop did not run because it cannot change the result.
# "pruned": stopped early because its curve was hopeless against the incumbent's.
STATUSES = ("running", "ok", "crash", "timeout", "oom", "nan", "invalid", "skipped", "pruned")
DECISIONS = ("keep", "discard", "invalid", "crash", "baseline")
JSON_COLUMNS = ("proposal_json", "meta_json", "cost_json", "metrics_json", "progress_json")

# Column -> SQL type and constraint. Adding a column here is a complete migration: opening an
# older ledger adds whatever columns it lacks (see _migrate).
EXPERIMENT_COLUMNS: dict[str, str] = {
    "kind": "TEXT NOT NULL",
    "tag": "TEXT",
    "base_commit": "TEXT",
    "commit": "TEXT",
    "agent": "TEXT",
    "description": "TEXT NOT NULL DEFAULT ''",
    "hypothesis": "TEXT",
    "diff": "TEXT",
    "proposal_json": "TEXT",
    "meta_json": "TEXT",
    "status": "TEXT NOT NULL DEFAULT 'running'",
    "decision": "TEXT",
    "reason": "TEXT",
    "metric_mean": "REAL",
    "metric_sem": "REAL",
    "n_runs": "INTEGER",
    "delta": "REAL",
    "delta_se": "REAL",
    "p_value": "REAL",
    "holdout_mean": "REAL",
    "incumbent_id": "INTEGER",
    "lines_added": "INTEGER",
    "lines_removed": "INTEGER",
    "cost_json": "TEXT",
    "lesson": "TEXT",
    # Fingerprint of the editable files (nightlab.code.changes.code_hash): the same code twice is
    # recognised and not run again.
    "code_hash": "TEXT",
    "created_at": "TEXT NOT NULL",
    "finished_at": "TEXT",
    # The "report" runs behind metric_mean, which no decision saw ([policy] remeasure); NULL:
    # metric_mean rests on the runs a decision was made on.
    "estimate_runs": "INTEGER",
}
RUN_COLUMNS: dict[str, str] = {
    "experiment_id": "INTEGER NOT NULL REFERENCES experiments(id)",
    "replicate": "INTEGER NOT NULL",
    "seed": "INTEGER",
    "status": "TEXT NOT NULL",
    "metric": "REAL",
    "holdout": "REAL",
    "metrics_json": "TEXT",
    "training_seconds": "REAL",
    "total_seconds": "REAL",
    "peak_memory_mb": "REAL",
    "exit_code": "INTEGER",
    "reason": "TEXT",
    "log_tail": "TEXT",
    "run_dir": "TEXT",
    "created_at": "TEXT NOT NULL",
    # The run's progress points while it trained (research.progress.Point dicts): its curve.
    "progress_json": "TEXT",
    # A fresh run of a kept change or the baseline (research/estimate.py): "compare" (what later
    # candidates are compared with) or "report" (what the ledger reports; no decision sees it).
    # NULL: a run a decision is made on.
    "role": "TEXT",
}
# Versioned migrations for changes that adding columns cannot express: {to_version: [sql]}.
MIGRATIONS: dict[int, list[str]] = {}


class NewerLedger(UserError):
    """A ledger written by a newer nightlab: never rebuilt, migrated or written by this one."""

    def __init__(self, path: Path, version: int) -> None:
        super().__init__(
            f"ledger {path} has schema version {version}, newer than this nightlab understands "
            f"({SCHEMA_VERSION}): upgrade nightlab"
        )


def create_sql(table: str, columns: dict[str, str], extra: str = "") -> str:
    body = ",\n  ".join(["id INTEGER PRIMARY KEY AUTOINCREMENT"] + [f'"{k}" {v}' for k, v in columns.items()])
    return f"CREATE TABLE IF NOT EXISTS {table} (\n  {body}{extra}\n)"


def open_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Pragmas, integrity check, tables, and forward migration of an older ledger."""
    conn.execute("PRAGMA busy_timeout = 30000")
    # quick_check reads the whole file, which is what catches corruption before a write
    # makes it worse; a ledger is at most a few MB.
    check = conn.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(check)
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch to WAL (journal_mode={mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise NewerLedger(path, version)
        conn.execute(create_sql("experiments", EXPERIMENT_COLUMNS))
        conn.execute(create_sql("runs", RUN_COLUMNS, ",\n  UNIQUE(experiment_id, replicate)"))
        migrate(conn, version)
        conn.execute("CREATE INDEX IF NOT EXISTS experiments_tag ON experiments(tag, id)")
        conn.execute("CREATE INDEX IF NOT EXISTS runs_experiment ON runs(experiment_id, replicate)")
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def open_read_only(path: Path, check: bool = True) -> sqlite3.Connection:
    """A connection that never writes ``path``: for readers beside a live night (the dashboard)
    and for a ledger whose file or folder is read-only.

    ``mode=ro`` first, which sees a live writer's commits; when SQLite cannot even make the WAL
    index beside the file (a read-only folder), ``immutable=1``, which reads the file as it is
    (nobody can be writing it there). ``check``: the integrity check and the schema version,
    which must be this nightlab's (no migration without write access).
    """
    from urllib.parse import quote

    last: sqlite3.Error | None = None
    for flags in ("mode=ro", "mode=ro&immutable=1"):
        wal = path.with_name(path.name + "-wal")
        if "immutable" in flags and wal.is_file() and wal.stat().st_size > 0:
            # Immutable reads skip the WAL: the night's last commits would silently be missing.
            message = (
                f"ledger {path}: its last writes are in {wal.name}, which SQLite reads only with "
                "write access to that folder; copy the workspace somewhere writable"
            )
            raise UserError(message) if check else sqlite3.OperationalError(message)
        conn = sqlite3.connect(
            f"file:{quote(str(path.resolve()))}?{flags}",
            uri=True,
            timeout=30,
            check_same_thread=False,
            isolation_level=None,
        )
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA schema_version").fetchone()  # the first read: opens the WAL index
            if not check:
                return conn  # a reader beside a first run handles missing tables itself
            if (problem := conn.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
                raise sqlite3.DatabaseError(problem)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            conn.close()
            last = exc
            if is_write_problem(exc):
                continue
            if not check:
                raise
            if is_busy(exc):
                raise LedgerBusy(path, exc) from None
            raise UserError(f"ledger {path} is corrupt or unreadable ({exc})") from None
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:  # write access would not help: say what would
            conn.close()
            raise NewerLedger(path, version)
        if version != SCHEMA_VERSION:
            conn.close()
            raise UserError(
                f"ledger {path} is read-only here and has schema version {version}, not "
                f"{SCHEMA_VERSION}: open it once with write access (or upgrade nightlab)"
            )
        return conn
    if not check and last is not None:
        raise last
    raise UserError(f"ledger {path}: cannot read it ({last}); fix its permissions")


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a ledger written by an older nightlab up to SCHEMA_VERSION, in place."""
    for target in sorted(MIGRATIONS):
        if version < target:
            for sql in MIGRATIONS[target]:
                conn.execute(sql)
    for table, columns in (("experiments", EXPERIMENT_COLUMNS), ("runs", RUN_COLUMNS)):
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns.items():
            if name not in have:
                # ALTER TABLE cannot add NOT NULL without a default; old rows get NULL.
                loose = decl.replace("NOT NULL", "").replace("REFERENCES experiments(id)", "").strip()
                conn.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {loose}')


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def loads(text: str | None) -> Any:
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return {}


@dataclass
class ExperimentRow:
    """One experiment as stored; ``*_json`` columns are also available parsed (``.meta``)."""

    id: int
    kind: str
    tag: str | None
    base_commit: str | None
    commit: str | None
    agent: str | None
    description: str
    hypothesis: str | None
    diff: str | None
    proposal_json: str | None
    meta_json: str | None
    status: str
    decision: str | None
    reason: str | None
    metric_mean: float | None
    metric_sem: float | None
    n_runs: int | None
    delta: float | None
    delta_se: float | None
    p_value: float | None
    holdout_mean: float | None
    incumbent_id: int | None
    lines_added: int | None
    lines_removed: int | None
    cost_json: str | None
    lesson: str | None
    code_hash: str | None
    created_at: str
    finished_at: str | None
    estimate_runs: int | None = None

    @property
    def meta(self) -> dict:
        return loads(self.meta_json)

    @property
    def proposal(self) -> dict:
        return loads(self.proposal_json)

    @property
    def cost(self) -> dict:
        return loads(self.cost_json)

    @property
    def finished(self) -> bool:
        return self.status != "running"


@dataclass
class RunRow:
    """One replicate run of an experiment."""

    id: int
    experiment_id: int
    replicate: int
    seed: int | None
    status: str
    metric: float | None
    holdout: float | None
    metrics_json: str | None
    training_seconds: float | None
    total_seconds: float | None
    peak_memory_mb: float | None
    exit_code: int | None
    reason: str | None
    log_tail: str | None
    run_dir: str | None
    created_at: str
    progress_json: str | None = None
    role: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return loads(self.metrics_json)

    @property
    def progress(self) -> list[dict]:
        """The run's progress points (``x``, ``value``, ``step``, ``seconds``, ``tokens``)."""
        data = loads(self.progress_json)
        return data if isinstance(data, list) else []


EXPERIMENT_FIELDS = [f.name for f in fields(ExperimentRow)]
RUN_FIELDS = [f.name for f in fields(RunRow)]
# The kinds whose experiments form the research history; validate/ablate runs are side studies.
RESEARCH_KINDS = ("baseline", "candidate")


def experiment_from_row(row: sqlite3.Row) -> ExperimentRow:
    return ExperimentRow(**{k: row[k] for k in EXPERIMENT_FIELDS})


class LedgerBusy(UserError):
    """Another process held the ledger locked past SQLite's 30 s wait: the file is fine (it was
    called corrupt, with `nightlab recover` as the fix, which would have moved it aside)."""

    def __init__(self, path: Path, exc: sqlite3.Error) -> None:
        super().__init__(
            f"ledger {path} is locked by another process ({exc}) for over 30 s: close what holds it "
            "(a SQLite browser, a backup or copy in progress) and run the command again; the file is fine"
        )


def is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds a lock the wait did not outlast."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (5, 6) or "database is locked" in str(exc).lower()


def write_problem(path: Path, exc: sqlite3.Error, then: str = "") -> UserError:
    """The one line for a write that failed: the ledger locked by another process, or a full
    disk, a read-only file or folder (``then``: what to do once fixed)."""
    if is_busy(exc):
        return LedgerBusy(path, exc)
    return UserError(f"ledger {path}: cannot write ({exc}); free disk space or fix permissions{then}")


def is_write_problem(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return any(
        s in text for s in ("disk is full", "readonly", "read-only", "disk i/o error", "unable to open")
    )


if set(EXPERIMENT_FIELDS) != set(EXPERIMENT_COLUMNS) | {"id"} or set(RUN_FIELDS) != set(RUN_COLUMNS) | {"id"}:
    raise RuntimeError("ExperimentRow/RunRow and the schema disagree: add the column to both")
