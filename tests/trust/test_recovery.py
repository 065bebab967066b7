"""A corrupt or missing ledger, a read-only run directory, a full disk: one clear line, nothing lost.

The disk faults are made with a private mount namespace (``unshare -rm``: a read-only bind
mount, a tiny tmpfs), so they need no root and touch nothing outside the test's folder; they
skip where user namespaces are disabled.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TOY_TRAIN, edit, git, make_workspace, nightlab
from nightlab.executor import sandbox

PROPOSALS = [
    edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3"),  # kept
    edit("WIDTH = 64", "WIDTH = 8", "WIDTH 64 -> 8"),  # discarded
    edit("NOISE = 0.002", "NOISE = 0.002\nraise SystemExit(3)", "crash it"),  # crash
    edit("WIDTH = 64", "WIDTH = 128", "WIDTH 64 -> 128"),  # kept
]


def _experiments(root: Path) -> list[dict]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("select * from experiments order by id")]
    con.close()
    return rows


def _essence(rows: list[dict]) -> list[tuple]:
    """What a rebuild must get back: id, kind, commit, decision, runs and the metric."""
    return [
        (
            r["id"],
            r["kind"],
            r["commit"],
            r["decision"],
            r["n_runs"],
            round(r["metric_mean"], 9) if r["metric_mean"] is not None else None,
            r["description"],
        )
        for r in rows
    ]


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    root = make_workspace(tmp_path / "ws", proposals=PROPOSALS)
    res = nightlab("run", str(root), "--plain", "--tag", "t")
    assert res.returncode == 0, res.stdout + res.stderr
    return root


def _corrupt(path: Path) -> None:
    """Scribble over the start of every page after the first (their headers and cell pointers)."""
    data = bytearray(path.read_bytes())
    for offset in range(4096, len(data), 4096):
        data[offset : offset + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_corrupt_ledger_is_refused_then_recovered(finished: Path) -> None:
    root = finished
    before = _experiments(root)
    tsv_before = (root / ".nightlab" / "results.tsv").read_text()
    state = root / ".nightlab"
    # Fold the WAL in, then damage the file the way a failing disk would.
    con = sqlite3.connect(state / "ledger.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    _corrupt(state / "ledger.db")
    for command in (["status"], ["run", "--plain", "--tag", "t"]):
        res = nightlab(*command, str(root))
        assert res.returncode == 2, res.stdout + res.stderr
        line = res.stderr.strip()
        assert "\n" not in line and "corrupt" in line and "docs/RECOVERY.md" in line, line
        assert f"`nightlab recover {root}`" in line, line

    res = nightlab("recover", str(root))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "recovered 5 experiments (2 kept" in res.stdout
    assert list(state.glob("ledger.db.damaged-*")), "the damaged file is kept, not deleted"
    after = _experiments(root)
    assert _essence(after) == _essence(before)
    assert (state / "results.tsv").read_text() == tsv_before
    # The night goes on from the rebuilt ledger: the branch is the best kept commit, nothing re-runs.
    res = nightlab("run", str(root), "--plain", "--tag", "t", "-n", "4")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 experiments done" in res.stdout
    assert git(root, "rev-parse", "nightlab/t") == before[-1]["commit"]


@pytest.mark.slow
def test_missing_ledger_says_so_and_recovers(finished: Path) -> None:
    root = finished
    before = _experiments(root)
    for suffix in ("", "-wal", "-shm"):
        (root / ".nightlab" / f"ledger.db{suffix}").unlink(missing_ok=True)
    shown = nightlab("status", str(root))  # not "no experiments yet; start with nightlab run"
    assert shown.returncode == 2 and "nightlab recover" in shown.stderr and "start with" not in shown.stderr
    res = nightlab("run", str(root), "--plain", "--tag", "t")
    assert res.returncode == 2
    assert "docs/RECOVERY.md" in res.stderr and "\n" not in res.stderr.strip(), res.stderr
    res = nightlab("recover", str(root))
    assert res.returncode == 0, res.stdout + res.stderr
    assert _essence(_experiments(root)) == _essence(before)
    status = json.loads(nightlab("status", str(root), "--json").stdout)
    assert status["best"]["commit"] == before[-1]["commit"]


@pytest.mark.slow
def test_recover_refuses_a_healthy_ledger(finished: Path) -> None:
    res = nightlab("recover", str(finished))
    assert res.returncode == 2 and "nothing to recover" in res.stderr


WRONG_PATTERN = "pattern = '^valid_loss:\\s*([0-9.]+)'"
RIGHT_PATTERN = "pattern = '^val_loss:\\s*([0-9.]+)'"
RETRIED = [
    edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3"),  # kept
    edit("WIDTH = 64", "WIDTH = 8", "WIDTH 64 -> 8"),  # discarded
    edit("NO SUCH LINE", "X = 1", "an edit that does not apply"),  # refused: no commit, no ref
    edit("NOISE = 0.002", "NOISE = 0.002\nraise SystemExit(3)", "crash it"),  # crashed
]


def _everything(rows: list[dict]) -> list[tuple]:
    """Every column but the timestamps: what a rebuild from the records must give back."""
    return [tuple(v for k, v in sorted(r.items()) if k not in ("created_at", "finished_at")) for r in rows]


def _runs(root: Path) -> list[tuple]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    rows = con.execute(
        "select experiment_id, replicate, seed, status, metric, holdout, metrics_json, peak_memory_mb, "
        "exit_code, reason, run_dir, role from runs order by experiment_id, replicate"
    ).fetchall()
    con.close()
    return rows


@pytest.mark.slow
def test_recover_after_a_retried_baseline_and_a_changed_pattern_gives_back_the_same_ledger(
    tmp_path: Path,
) -> None:
    """Issue 17: the first baseline crashed on a metric pattern that matched nothing; the user
    fixed the pattern, committed, ran again. A rebuild must keep the crash a crash (its log
    does match the pattern of today) and the retried baseline the baseline."""
    root = make_workspace(tmp_path / "ws", proposals=RETRIED, source="regex")
    toml = root / "nightlab.toml"
    toml.write_text(toml.read_text().replace(RIGHT_PATTERN, WRONG_PATTERN))
    git(root, "commit", "-qam", "a pattern that matches nothing")
    first = nightlab("run", str(root), "--plain", "--tag", "t")
    assert first.returncode == 2 and "baseline run failed" in first.stderr, first.stdout + first.stderr
    assert "matched no line" in first.stderr and "valid_loss" in first.stderr  # names the log and the pattern
    toml.write_text(toml.read_text().replace(WRONG_PATTERN, RIGHT_PATTERN))
    git(root, "commit", "-qam", "the right pattern")
    night = nightlab("run", str(root), "--plain", "--tag", "t")
    assert night.returncode == 0, night.stdout + night.stderr
    before, runs_before = _experiments(root), _runs(root)
    assert [(r["kind"], r["decision"]) for r in before] == [
        ("baseline", "crash"),
        ("baseline", "baseline"),
        ("candidate", "keep"),
        ("candidate", "discard"),
        ("candidate", "invalid"),
        ("candidate", "crash"),
    ]
    state = root / ".nightlab"
    tsv_before = (state / "results.tsv").read_text()

    for suffix in ("", "-wal", "-shm"):
        (state / f"ledger.db{suffix}").unlink(missing_ok=True)
    res = nightlab("recover", str(root))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "recovered 6 experiments (1 kept" in res.stdout
    assert _everything(_experiments(root)) == _everything(before)
    assert _runs(root) == runs_before
    assert (state / "results.tsv").read_text() == tsv_before

    # Without the records (a workspace from before them), git and the logs still give the
    # baselines right: the crashed one stays a crash, the retried one is the baseline.
    for record in [*state.glob("runs/*/experiment.json"), *state.glob("runs/*/*/replicate.json")]:
        record.unlink()
    res = nightlab("recover", str(root), "--force")
    assert res.returncode == 0, res.stdout + res.stderr
    with_commits = [r for r in before if r["commit"]]
    assert _essence(_experiments(root)) == _essence(with_commits)
    assert [(r["kind"], r["decision"]) for r in _experiments(root)][:2] == [
        ("baseline", "crash"),
        ("baseline", "baseline"),
    ]


needs_userns = pytest.mark.skipif(
    not sandbox.netns_available(), reason="unprivileged user namespaces are off"
)


def _in_mount_namespace(script: str, **env: str) -> subprocess.CompletedProcess:
    """Run a shell script as root of a private mount namespace (mounts vanish with it)."""
    import os

    full = dict(os.environ, NIGHTLAB=f"{sys.executable} -m nightlab.cli", **env)
    return subprocess.run(
        ["unshare", "-rm", "--", "sh", "-c", script], env=full, capture_output=True, text=True, timeout=300
    )


@needs_userns
@pytest.mark.slow
def test_read_only_run_directory_is_one_line_and_harmless(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=PROPOSALS)
    res = nightlab("run", str(root), "--plain", "--tag", "t", "-n", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    before = _experiments(root)
    runs = root / ".nightlab" / "runs"
    done = _in_mount_namespace(
        'mount --bind "$RUNS" "$RUNS" && mount -o remount,bind,ro "$RUNS" && '
        '$NIGHTLAB run "$ROOT" --plain --tag t',
        RUNS=str(runs),
        ROOT=str(root),
    )
    assert done.returncode == 2, done.stdout + done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and "Read-only file system" in line and "rerun `nightlab run`" in line, line
    after = _experiments(root)
    assert _essence(after[: len(before)]) == _essence(before), "a recorded experiment changed"
    # With the disk writable again the night simply continues.
    res = nightlab("run", str(root), "--plain", "--tag", "t")
    assert res.returncode == 0, res.stdout + res.stderr
    assert [r["description"] for r in _experiments(root)][1:] == [p["description"] for p in PROPOSALS]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@needs_userns
def test_status_and_report_read_a_read_only_workspace_and_write_nothing_there(tmp_path: Path) -> None:
    """An archived night (a read-only copy, another user's folder): ``status`` shows it, ``report``
    writes its HTML only where ``--out`` says, and the workspace is left byte for byte."""
    root = make_workspace(tmp_path / "ws", proposals=PROPOSALS)
    assert nightlab("run", str(root), "--plain", "--tag", "t", "-n", "1").returncode == 0
    want = json.loads(nightlab("status", str(root), "--json").stdout)
    before = _tree(root)
    read_only = 'mount --bind "$ROOT" "$ROOT" && mount -o remount,bind,ro "$ROOT" && $NIGHTLAB '
    shown = _in_mount_namespace(read_only + 'status "$ROOT" --json', ROOT=str(root))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == want
    refused = _in_mount_namespace(read_only + 'report "$ROOT"', ROOT=str(root))
    line = refused.stderr.strip()
    assert refused.returncode == 2 and "\n" not in line and "read-only: give --out" in line, line
    out = tmp_path / "elsewhere" / "night.html"
    written = _in_mount_namespace(read_only + 'report "$ROOT" --out "$OUT"', ROOT=str(root), OUT=str(out))
    assert written.returncode == 0, written.stderr
    assert f"report: {out}" in written.stdout and "LR 0.1 -&gt; 0.3" in out.read_text()
    assert _tree(root) == before
    # A night killed before SQLite folded its last commits into the file.
    db = root / ".nightlab" / "ledger.db"
    last_write = (
        "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_autocheckpoint = 0'); "
        "c.execute(\"INSERT INTO meta VALUES ('late', 'commit')\"); c.commit(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", last_write, str(db)], check=True)
    assert db.with_name("ledger.db-wal").stat().st_size > 0
    # With its WAL index beside it SQLite reads those commits read-only; without it, it cannot.
    assert _in_mount_namespace(read_only + 'status "$ROOT"', ROOT=str(root)).returncode == 0
    db.with_name("ledger.db-shm").unlink()
    stale = _in_mount_namespace(read_only + 'status "$ROOT"', ROOT=str(root))
    line = stale.stderr.strip()
    assert stale.returncode == 2 and "\n" not in line and "last writes are in ledger.db-wal" in line, line


@needs_userns
@pytest.mark.slow
def test_full_disk_is_one_line_and_harmless(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=PROPOSALS, train=TOY_TRAIN)
    res = nightlab("run", str(root), "--plain", "--tag", "t", "-n", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    before = _experiments(root)
    saved, mnt = tmp_path / "saved", tmp_path / "mnt"
    saved.mkdir()
    mnt.mkdir()
    # .nightlab on a 4 MB tmpfs holding a copy of the state, filled to the last byte.
    done = _in_mount_namespace(
        'mount -t tmpfs -o size=4m tmpfs "$MNT" && cp -a "$STATE"/. "$MNT"/ && mount --bind "$MNT" "$STATE" && '
        '(cat /dev/zero > "$STATE/filler" 2>/dev/null; true) && '
        '$NIGHTLAB run "$ROOT" --plain --tag t > "$SAVED/out" 2> "$SAVED/err"; echo $? > "$SAVED/rc"; '
        'rm -f "$STATE/filler" && cp -a "$STATE"/ledger.db* "$SAVED"/',
        MNT=str(mnt),
        STATE=str(root / ".nightlab"),
        ROOT=str(root),
        SAVED=str(saved),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rc, err = (saved / "rc").read_text().strip(), (saved / "err").read_text().strip()
    assert rc == "2", (saved / "out").read_text() + err
    assert "\n" not in err and "cannot write" in err and "free disk space" in err, err
    # The ledger the full disk stopped is sound and still holds everything recorded before.
    con = sqlite3.connect(saved / "ledger.db")
    assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    con.close()
    shutil.copy(saved / "ledger.db", tmp_path / "check.db")
    rows = sqlite3.connect(saved / "ledger.db")
    rows.row_factory = sqlite3.Row
    after = [dict(r) for r in rows.execute("select * from experiments order by id")]
    rows.close()
    assert _essence(after[: len(before)]) == _essence(before)
