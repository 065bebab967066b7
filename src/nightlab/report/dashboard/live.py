"""Watching a workspace while ``nightlab run`` writes to it: what changed, and what runs now.

The server runs in its own process, so it cannot subscribe to the loop's events; it looks
instead, cheaply and often:

* the ledger through SQLite's ``PRAGMA data_version``, a counter that moves only when another
  connection commits, so an idle night costs one tiny query per look and experiments are
  re-read only after a write;
* the run directories of experiments still running (``.nightlab/runs/<id>/<replicate>/``), for
  each in-flight replicate's log tail and the intermediate points of its progress files;
* ``loop.json`` and ``control.json`` (:mod:`nightlab.report.dashboard.control`).

:meth:`Watcher.poll` returns only what changed since the previous call, which the server pushes
to every open page; :meth:`Watcher.snapshot` is the whole state for a page that just opened.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from nightlab.report.dashboard.control import loop_state
from nightlab.report.dashboard.data import LedgerReader, View, experiment_rows, overview, read_points
from nightlab.safefile import open_read
from nightlab.store.export import holdout_checks
from nightlab.store.recorded import read_slot, recorded_time
from nightlab.studies.resume import harness_kind
from nightlab.types import EVAL_LOG, TRAIN_LOG

LEDGER_NAME = "ledger.db"
TAIL_BYTES = 16_384
TAIL_LINES = 40
FULL_READ = 500  # more changed rows than this: read them all at once


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log that may be growing (reads at most 16 KB)."""
    try:
        with open_read(path) as f:  # the run can replace its log: never a FIFO, never a link
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    kept = text.splitlines()[-lines:]
    return "\n".join(kept)


