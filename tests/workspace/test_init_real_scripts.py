"""``nightlab init --script`` on training scripts in the shapes researchers write them
(tests/fixtures/scripts: nanoGPT, timm, CleanRL, flax, ...): what it commits, what it reads."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import git
from nightlab.config import load_config
from nightlab.workspace.script_init import init_script

SCRIPTS = Path(__file__).parent.parent / "fixtures" / "scripts"


def copy(name: str, tmp_path: Path) -> Path:
    """A fresh copy of the fixture folder ``name`` (no git yet, as a user's folder may be)."""
    return Path(shutil.copytree(SCRIPTS / name, tmp_path / name))


def test_nanogpts_configurator_is_committed_so_a_run_finds_it(tmp_path: Path) -> None:
    """nanoGPT's train.py runs ``exec(open('configurator.py').read())``: init committed train.py
    and model.py only, so every run's worktree lacked configurator.py and failed at once."""
    folder = copy("nanogpt", tmp_path)
    *_, committed = init_script(folder, "train.py")
    assert "configurator.py" in committed
    assert "configurator.py" in git(folder, "ls-files").split()
    assert load_config(folder).target.editable == ["train.py", "model.py"]  # run beside, not settings
