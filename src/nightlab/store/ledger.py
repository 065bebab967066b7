"""The experiment store: one SQLite file that survives any crash of nightlab.

Durability is the whole point: the loop writes here, and the write is committed, before it moves
any git state, so a ``kill -9`` at any instant leaves a ledger that describes everything done
so far (an experiment still ``running`` is simply re-run on resume).

* WAL journal, so ``nightlab status`` can read while ``nightlab run`` writes.
* ``synchronous=FULL``: a commit survives power loss too, not just a killed process. The ledger
  sees a handful of writes per experiment (minutes apart), so the extra fsync costs nothing
  measurable, and NORMAL would buy nothing.
* One connection per process, every write its own short transaction.
* A ``meta`` table holds the schema version; opening an older ledger migrates it forward.

Example::

    with Ledger(Path(".nightlab/ledger.db")) as ledger:
        exp = ledger.add_experiment(kind="candidate", tag="nov22", description="LR 0.02")
        ledger.add_run(exp, 0, result, metric=0.998, holdout=None, run_dir=".nightlab/runs/2/0")
        ledger.finish_experiment(exp, status="ok", decision="discard", reason="...")
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nightlab.errors import UserError
from nightlab.types import HistoryEntry, RunResult

SCHEMA_VERSION = 1
KINDS = ("baseline", "candidate", "validate", "ablate")
# "skipped": a proposal the loop did not run because it cannot change the result.
STATUSES = ("running", "ok", "crash", "timeout", "oom", "nan", "invalid", "skipped")
DECISIONS = ("keep", "discard", "invalid", "crash", "baseline")
JSON_COLUMNS = ("proposal_json", "meta_json", "cost_json", "metrics_json")

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
    "created_at": "TEXT NOT NULL",
    "finished_at": "TEXT",
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
}
# Versioned migrations for changes that adding columns cannot express: {to_version: [sql]}.
MIGRATIONS: dict[int, list[str]] = {}


def _create_sql(table: str, columns: dict[str, str], extra: str = "") -> str:
    body = ",\n  ".join(["id INTEGER PRIMARY KEY AUTOINCREMENT"] + [f'"{k}" {v}' for k, v in columns.items()])
    return f"CREATE TABLE IF NOT EXISTS {table} (\n  {body}{extra}\n)"


def _open_schema(conn: sqlite3.Connection, path: Path) -> None:
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
            raise UserError(
                f"ledger {path} has schema version {version}, newer than this nightlab understands "
                f"({SCHEMA_VERSION}): upgrade nightlab"
            )
        conn.execute(_create_sql("experiments", EXPERIMENT_COLUMNS))
        conn.execute(_create_sql("runs", RUN_COLUMNS, ",\n  UNIQUE(experiment_id, replicate)"))
        _migrate(conn, version)
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


def _migrate(conn: sqlite3.Connection, version: int) -> None:
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _loads(text: str | None) -> Any:
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
    created_at: str
    finished_at: str | None

    @property
    def meta(self) -> dict:
        return _loads(self.meta_json)

    @property
    def proposal(self) -> dict:
        return _loads(self.proposal_json)

    @property
    def cost(self) -> dict:
        return _loads(self.cost_json)

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

    @property
    def metrics(self) -> dict[str, float]:
        return _loads(self.metrics_json)


_EXPERIMENT_FIELDS = [f.name for f in fields(ExperimentRow)]
_RUN_FIELDS = [f.name for f in fields(RunRow)]
# The kinds whose experiments form the research history; validate/ablate runs are side studies.
_RESEARCH_KINDS = ("baseline", "candidate")


class Ledger:
    """The SQLite ledger at ``path`` (created with its parent directories when missing).

    ``created`` tells whether this open made a new file: a loop that finds experiment refs in
    git but a fresh ledger knows the ledger was lost (see docs/RECOVERY.md).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"ledger {self.path}: cannot create its directory ({exc.strerror})") from None
        self.created = not self.path.exists() or self.path.stat().st_size == 0
        try:
            # check_same_thread=False: parallel workers may record from threads; the lock
            # serialises them on the one connection.
            self._conn = sqlite3.connect(
                str(self.path), timeout=30, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise UserError(f"ledger {self.path}: cannot open ({exc})") from None
        self._conn.row_factory = sqlite3.Row
        try:
            _open_schema(self._conn, self.path)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if _is_write_problem(exc):
                raise UserError(
                    f"ledger {self.path}: cannot write ({exc}); free disk space or fix permissions"
                ) from None
            raise UserError(f"ledger {self.path} is corrupt ({exc}): see docs/RECOVERY.md") from None
        except UserError:
            self._conn.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short immediate transaction; disk-full and read-only become UserErrors."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if _is_write_problem(exc):
                    raise UserError(
                        f"ledger {self.path}: cannot write ({exc}); free disk space or fix permissions, "
                        "then rerun `nightlab run` to continue"
                    ) from None
                raise

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- meta ------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, str(value)),
            )

    # -- writes ----------------------------------------------------------------------------
    def add_experiment(self, **values: Any) -> int:
        """A new experiment (status ``running`` unless given); returns its id.

        ``*_json`` columns accept a dict (serialised here) or a string.
        """
        values.setdefault("status", "running")
        values.setdefault("description", "")
        values.setdefault("created_at", _now())
        if "kind" not in values:
            raise ValueError("add_experiment needs kind=")
        row = self._clean(values, EXPERIMENT_COLUMNS)
        names = ", ".join(f'"{k}"' for k in row)
        marks = ", ".join("?" for _ in row)
        with self._write() as conn:
            cur = conn.execute(f"INSERT INTO experiments ({names}) VALUES ({marks})", tuple(row.values()))
            return int(cur.lastrowid)

    def add_run(
        self,
        experiment_id: int,
        replicate: int,
        result: RunResult,
        metric: float | None,
        holdout: float | None,
        run_dir: str,
    ) -> None:
        """Record one replicate; recording the same (experiment, replicate) again replaces it.

        Replacement is what makes resume safe: a replicate re-run after a crash of nightlab
        overwrites whatever half-state the first attempt left, instead of counting twice.
        """
        row = {
            "experiment_id": experiment_id,
            "replicate": replicate,
            "seed": result.seed,
            "status": result.status.value,
            "metric": metric,
            "holdout": holdout,
            "metrics_json": json.dumps(result.metrics, sort_keys=True),
            "training_seconds": result.training_seconds,
            "total_seconds": result.total_seconds,
            "peak_memory_mb": result.peak_memory_mb,
            "exit_code": result.exit_code,
            "reason": result.reason,
            "log_tail": result.log_tail,
            "run_dir": str(run_dir),
            "created_at": _now(),
        }
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        updates = ", ".join(f"{k} = excluded.{k}" for k in row if k not in ("experiment_id", "replicate"))
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO runs ({names}) VALUES ({marks}) "
                f"ON CONFLICT(experiment_id, replicate) DO UPDATE SET {updates}",
                tuple(row.values()),
            )

    def finish_experiment(self, experiment_id: int, **values: Any) -> None:
        """Set the outcome columns (status, decision, reason, metric_mean, ...) and finished_at."""
        values.setdefault("finished_at", _now())
        self._update(experiment_id, values)

    def update_experiment(self, experiment_id: int, **values: Any) -> None:
        """Change columns of an experiment without finishing it (e.g. its commit once made)."""
        self._update(experiment_id, values)

    def set_lesson(self, experiment_id: int, text: str) -> None:
        self._update(experiment_id, {"lesson": text})

    def _update(self, experiment_id: int, values: dict[str, Any]) -> None:
        row = self._clean(values, EXPERIMENT_COLUMNS)
        if not row:
            return
        sets = ", ".join(f'"{k}" = ?' for k in row)
        with self._write() as conn:
            cur = conn.execute(f"UPDATE experiments SET {sets} WHERE id = ?", (*row.values(), experiment_id))
            if cur.rowcount != 1:
                raise KeyError(f"no experiment {experiment_id} in {self.path}")

    @staticmethod
    def _clean(values: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
        """Check names and enumerations (caller bugs raise ValueError), serialise JSON columns."""
        unknown = set(values) - set(columns) - {"id"}
        if unknown:
            raise ValueError(f"unknown ledger column(s): {', '.join(sorted(unknown))}")
        for column, allowed in (("kind", KINDS), ("status", STATUSES), ("decision", DECISIONS)):
            if column in values and values[column] is not None and values[column] not in allowed:
                raise ValueError(f"{column} must be one of {', '.join(allowed)}, not {values[column]!r}")
        out = dict(values)
        for key in JSON_COLUMNS:
            if key in out and out[key] is not None and not isinstance(out[key], str):
                out[key] = json.dumps(out[key], sort_keys=True, default=str)
        return out

    # -- reads -----------------------------------------------------------------------------
    def experiment(self, experiment_id: int) -> ExperimentRow:
        rows = self._read("SELECT * FROM experiments WHERE id = ?", (experiment_id,))
        if not rows:
            raise KeyError(f"no experiment {experiment_id} in {self.path}")
        return _experiment(rows[0])

    def experiments(self, kind: str | None = None, tag: str | None = None) -> list[ExperimentRow]:
        """Experiments oldest first, optionally of one kind and one research tag."""
        sql, args = "SELECT * FROM experiments WHERE 1 = 1", []
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        if tag is not None:
            sql += " AND tag = ?"
            args.append(tag)
        return [_experiment(r) for r in self._read(sql + " ORDER BY id", tuple(args))]

    def research(self, tag: str) -> list[ExperimentRow]:
        """The baseline and candidate experiments of a tag, oldest first (what reports show)."""
        return [e for e in self.experiments(tag=tag) if e.kind in _RESEARCH_KINDS]

    def runs(self, experiment_id: int) -> list[RunRow]:
        rows = self._read("SELECT * FROM runs WHERE experiment_id = ? ORDER BY replicate", (experiment_id,))
        return [RunRow(**{k: r[k] for k in _RUN_FIELDS}) for r in rows]

    def ok_metrics(self, experiment_id: int) -> list[float]:
        """The metric of each ok replicate, in replicate order (what a policy decides on)."""
        return [r.metric for r in self.runs(experiment_id) if r.status == "ok" and r.metric is not None]

    def unfinished(self, tag: str) -> list[ExperimentRow]:
        """Experiments of ``tag`` still marked running: a crash interrupted them."""
        return [e for e in self.experiments(tag=tag) if e.status == "running"]

    def incumbent(self, tag: str) -> ExperimentRow | None:
        """The latest experiment of ``tag`` that was kept (or the baseline): the code to beat."""
        rows = self._read(
            "SELECT * FROM experiments WHERE tag = ? AND decision IN ('keep', 'baseline') ORDER BY id DESC LIMIT 1",
            (tag,),
        )
        return _experiment(rows[0]) if rows else None

    def history(self, tag: str) -> list[HistoryEntry]:
        """Finished research experiments as agents see them, oldest first; never the holdout."""
        out = []
        for e in self.research(tag):
            if not e.finished:
                continue
            runs = self.runs(e.id)
            tail = next((r.log_tail for r in reversed(runs) if r.log_tail), "") or ""
            out.append(
                HistoryEntry(
                    id=e.id,
                    description=e.description or "",
                    status=e.status,
                    decision=e.decision or "",
                    reason=e.reason or "",
                    metric=e.metric_mean,
                    spread=e.metric_sem,
                    runs=e.n_runs if e.n_runs is not None else len(runs),
                    delta=e.delta,
                    diff=e.diff or "",
                    hypothesis=e.hypothesis or "",
                    log_tail=tail,
                    meta=e.meta,
                    lesson=e.lesson or "",
                )
            )
        return out

    def replicate_groups(self, tag: str) -> list[list[float]]:
        """Ok metric values of each finished experiment of ``tag`` with at least two ok runs.

        Each group is one piece of code run with several seeds: the raw material of the noise
        floor (:func:`nightlab.stats.noise_floor`). Running experiments are left out so a
        candidate being decided does not count its own runs twice.
        """
        rows = self._read(
            "SELECT r.experiment_id AS eid, r.metric AS metric FROM runs r JOIN experiments e "
            "ON e.id = r.experiment_id WHERE e.tag = ? AND e.status != 'running' AND r.status = 'ok' "
            "AND r.metric IS NOT NULL ORDER BY r.experiment_id, r.replicate",
            (tag,),
        )
        groups: dict[int, list[float]] = {}
        for r in rows:
            groups.setdefault(r["eid"], []).append(float(r["metric"]))
        return [g for g in groups.values() if len(g) >= 2]

    # -- exports (nightlab.store.export) --------------------------------------------------
    def export_tsv(self, path: Path, tag: str, metric_name: str | None = None) -> Path:
        """Write autoresearch's ``results.tsv`` for ``tag`` (see :mod:`nightlab.store.export`)."""
        from nightlab.store.export import export_tsv

        return export_tsv(self, Path(path), tag, metric_name)

    def status_dict(self, tag: str) -> dict:
        """The state of a research tag as JSON-ready data (``nightlab status --json``)."""
        from nightlab.store.export import status_dict

        return status_dict(self, tag)


def _experiment(row: sqlite3.Row) -> ExperimentRow:
    return ExperimentRow(**{k: row[k] for k in _EXPERIMENT_FIELDS})


def _is_write_problem(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return any(
        s in text for s in ("disk is full", "readonly", "read-only", "disk i/o error", "unable to open")
    )


assert set(_EXPERIMENT_FIELDS) == set(EXPERIMENT_COLUMNS) | {"id"}, "ExperimentRow and schema disagree"
assert set(_RUN_FIELDS) == set(RUN_COLUMNS) | {"id"}, "RunRow and schema disagree"
