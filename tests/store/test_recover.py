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
