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
