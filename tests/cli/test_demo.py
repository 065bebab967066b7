"""``nightlab demo``'s workspace: made once, with a token budget, committed; reused afterwards."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

from helpers import git
from nightlab.cli.demo import DEMO_BUDGET_FLOPS, DEMO_TIMEOUT, DEMO_WORKERS, prepare_demo_workspace
from nightlab.errors import UserError
from nightlab.executor.slots import usable_cores

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_prepare_demo_workspace_commits_a_flops_budget_once(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    console = quiet()
    prepare_demo_workspace(root, console)
    config = tomllib.loads((root / "nightlab.toml").read_text())
    assert config["budget"] == {"flops": DEMO_BUDGET_FLOPS, "timeout": DEMO_TIMEOUT}
    # Two runs side by side wherever there are two cores to give them (one thread each on two).
    assert config.get("run", {}).get("workers", 1) == (DEMO_WORKERS if len(usable_cores()) >= 2 else 1)
    assert git(root, "status", "--porcelain") == ""
    assert git(root, "log", "--format=%s").splitlines() == [
        f"demo: {DEMO_BUDGET_FLOPS:.3g} training FLOPs per run",
        "nightlab init (gpt, cpu size)",
    ]
    assert f"created {root}" in console.file.getvalue()

    again = quiet()
    prepare_demo_workspace(root, again)
    assert "reusing" in again.file.getvalue()
    assert git(root, "rev-list", "--count", "HEAD") == "2"


def test_prepare_demo_workspace_refuses_a_folder_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(UserError, match="not a nightlab workspace"):
        prepare_demo_workspace(tmp_path, quiet())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
