"""``recover`` on a workspace with nothing to rebuild from (fast: no run, no CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_workspace
from nightlab.config import load_config
from nightlab.errors import UserError
from nightlab.store.recover import recover


@pytest.mark.parametrize("tag", [None, "dec01"])
def test_a_workspace_that_never_ran_has_nothing_to_recover(tmp_path: Path, tag: str | None) -> None:
    """It said `name the research tag with --tag (branches nightlab/*: none)`, as if there were
    several sessions to choose from; with --tag, `no branch nightlab/dec01`."""
    root = make_workspace(tmp_path / "ws")
    with pytest.raises(UserError, match=r"^nothing to recover in .*: no branch nightlab/\*") as caught:
        recover(root, load_config(root), tag=tag)
    assert "--tag" not in str(caught.value)
    assert not (root / ".nightlab" / "ledger.db").exists()  # nothing made, nothing moved aside


def test_a_ledger_of_a_newer_nightlab_is_not_rebuilt_as_this_ones(tmp_path: Path) -> None:
    """`recover` took a newer schema's ledger for a lost one: it moved it aside as `damaged` and
    rebuilt it as schema 1, which `run` then went on writing (a downgrade the newer nightlab
    would find). It is refused, the file untouched."""
    from nightlab.store.ledger import Ledger
    from nightlab.store.schema import NewerLedger, open_read_only

    root = make_workspace(tmp_path / "ws")
    db = root / ".nightlab" / "ledger.db"
    db.parent.mkdir()
    with Ledger(db) as ledger:
        ledger.add_experiment(kind="baseline", tag="t", description="baseline")
        ledger.set_meta("schema_version", "7")
    before = db.read_bytes()
    with pytest.raises(UserError, match=r"schema version 7, newer .*upgrade nightlab; recover would rebuild"):
        recover(root, load_config(root))
    assert db.read_bytes() == before and sorted(p.name for p in db.parent.iterdir()) == ["ledger.db"]
    # Read-only, it said "open it once with write access", which cannot help a newer ledger.
    with pytest.raises(NewerLedger, match="upgrade nightlab"):
        open_read_only(db)


def test_force_on_a_readable_ledger_keeps_side_studies_and_other_tags(tmp_path: Path) -> None:
    """`recover --force` rebuilt one tag from its records and dropped everything else from the
    ledger: 8 validate and 3 ablate experiments (61 runs in all) of a workspace were gone from it
    (only the file moved aside still had them). They are copied over as they were."""
    from helpers import git
    from nightlab.store.backup import experiment_dir, save_experiment, save_replicate
    from nightlab.store.ledger import Ledger
    from nightlab.types import RunResult, RunStatus

    root = make_workspace(tmp_path / "ws")
    head = git(root, "rev-parse", "HEAD").strip()
    git(root, "branch", "nightlab/t")
    git(root, "update-ref", "refs/nightlab/experiments/0001", head)
    state = root / ".nightlab"
    with Ledger(state / "ledger.db") as ledger:
        base = ledger.add_experiment(
            kind="baseline", tag="t", commit=head, base_commit=head, description="baseline"
        )
        run_dir = experiment_dir(state, base) / "0"
        result = RunResult(RunStatus.OK, seed=0, total_seconds=1.0)
        ledger.add_run(base, 0, result, 1.0, None, str(run_dir))
        save_replicate(run_dir, result, 1.0, None)
        ledger.finish_experiment(base, status="ok", decision="baseline", metric_mean=1.0, n_runs=1)
        save_experiment(state, ledger.experiment(base))
        study = ledger.add_experiment(
            kind="validate", commit=head, description="validate A", meta_json={"study": "s"}
        )
        for i in range(2):
            ledger.add_run(study, i, RunResult(RunStatus.OK, seed=7 + i), 0.5 + i, 0.6, f"r/{study}/{i}")
        ledger.finish_experiment(study, status="ok", metric_mean=1.0, n_runs=2)
        other = ledger.add_experiment(kind="baseline", tag="u", description="another night")
        ledger.set_meta("start_commit:u", head)
        before = {r.replicate: (r.seed, r.metric, r.created_at) for r in ledger.runs(study)}

    done = recover(root, load_config(root), tag="t", force=True)
    assert done.experiments == 1 and done.carried == 2 and done.moved_to is not None
    with Ledger(state / "ledger.db") as ledger:
        assert [e.id for e in ledger.experiments()] == [base, study, other]
        assert ledger.experiment(study).meta == {"study": "s"} and ledger.experiment(other).tag == "u"
        assert {r.replicate: (r.seed, r.metric, r.created_at) for r in ledger.runs(study)} == before
        assert len(ledger.runs(base)) == 1 and ledger.get_meta("start_commit:u") == head
        assert ledger.get_meta("current_tag") == "t"  # the rebuild's own keys win


def test_a_ledger_locked_by_another_process_is_not_called_corrupt(tmp_path: Path, monkeypatch) -> None:
    """With another process holding it locked past SQLite's 30 s wait, `status` said "ledger ...
    is corrupt (database is locked): rebuild it with `nightlab recover`", and recover would have
    moved the healthy file aside. It says the file is fine, and recover leaves it alone."""
    import sqlite3

    import nightlab.store.ledger as ledger_module
    from nightlab.store.ledger import Ledger
    from nightlab.store.schema import LedgerBusy

    root = make_workspace(tmp_path / "ws")
    db = root / ".nightlab" / "ledger.db"
    db.parent.mkdir()
    with Ledger(db) as ledger:
        ledger.add_experiment(kind="baseline", tag="t", description="baseline")

    def locked(conn: sqlite3.Connection, path: Path) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ledger_module, "open_schema", locked)
    with pytest.raises(
        LedgerBusy, match=r"is locked by another process \(database is locked\).*the file is fine"
    ):
        Ledger(db)
    with pytest.raises(LedgerBusy):
        recover(root, load_config(root))
    assert sorted(p.name for p in db.parent.iterdir()) == ["ledger.db"]  # nothing moved aside


def test_a_rebuild_cut_off_leaves_the_old_file_in_place(tmp_path: Path, monkeypatch) -> None:
    """Recover moved the old file aside first and built the new one in its place: Ctrl-C midway
    left a partial ledger there, which the next `recover` refused as readable."""
    import nightlab.store.recover as recover_module
    from helpers import git
    from nightlab.store.backup import save_experiment
    from nightlab.store.ledger import Ledger

    root = make_workspace(tmp_path / "ws")
    head = git(root, "rev-parse", "HEAD").strip()
    git(root, "branch", "nightlab/t")
    state = root / ".nightlab"
    db = state / "ledger.db"
    with Ledger(db) as ledger:
        for _ in range(2):
            exp = ledger.add_experiment(kind="baseline", tag="t", commit=head, base_commit=head)
            ledger.finish_experiment(exp, status="ok", decision="baseline", n_runs=0)
            save_experiment(state, ledger.experiment(exp))
    db.write_bytes(b"damaged" * 100)  # what recover is for
    before = db.read_bytes()

    def cut(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(recover_module, "_rebuild_runs", cut)
    with pytest.raises(KeyboardInterrupt):
        recover(root, load_config(root))
    assert db.read_bytes() == before and sorted(p.name for p in state.iterdir()) == ["ledger.db", "runs"]
    monkeypatch.undo()
    done = recover(root, load_config(root))
    assert done.experiments == 2 and done.moved_to is not None and done.moved_to.read_bytes() == before


@pytest.mark.parametrize(
    "damage", [{"kind": "bogus"}, {"metric_mean": "abc"}, {"n_runs": 1.5}, {"description": None}]
)
def test_a_damaged_record_is_rebuilt_from_git_not_a_traceback(tmp_path: Path, damage: dict) -> None:
    """A hand-edited or damaged runs/<id>/experiment.json (`"kind": "bogus"`) stopped recover with
    a ValueError traceback; text where a number goes would have entered the ledger."""
    import json

    from helpers import git
    from nightlab.store.backup import save_experiment
    from nightlab.store.ledger import Ledger

    root = make_workspace(tmp_path / "ws")
    head = git(root, "rev-parse", "HEAD").strip()
    git(root, "branch", "nightlab/t")
    git(root, "update-ref", "refs/nightlab/experiments/0001", head)
    state = root / ".nightlab"
    with Ledger(state / "ledger.db") as ledger:
        exp = ledger.add_experiment(kind="baseline", tag="t", commit=head, base_commit=head)
        ledger.finish_experiment(exp, status="ok", decision="baseline", metric_mean=1.0, n_runs=0)
        save_experiment(state, ledger.experiment(exp))
    record = state / "runs" / "0001" / "experiment.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), **damage}))
    for suffix in ("", "-wal", "-shm"):
        (state / f"ledger.db{suffix}").unlink(missing_ok=True)
    done = recover(root, load_config(root))
    assert done.experiments == 1
    with Ledger(state / "ledger.db") as ledger:
        row = ledger.experiment(1)
        assert row.kind == "baseline" and row.agent == "recovered" and row.metric_mean is None  # from git


def test_a_lost_ledger_is_rebuilt_with_its_validate_study(tmp_path: Path) -> None:
    """A deleted ledger came back without the `validate` study of its night (hours of runs at a
    larger scale): a study wrote no experiment record, and recover skipped what has no tag.
    Through the CLI: the study comes back as it was, its runs and verdict included."""
    import json
    import sqlite3

    from helpers import edit, nightlab

    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3", "LR up")])
    assert nightlab("run", str(root), "--plain", "--tag", "t").returncode == 0
    validated = nightlab("validate", str(root), "--tag", "t", "--seeds", "2")
    assert validated.returncode == 0, validated.stdout + validated.stderr

    def study_rows() -> list[tuple]:
        con = sqlite3.connect(root / ".nightlab" / "ledger.db")
        rows = con.execute(
            "SELECT e.id, e.status, e.reason, e.metric_mean, e.n_runs, e.meta_json, COUNT(r.replicate) "
            "FROM experiments e JOIN runs r ON r.experiment_id = e.id WHERE e.kind = 'validate' "
            "GROUP BY e.id ORDER BY e.id"
        ).fetchall()
        con.close()
        return rows

    before = study_rows()
    assert len(before) == 2 and all(row[-1] == 2 for row in before)
    for path in (root / ".nightlab").glob("ledger.db*"):
        path.unlink()
    rebuilt = nightlab("recover", str(root))
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert study_rows() == before
    (study,) = json.loads(nightlab("status", str(root), "--json").stdout)["studies"]
    assert study["state"] == "finished" and study["runs"] == 4
