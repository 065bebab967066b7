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
from pathlib import Path
from typing import Any

from nightlab.errors import UserError
from nightlab.stats import mean, sample_sd
from nightlab.store.schema import (
    DECISIONS,
    EXPERIMENT_COLUMNS,
    JSON_COLUMNS,
    KINDS,
    RESEARCH_KINDS,
    RUN_FIELDS,
    STATUSES,
    ExperimentRow,
    RunRow,
    experiment_from_row,
    is_busy,
    is_write_problem,
    now,
    open_read_only,
    open_schema,
    write_problem,
)
from nightlab.types import HistoryEntry, RunResult


class Ledger:
    """The SQLite ledger at ``path`` (created with its parent directories when missing).

    ``created`` tells whether this open made a new file: a loop that finds experiment refs in
    git but a fresh ledger knows the ledger was lost (see docs/RECOVERY.md).
    """

    def __init__(self, path: Path, read_only_ok: bool = False) -> None:
        """``read_only_ok``: a command that only reads (status, report, the dashboard) still opens
        a ledger it cannot write (a workspace copied read-only, an archive, another user's night):
        ``read_only`` then says so, and every write raises."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self.read_only = False
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
            open_schema(self._conn, self.path)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if is_write_problem(exc) and read_only_ok and self.path.is_file():
                self._conn = open_read_only(self.path)
                self.read_only = True
                return
            if is_write_problem(exc) or is_busy(exc):
                raise write_problem(self.path, exc) from None
            raise UserError(
                f"ledger {self.path} is corrupt ({exc}): rebuild it with "
                f"`nightlab recover {self.path.parent.parent}` (docs/RECOVERY.md)"
            ) from None
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
                if is_write_problem(exc) or is_busy(exc):
                    raise write_problem(self.path, exc, ", then rerun `nightlab run` to continue") from None
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
        values.setdefault("created_at", now())
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
        role: str | None = None,
    ) -> None:
        """Record one replicate; recording the same (experiment, replicate) again replaces it.
        ``role``: ``"compare"`` or ``"report"`` for a fresh run of a kept change or of the
        baseline (research/estimate.py); None for a run a decision is made on.

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
            "progress_json": json.dumps(result.progress),
            "run_dir": str(run_dir),
            "created_at": now(),
            "role": role,
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
        values.setdefault("finished_at", now())
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
        return experiment_from_row(rows[0])

    def experiments(self, kind: str | None = None, tag: str | None = None) -> list[ExperimentRow]:
        """Experiments oldest first, optionally of one kind and one research tag."""
        sql, args = "SELECT * FROM experiments WHERE 1 = 1", []
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        if tag is not None:
            sql += " AND tag = ?"
            args.append(tag)
        return [experiment_from_row(r) for r in self._read(sql + " ORDER BY id", tuple(args))]

    def research(self, tag: str) -> list[ExperimentRow]:
        """The baseline and candidate experiments of a tag, oldest first (what reports show)."""
        return [e for e in self.experiments(tag=tag) if e.kind in RESEARCH_KINDS]

    def runs(self, experiment_id: int) -> list[RunRow]:
        rows = self._read("SELECT * FROM runs WHERE experiment_id = ? ORDER BY replicate", (experiment_id,))
        return [RunRow(**{k: r[k] for k in RUN_FIELDS}) for r in rows]

    def ok_runs(self, experiment_id: int) -> list[RunRow]:
        """The replicates that ended ok with a metric, in replicate order."""
        return [r for r in self.runs(experiment_id) if r.status == "ok" and r.metric is not None]

    def ok_metrics(self, experiment_id: int) -> list[float]:
        """The metric of each ok replicate, in replicate order (what a policy decides on)."""
        return [r.metric for r in self.ok_runs(experiment_id) if r.metric is not None]

    def decided_metrics(self, experiment_id: int) -> list[float]:
        """The metrics a policy decides on: the ok replicates with no role (not fresh runs)."""
        return [r.metric for r in self.ok_runs(experiment_id) if r.role is None and r.metric is not None]

    def estimate_metrics(self, experiment_id: int) -> list[float]:
        """What later candidates are compared with: a kept change's fresh ``compare`` runs when
        it has them (the runs that selected it carry their luck), else its runs with no role;
        never the ``report`` runs, which no decision may see."""
        runs = [r for r in self.ok_runs(experiment_id) if r.role != "report"]
        fresh = [r for r in runs if r.role == "compare"]
        return [r.metric for r in (fresh or runs) if r.metric is not None]

    def outcome(self, experiment_id: int) -> dict[str, float | None]:
        """Mean and standard error of the ok replicates' metric, and their holdout mean: the
        summary columns :meth:`finish_experiment` stores (empty when no replicate ended ok).
        With ``report`` runs, those alone: no decision saw them, so selection put no luck there."""
        runs = self.ok_runs(experiment_id)
        runs = [r for r in runs if r.role == "report"] or [r for r in runs if r.role == "compare"] or runs
        values = [r.metric for r in runs if r.metric is not None]
        if not values:
            return {}
        sd = sample_sd(values)
        holdouts = [r.holdout for r in runs if r.holdout is not None]
        out: dict[str, float | None] = {
            "metric_mean": mean(values),
            "metric_sem": None if sd is None else sd / len(values) ** 0.5,
        }
        if holdouts:
            out["holdout_mean"] = mean(holdouts)
        return out

    def seconds_per_run(self, experiment_id: int, wall: bool = False) -> float | None:
        """Mean seconds of the ok replicates: training time when every one reports it, else (or
        with ``wall``) wall time."""
        runs = self.ok_runs(experiment_id)
        if not runs:
            return None
        training = [r.training_seconds for r in runs]
        if not wall and all(t is not None and t > 0 for t in training):
            return mean([t for t in training if t is not None])
        walls = [r.total_seconds for r in runs if r.total_seconds is not None]
        return mean(walls) if walls else None

    def next_experiment_id(self) -> int:
        """The id the next :meth:`add_experiment` will get (ids are never reused). Exact while
        one harness writes, which the workspace lock guarantees: the recorder names a commit
        after its experiment before the row exists."""
        rows = self._read(
            "SELECT MAX(n) AS n FROM (SELECT seq AS n FROM sqlite_sequence WHERE name = 'experiments' "
            "UNION ALL SELECT MAX(id) FROM experiments)"
        )
        return int(rows[0]["n"] or 0) + 1

    def candidate_count(self, tag: str) -> int:
        """Candidates of ``tag`` so far, refused and skipped ones included (what caps count)."""
        rows = self._read(
            "SELECT COUNT(*) AS n FROM experiments WHERE tag = ? AND kind = 'candidate'", (tag,)
        )
        return int(rows[0]["n"])

    def research_tags(self) -> dict[str, bool]:
        """Each tag with research experiments, least recently active first: whether its baseline
        stands (finished with a result). Views pick their default tag from it, and name the tags
        when asked for one that has nothing. None yet in a ledger whose tables are still being
        written (a reader that opened it as the first run started)."""
        try:
            rows = self._read(
                "SELECT tag, MAX(id) AS last, MAX(decision = 'baseline') AS based FROM experiments "
                f"WHERE kind IN ({', '.join('?' * len(RESEARCH_KINDS))}) GROUP BY tag ORDER BY last",
                tuple(RESEARCH_KINDS),
            )
        except sqlite3.OperationalError:
            return {}
        return {row["tag"]: bool(row["based"]) for row in rows}

    def consecutive_failures(self, tag: str) -> int:
        """How many of the latest candidates that ran in a row crashed (refused ones do not count)."""
        count, offset = 0, 0
        while True:  # newest first, a page at a time: the loop asks after every result
            rows = self._read(
                "SELECT status FROM experiments WHERE tag = ? AND kind = 'candidate' "
                "ORDER BY id DESC LIMIT 200 OFFSET ?",
                (tag, offset),
            )
            for row in rows:
                if row["status"] in ("skipped", "invalid"):
                    continue
                if row["status"] not in ("crash", "timeout", "oom", "nan"):
                    return count
                count += 1
            if len(rows) < 200:
                return count
            offset += 200

    def measured_code(self, tag: str) -> dict[str, int]:
        """Code hash -> id of the first finished experiment of ``tag`` that ran that code to a result."""
        rows = self._read(
            "SELECT id, code_hash FROM experiments WHERE tag = ? AND status = 'ok' AND code_hash IS NOT NULL "
            "ORDER BY id",
            (tag,),
        )
        found: dict[str, int] = {}
        for row in rows:
            found.setdefault(row["code_hash"], int(row["id"]))
        return found

    def running_code(self, tag: str) -> dict[str, int]:
        """Code hash -> id of each experiment of ``tag`` still running: the same code proposed
        while it runs in another slot is not run twice."""
        rows = self._read(
            "SELECT id, code_hash FROM experiments WHERE tag = ? AND status = 'running' "
            "AND code_hash IS NOT NULL ORDER BY id",
            (tag,),
        )
        return {row["code_hash"]: int(row["id"]) for row in reversed(rows)}

    def incumbent_of(self, row: ExperimentRow) -> ExperimentRow | None:
        """The experiment ``row`` was decided against (None for a baseline or a lost row)."""
        if row.incumbent_id is None:
            return None
        try:
            return self.experiment(row.incumbent_id)
        except KeyError:
            return None

    def unfinished(self, tag: str) -> list[ExperimentRow]:
        """Experiments of ``tag`` still marked running: a crash interrupted them."""
        return [e for e in self.experiments(tag=tag) if e.status == "running"]

    def incumbent(self, tag: str) -> ExperimentRow | None:
        """The latest experiment of ``tag`` that was kept (or the baseline): the code to beat."""
        rows = self._read(
            "SELECT * FROM experiments WHERE tag = ? AND decision IN ('keep', 'baseline') ORDER BY id DESC LIMIT 1",
            (tag,),
        )
        return experiment_from_row(rows[0]) if rows else None

    def history(self, tag: str) -> list[HistoryEntry]:
        """Finished research experiments as agents see them, oldest first; never the holdout."""
        finished = [e for e in self.research(tag) if e.finished]
        tails, counts = self._log_tails(tag), self._run_counts(tag)  # not one query per experiment
        return [self._entry(e, tails.get(e.id, ""), counts.get(e.id, 0)) for e in finished]

    def history_entry(self, experiment_id: int) -> HistoryEntry:
        """One finished experiment as agents see it (what the loop tells the agent after each)."""
        e, runs = self.experiment(experiment_id), self.runs(experiment_id)
        tail = next((r.log_tail for r in reversed(runs) if r.log_tail), "") or ""
        return self._entry(e, tail, len(runs))

    def _log_tails(self, tag: str) -> dict[int, str]:
        """Experiment id -> the log tail of its last replicate that has one."""
        rows = self._read(
            "SELECT r.experiment_id AS eid, r.log_tail AS tail FROM runs r JOIN experiments e "
            "ON e.id = r.experiment_id WHERE e.tag = ? AND r.log_tail IS NOT NULL AND r.log_tail != '' "
            "ORDER BY r.experiment_id, r.replicate",
            (tag,),
        )
        return {int(r["eid"]): r["tail"] for r in rows}  # the last replicate's wins

    def _run_counts(self, tag: str) -> dict[int, int]:
        rows = self._read(
            "SELECT r.experiment_id AS eid, COUNT(*) AS n FROM runs r JOIN experiments e "
            "ON e.id = r.experiment_id WHERE e.tag = ? GROUP BY r.experiment_id",
            (tag,),
        )
        return {int(r["eid"]): int(r["n"]) for r in rows}

    def _entry(self, e: ExperimentRow, tail: str, runs: int) -> HistoryEntry:
        return HistoryEntry(
            id=e.id,
            description=e.description or "",
            status=e.status,
            decision=e.decision or "",
            reason=e.reason or "",
            metric=e.metric_mean,
            spread=e.metric_sem,
            runs=e.n_runs if e.n_runs is not None else runs,
            delta=e.delta,
            diff=e.diff or "",
            hypothesis=e.hypothesis or "",
            log_tail=tail,
            meta=e.meta,
            lesson=e.lesson or "",
            cost=e.cost,
        )

    def run_time(self, tag: str) -> tuple[float, float, int]:
        """Training seconds, wall seconds and count of the runs of ``tag``'s baseline and
        candidates that recorded a wall time (the training share a summary shows)."""
        kinds = ", ".join("?" for _ in RESEARCH_KINDS)
        row = self._read(
            "SELECT COALESCE(SUM(r.training_seconds), 0) AS trained, COALESCE(SUM(r.total_seconds), 0) "
            "AS wall, COUNT(*) AS n FROM runs r JOIN experiments e ON e.id = r.experiment_id "
            f"WHERE e.tag = ? AND e.kind IN ({kinds}) AND r.total_seconds > 0",
            (tag, *RESEARCH_KINDS),
        )[0]
        return float(row["trained"]), float(row["wall"]), int(row["n"])

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