class Watcher:
    """Looks at one workspace's ledger and run directories for one research tag."""

    def __init__(
        self,
        state_dir: Path,
        view: View,
        command: str = "",
        budget_seconds: float | None = None,
        timeout: float | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.view = view
        self.command = command
        self.budget_seconds = budget_seconds
        self.timeout = timeout
        self._ledger: LedgerReader | None = None
        self._inode: int | None = None
        self._version: int | None = None
        self._rows: dict[int, dict] = {}
        self._signatures: dict[int, tuple] = {}
        self._checks_key: tuple | None = None
        self._checks: list[dict] = []
        self._order: list[int] = []
        self._overview: dict = {}
        self._running: list[dict] = []
        self._loop: dict = {}
        self.sequence = 0

    # -- the ledger ------------------------------------------------------------------------
    @property
    def ledger_path(self) -> Path:
        return self.state_dir / LEDGER_NAME

    def ledger(self) -> LedgerReader | None:
        """The read-only ledger, opened (or reopened after `nightlab recover` replaced it) when present."""
        try:
            inode = self.ledger_path.stat().st_ino
        except OSError:
            return None
        if self._ledger is None or inode != self._inode:
            if self._ledger is not None:
                self._ledger.close()
            try:
                self._ledger = LedgerReader(self.ledger_path)
            except sqlite3.Error:
                return None
            self._inode, self._version = inode, None
        return self._ledger

    def _experiments_changed(self) -> list[dict] | None:
        """Rows that changed since the last look (None when the ledger has not been written).

        Only rows whose signature (status, decision, reason, lesson, ...) moved, and running
        ones (a replicate may have finished), are read again: a new experiment in a ledger of
        10,000 costs one small query, not a re-read of every diff.
        """
        ledger = self.ledger()
        if ledger is None:
            return None
        try:
            version = ledger.data_version()
            kind = harness_kind(self.state_dir)
            alive = kind is not None
            if version == self._version and (alive, kind) == (
                self.view.harness_alive,
                self.view.harness_kind,
            ):
                return None
            # A harness that died turns its running rows interrupted, its studies' too.
            self.view.harness_alive, self.view.harness_kind = alive, kind
            signatures = ledger.signatures(self.view.tag)
            stale = [
                i for i, sig in signatures.items() if self._signatures.get(i) != sig or sig[1] == "running"
            ]
            if len(stale) > FULL_READ or set(self._rows) - set(signatures):
                fresh = experiment_rows(ledger, self.view)  # first look, or rows went away (a recovery)
                self._rows = {}
            else:
                fresh = experiment_rows(ledger, self.view, stale)
            changed = [r for r in fresh if self._rows.get(r["id"]) != r]
            for row in fresh:
                self._rows[row["id"]] = row
            self._order = sorted(self._rows)
            rows = [self._rows[i] for i in self._order]
            self._overview = overview(ledger, rows, self.view, self._holdout_checks(ledger, rows))
        except sqlite3.Error:  # a ledger being created or migrated right now: look again later
            return None
        self._version, self._signatures = version, signatures
        return changed

    def _holdout_checks(self, ledger: LedgerReader, rows: list[dict]) -> list[dict]:
        """Val against holdout of the kept changes, recomputed only when a keep or baseline moved."""
        key = tuple(
            (r["id"], r["metric"], r.get("holdout"), r["incumbent"])
            for r in rows
            if r["outcome"] in ("kept", "baseline")
        )
        if key != self._checks_key:
            self._checks_key, self._checks = key, holdout_checks(ledger, self.view.tag, self.view.direction)
        return self._checks

    # -- what runs now ---------------------------------------------------------------------
    def running_slots(self) -> list[dict]:
        """One entry per replicate in flight: experiment, command, elapsed time, log tail, points."""
        ledger = self.ledger()
        if ledger is None:
            return []
        try:
            running = ledger.running()
        except sqlite3.Error:
            return []
        slots: list[dict] = []
        now = datetime.now(timezone.utc)
        for e in running:
            meta = e.meta if isinstance(e.meta, dict) else {}
            if e.kind in ("baseline", "candidate") and e.tag != self.view.tag:
                continue
            if e.kind not in ("baseline", "candidate") and self.view.tag not in (
                e.tag,
                meta.get("research_tag"),
            ):
                continue
            recorded = ledger.runs(e.id)
            done = {r.replicate for r in recorded}
            started = max(
                [
                    t
                    for t in [recorded_time(e.created_at), *(recorded_time(r.created_at) for r in recorded)]
                    if t
                ],
                default=None,
            )
            folder = self.state_dir / "runs" / f"{e.id:04d}"
            try:
                replicates = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
            except OSError:
                replicates = []
            for replicate in (r for r in replicates if r not in done):
                run_dir = folder / str(replicate)
                where = read_slot(run_dir)  # several slots: which one, on which device
                evaluating = (run_dir / EVAL_LOG).exists()
                log = tail(run_dir / (EVAL_LOG if evaluating else TRAIN_LOG))
                slots.append(
                    {
                        "slot": where["slot"] if isinstance(where.get("slot"), int) else len(slots) + 1,
                        "device": where.get("device"),
                        "experiment": e.id,
                        "kind": e.kind,
                        "replicate": replicate,
                        "description": self.view.text(e.description),
                        # As it runs ({flags:FILE} expanded: values the agent wrote, redacted).
                        "command": self.view.text(where.get("command") or self.command)
                        if e.kind in ("baseline", "candidate")
                        else e.kind,
                        "stage": "evaluate" if evaluating else "train",
                        "elapsed": (now - started).total_seconds() if started else None,
                        "budget_seconds": self.budget_seconds,
                        "timeout": self.timeout,
                        "log_tail": self.view.text(log),
                        "points": read_points(run_dir, self.view.metric_name),
                    }
                )
        return slots

    # -- what the page gets ----------------------------------------------------------------
    def snapshot(self) -> dict:
        """Everything a page needs when it opens, as of the last :meth:`poll` (which the caller
        makes often; a snapshot never consumes a change that other pages are still to hear of)."""
        return {
            "sequence": self.sequence,
            "experiments": [self._rows[i] for i in self._order],
            "overview": self._overview or self._empty_overview(),
            "running": self._running,
            "loop": self._loop,
            "ledger": self.ledger_path.exists(),
        }

    def poll(self) -> dict | None:
        """What changed since the last :meth:`poll` or :meth:`snapshot` (None when nothing did)."""
        patch: dict = {}
        changed = self._experiments_changed()
        if changed:
            patch["experiments"] = changed
            patch["overview"] = self._overview
        running = self.running_slots()
        if _without_elapsed(running) != _without_elapsed(self._running):
            # Elapsed time moves every look; the page ticks it on its own clock, so only a new
            # log line, point or replicate is worth a message.
            patch["running"] = running
        self._running = running
        loop = loop_state(self.state_dir)
        if loop != self._loop:
            patch["loop"] = loop
            self._loop = loop
        if not patch:
            return None
        self.sequence += 1
        patch["sequence"] = self.sequence
        return patch

    def _empty_overview(self) -> dict:
        return {
            "tag": self.view.tag,
            "metric_name": self.view.metric_name,
            "direction": self.view.direction.value,
            "holdout_shown": self.view.holdout,
            "counts": {},
            "total": 0,
            "best": None,
            "baseline": None,
            "noise_floor": None,
            "holdout_checks": [],
            "cost": {"usd": 0.0, "tokens": 0, "compute_hours": 0.0, "kept": 0},
            "studies": [],
        }

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None


def _without_elapsed(slots: list[dict]) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "elapsed"} for s in slots]
