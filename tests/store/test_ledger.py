"""The ledger on real SQLite files: durability, resume, exports read the notebook's way."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nightlab.errors import UserError
from nightlab.store.export import export_tsv, status_dict
from nightlab.store.ledger import Ledger
from nightlab.types import RunResult, RunStatus

TAG = "nov22"


def ok(metric: float, seed: int = 0, memory_mb: float | None = 4096.0) -> RunResult:
    return RunResult(
        RunStatus.OK,
        {"val_bpb": metric},
        training_seconds=60.0,
        total_seconds=70.0,
        peak_memory_mb=memory_mb,
        seed=seed,
        exit_code=0,
        log_tail=f"val_bpb: {metric}",
    )


def crashed() -> RunResult:
    return RunResult(
        RunStatus.CRASH,
        {},
        total_seconds=3.0,
        exit_code=1,
        log_tail="Traceback (most recent call last):\nRuntimeError: boom",
        reason="exit code 1",
    )


def record(
    ledger: Ledger,
    kind: str,
    description: str,
    metrics: list[float],
    decision: str,
    commit: str,
    status: str = "ok",
    holdout: float | None = None,
) -> int:
    """One finished experiment with one ok run per metric value (crash when metrics is empty)."""
    exp = ledger.add_experiment(
        kind=kind, tag=TAG, description=description, commit=commit, base_commit="0" * 40, agent="replay"
    )
    if not metrics and status not in ("invalid", "skipped"):  # those never ran
        ledger.add_run(exp, 0, crashed(), None, None, f"runs/{exp}/0")
    for i, m in enumerate(metrics):
        ledger.add_run(exp, i, ok(m, seed=i), m, holdout, f"runs/{exp}/{i}")
    mean = sum(metrics) / len(metrics) if metrics else None
    ledger.finish_experiment(
        exp,
        status=status,
        decision=decision,
        metric_mean=mean,
        n_runs=len(metrics),
        reason=f"{decision} because",
    )
    return exp


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "ws" / ".nightlab" / "ledger.db"


def populate(ledger: Ledger) -> None:
    record(ledger, "baseline", "baseline", [1.000, 1.002], "baseline", "a" * 40, holdout=1.1)
    record(ledger, "candidate", "increase LR to 0.04", [0.990, 0.991, 0.989], "keep", "b" * 40)
    record(ledger, "candidate", "switch to GeLU\tactivation", [1.004], "discard", "c" * 40)
    record(ledger, "candidate", "double model width (OOM)", [], "crash", "d" * 40, status="oom")
    record(ledger, "candidate", "edit outside scope", [], "invalid", None, status="invalid")
    record(ledger, "candidate", "reword a comment", [], "discard", None, status="skipped")
    record(ledger, "candidate", "warmup 5%", [0.985, 0.986], "keep", "e" * 40)


def test_write_reopen_read_back(db: Path) -> None:
    with Ledger(db) as ledger:
        assert ledger.created
        ledger.set_meta("start_commit", "abc")
        exp = ledger.add_experiment(
            kind="candidate",
            tag=TAG,
            description="LR 0.02",
            hypothesis="too low",
            meta_json={"knobs": {"LR": 0.02}},
            cost_json={"tokens": 12, "dollars": 0.1},
        )
        ledger.add_run(exp, 0, ok(0.998, seed=7), 0.998, 1.05, "runs/1/0")
        ledger.finish_experiment(
            exp,
            status="ok",
            decision="discard",
            reason="not better",
            metric_mean=0.998,
            n_runs=1,
            delta=-0.001,
        )
        ledger.set_lesson(exp, "LR is not the bottleneck")
    with Ledger(db) as again:
        assert not again.created
        assert again.get_meta("start_commit") == "abc"
        assert again.get_meta("missing", "dflt") == "dflt"
        row = again.experiment(exp)
        assert (row.description, row.hypothesis, row.decision, row.lesson) == (
            "LR 0.02",
            "too low",
            "discard",
            "LR is not the bottleneck",
        )
        assert row.meta == {"knobs": {"LR": 0.02}} and row.cost["tokens"] == 12
        assert row.finished and row.finished_at is not None
        (run,) = again.runs(exp)
        assert (run.seed, run.metric, run.holdout, run.status) == (7, 0.998, 1.05, "ok")
        assert run.metrics == {"val_bpb": 0.998}
        assert [e.id for e in again.experiments(kind="candidate", tag=TAG)] == [exp]
        assert again.experiments(kind="baseline") == []


def test_wal_mode_and_full_sync(db: Path) -> None:
    with Ledger(db) as ledger:
        ledger.set_meta("k", "v")
        assert ledger._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ledger._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    # Another connection (another process in real life) sees the committed data.
    other = sqlite3.connect(db)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT value FROM meta WHERE key='k'").fetchone()[0] == "v"
    other.close()


def test_add_run_is_idempotent(db: Path) -> None:
    with Ledger(db) as ledger:
        exp = ledger.add_experiment(kind="candidate", tag=TAG, description="x")
        ledger.add_run(exp, 0, crashed(), None, None, "runs/1/0")
        ledger.add_run(exp, 0, ok(0.97, seed=3), 0.97, None, "runs/1/0")  # re-run after a crash
        ledger.add_run(exp, 1, ok(0.98, seed=4), 0.98, None, "runs/1/1")
        runs = ledger.runs(exp)
        assert [(r.replicate, r.status, r.metric) for r in runs] == [(0, "ok", 0.97), (1, "ok", 0.98)]
        assert ledger.ok_metrics(exp) == [0.97, 0.98]


def test_unfinished_after_a_killed_process(db: Path) -> None:
    """A process killed mid-experiment leaves it 'running'; committed rows survive the kill."""
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from nightlab.store.ledger import Ledger
        from nightlab.types import RunResult, RunStatus
        ledger = Ledger(Path({str(db)!r}))
        done = ledger.add_experiment(kind="baseline", tag="{TAG}", description="baseline")
        ledger.add_run(done, 0, RunResult(RunStatus.OK, seed=1), 1.0, None, "r")
        ledger.finish_experiment(done, status="ok", decision="baseline", metric_mean=1.0, n_runs=1)
        exp = ledger.add_experiment(kind="candidate", tag="{TAG}", description="in flight")
        ledger.add_run(exp, 0, RunResult(RunStatus.OK, seed=2), 0.9, None, "r")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    with Ledger(db) as ledger:
        (left,) = ledger.unfinished(TAG)
        assert left.description == "in flight" and left.status == "running" and left.decision is None
        assert ledger.ok_metrics(left.id) == [0.9]
        assert ledger.incumbent(TAG).description == "baseline"
        assert [h.description for h in ledger.history(TAG)] == ["baseline"]  # running ones excluded


def test_corrupt_file_is_a_user_error(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not an sqlite database at all" * 200)
    with pytest.raises(
        UserError,
        match=r"ledger .*ledger\.db is corrupt \(.*\): rebuild it with `nightlab recover .*` \(docs/RECOVERY\.md\)",
    ):
        Ledger(db)


def test_damaged_page_is_a_user_error(db: Path) -> None:
    with Ledger(db) as ledger:
        populate(ledger)
        ledger._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    page = 4096
    data[page + 10 : page * 3] = b"\xff" * (page * 2 - 10)  # scribble over the table pages
    db.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt"):
        Ledger(db)


def test_newer_schema_refused_and_older_migrated(db: Path) -> None:
    with Ledger(db) as ledger:
        ledger.set_meta("schema_version", "99")
    with pytest.raises(UserError, match="newer than this nightlab"):
        Ledger(db)
    # An older ledger lacking columns (here p_value and lesson) gains them on open.
    old = db.with_name("old.db")
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '0')")
    conn.execute(
        "CREATE TABLE experiments (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
        "tag TEXT, description TEXT, status TEXT, decision TEXT, created_at TEXT NOT NULL)"
    )
    conn.execute(
        "INSERT INTO experiments (kind, tag, description, status, decision, created_at) "
        "VALUES ('baseline', 'old', 'baseline', 'ok', 'baseline', '2026-01-01')"
    )
    conn.commit()
    conn.close()
    with Ledger(old) as ledger:
        row = ledger.incumbent("old")
        assert row is not None and row.p_value is None and row.lesson is None
        ledger.set_lesson(row.id, "migrated")
        assert ledger.experiment(row.id).lesson == "migrated"
        assert ledger.get_meta("schema_version") == "1"


def test_bad_values_are_caller_errors(db: Path) -> None:
    with Ledger(db) as ledger:
        with pytest.raises(ValueError, match="unknown ledger column"):
            ledger.add_experiment(kind="candidate", colour="red")
        with pytest.raises(ValueError, match="decision must be one of"):
            exp = ledger.add_experiment(kind="candidate", tag=TAG)
            ledger.finish_experiment(exp, status="ok", decision="maybe")
        with pytest.raises(KeyError):
            ledger.finish_experiment(12345, status="ok")


def test_incumbent_history_and_noise_groups(db: Path) -> None:
    with Ledger(db) as ledger:
        assert ledger.incumbent(TAG) is None
        populate(ledger)
        best = ledger.incumbent(TAG)
        assert best.description == "warmup 5%"
        history = ledger.history(TAG)
        assert [h.decision for h in history] == [
            "baseline",
            "keep",
            "discard",
            "crash",
            "invalid",
            "discard",
            "keep",
        ]
        assert "RuntimeError: boom" in history[3].log_tail
        assert all("holdout" not in json.dumps(h.meta) for h in history)
        assert ledger.replicate_groups(TAG) == [[1.000, 1.002], [0.990, 0.991, 0.989], [0.985, 0.986]]
        assert ledger.replicate_groups("other-tag") == []


def test_results_tsv_reads_the_notebook_way(db: Path, tmp_path: Path) -> None:
    """Re-implements the pandas steps of autoresearch's analysis.ipynb on our export."""
    pd = pytest.importorskip("pandas")
    with Ledger(db) as ledger:
        populate(ledger)
        path = export_tsv(ledger, tmp_path / "results.tsv", TAG)
    lines = path.read_text().splitlines()
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    assert all(len(line.split("\t")) == 5 for line in lines)
    assert lines[1] == "aaaaaaa\t1.001000\t4.0\tkeep\tbaseline"
    assert lines[3] == "ccccccc\t1.004000\t4.0\tdiscard\tswitch to GeLU activation"
    assert lines[4] == "ddddddd\t0.000000\t0.0\tcrash\tdouble model width (OOM)"
    assert lines[5] == "-------\t0.000000\t0.0\tcrash\tedit outside scope"

    df = pd.read_csv(path, sep="\t")
    df["val_bpb"] = pd.to_numeric(df["val_bpb"], errors="coerce")
    df["memory_gb"] = pd.to_numeric(df["memory_gb"], errors="coerce")
    df["status"] = df["status"].str.strip().str.upper()
    counts = df["status"].value_counts()
    assert (counts.get("KEEP", 0), counts.get("DISCARD", 0), counts.get("CRASH", 0)) == (3, 1, 2)

    valid = df[df["status"] != "CRASH"].reset_index(drop=True)
    baseline_bpb = valid.loc[0, "val_bpb"]
    assert baseline_bpb == pytest.approx(1.001)
    kept_mask = valid["status"] == "KEEP"
    running_min = valid.loc[kept_mask, "val_bpb"].cummin()
    assert list(running_min.round(6)) == [1.001, 0.99, 0.9855]

    kept = df[df["status"] == "KEEP"].copy()
    best_row = kept.loc[kept["val_bpb"].idxmin()]
    assert best_row["description"] == "warmup 5%"
    kept["prev_bpb"] = kept["val_bpb"].shift(1)
    kept["delta"] = kept["prev_bpb"] - kept["val_bpb"]
    hits = kept.iloc[1:].sort_values("delta", ascending=False)
    assert list(hits["description"]) == ["increase LR to 0.04", "warmup 5%"]
    assert hits["delta"].sum() == pytest.approx(1.001 - 0.9855)


def test_tsv_uses_the_metric_name_and_skips_running(db: Path, tmp_path: Path) -> None:
    with Ledger(db) as ledger:
        record(ledger, "baseline", "baseline", [0.5, 0.52], "baseline", "f" * 40)
        ledger.add_experiment(kind="candidate", tag=TAG, description="still running")
        ledger.set_meta("metric_name", "accuracy")
        text = export_tsv(ledger, tmp_path / "r.tsv", TAG).read_text()
    assert text.splitlines()[0].split("\t")[1] == "accuracy"
    assert "still running" not in text and len(text.splitlines()) == 2


def test_status_dict(db: Path) -> None:
    with Ledger(db) as ledger:
        populate(ledger)
        running = ledger.add_experiment(kind="candidate", tag=TAG, description="in flight")
        ledger.add_run(running, 0, ok(0.95), 0.95, 0.7, "runs/x/0")
        status = status_dict(ledger, TAG)
    json.dumps(status)  # JSON-ready
    assert status["total"] == 8
    assert status["counts"] == {
        "baseline": 1,
        "keep": 2,
        "discard": 1,
        "crash": 1,
        "invalid": 1,
        "skipped": 1,
        "running": 1,
    }
    assert status["best"]["description"] == "warmup 5%"
    assert status["baseline"]["metric"] == pytest.approx(1.001)
    live = status["experiments"][-1]
    assert (live["status"], live["metric"], live["runs"]) == ("running", 0.95, 1)
    floor = status["noise_floor"]
    assert floor["df"] == 1 + 2 + 1 and floor["groups"] == 3 and 0 < floor["sd"] < 0.002
    first = status["experiments"][0]
    assert set(first) >= {
        "id",
        "status",
        "decision",
        "metric",
        "spread",
        "runs",
        "description",
        "reason",
        "delta",
    }
    assert "holdout" not in json.dumps(status)


def test_explicit_ids_for_a_rebuild_and_unwritable_places(db: Path, tmp_path: Path) -> None:
    with Ledger(db) as ledger:
        assert ledger.add_experiment(id=7, kind="candidate", tag=TAG, description="rebuilt") == 7
        assert ledger.add_experiment(kind="candidate", tag=TAG) == 8  # numbering continues
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the .nightlab directory should be")
    with pytest.raises(UserError, match="cannot create its directory"):
        Ledger(blocker / "ledger.db")


def test_the_queries_the_loop_asks(db: Path) -> None:
    """outcome, candidate_count, consecutive_failures and measured_code: the loop's questions,
    each answered once here instead of filtered by hand at every call site."""
    with Ledger(db) as ledger:
        populate(ledger)
        kept = ledger.experiments(tag=TAG)[1]
        outcome = ledger.outcome(kept.id)
        assert outcome["metric_mean"] == pytest.approx(0.990)
        assert outcome["metric_sem"] == pytest.approx(0.001 / 3**0.5)
        assert "holdout_mean" not in outcome  # its runs carry no holdout value
        assert ledger.outcome(ledger.experiments(tag=TAG)[0].id)["holdout_mean"] == pytest.approx(1.1)
        assert ledger.outcome(ledger.experiments(tag=TAG)[3].id) == {}  # crashed: nothing to summarise
        assert ledger.candidate_count(TAG) == 6 and ledger.candidate_count("other") == 0
        assert ledger.consecutive_failures(TAG) == 0  # the last candidate that ran was kept
        for i in range(3):
            record(ledger, "candidate", f"boom {i}", [], "crash", "f" * 40, status="crash")
            record(ledger, "candidate", f"refused {i}", [], "invalid", None, status="invalid")
        assert ledger.consecutive_failures(TAG) == 3  # refused proposals do not break the streak
        first = ledger.add_experiment(kind="candidate", tag=TAG, code_hash="abc", status="ok")
        ledger.add_experiment(kind="candidate", tag=TAG, code_hash="abc", status="ok")
        ledger.add_experiment(kind="candidate", tag=TAG, code_hash="def", status="crash")
        ledger.add_experiment(kind="candidate", tag="other", code_hash="ghi", status="ok")
        assert ledger.measured_code(TAG) == {"abc": first}  # crashed code and other tags left out
