"""The target's setup command and what it leaves behind: prepared once, available to every run.

A training script's data is often made by a separate script into git-ignored files
(``python data/prepare.py`` writing ``data/train.bin``). Those files are not in any commit, and
every run starts from a clean checkout, so without care they would vanish before the first run.
Here the setup command runs once per version of the frozen files (its command and the frozen
files' hashes name the version), in a worktree of its own; whatever new files it leaves there
are moved into ``.nightlab/setup/<version>/files/``, made read-only, and linked into every
run's worktree after its checkout. A run cannot change them unnoticed: their sizes and
modification times are checked after every run, and the sandbox does not let a run write
outside its worktree and run directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from nightlab.errors import UserError
from nightlab.executor.base import Executor
from nightlab.paths import escape
from nightlab.types import RunSpec, RunStatus
from nightlab.workspace.git import Workspace

SETUP_WORKTREE = "setup"
SETUP_TIMEOUT = 3600  # data preparation may download and tokenize; an hour is generous
MANIFEST = "manifest.json"


@dataclass
class SetupData:
    """The files one version of the setup made: ``entries`` are relative paths (files or folders)."""

    root: Path  # .nightlab/setup/<version>/files
    entries: list[str] = field(default_factory=list)
    stamps: dict[str, list[int]] = field(default_factory=dict)  # file -> [size, mtime_ns]

    @property
    def keep(self) -> list[str]:
        """The entries as globs for checkout and restore, which must leave them in place."""
        return [escape(e) for e in self.entries]

    def link_into(self, tree: Path) -> None:
        """Symlink every entry into ``tree`` (a run's worktree, just checked out)."""
        for rel in self.entries:
            target, link = self.root / rel, tree / rel
            if link.is_symlink() and os.readlink(link) == str(target):
                continue
            if link.is_symlink() or link.is_file():
                link.unlink()
            elif link.exists():
                shutil.rmtree(link)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target, target_is_directory=target.is_dir())

    def changed(self) -> list[str]:
        """Setup files whose size or modification time is not what setup left (a run wrote them)."""
        now = _stamps(self.root)
        return sorted(p for p in set(now) | set(self.stamps) if now.get(p) != self.stamps.get(p))


def setup_version(command: str, frozen_hashes: dict[str, str]) -> str:
    """The name of one version of the setup: its command and the frozen files it ran with."""
    text = json.dumps([command, sorted(frozen_hashes.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_setup(
    workspace: Workspace,
    executor: Executor,
    command: str,
    reference: str,
    version: str,
    env: dict[str, str],
    allow_env: list[str],
    seed: int,
) -> SetupData:
    """Run the setup command for ``version`` unless it already ran; return what it made."""
    home = workspace.state_dir / "setup" / version
    manifest = home / MANIFEST
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        return SetupData(home / "files", data["entries"], data["stamps"])
    tree = workspace.worktree(SETUP_WORKTREE)
    workspace.checkout(tree, reference)
    log_dir = home / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    spec = RunSpec(
        command=command,
        cwd=tree,
        run_dir=log_dir,
        seed=seed,
        timeout=SETUP_TIMEOUT,
        env=env,
        log_name="setup.log",
        allow_env=allow_env,
    )
    result = executor.run(spec)
    if result.status is not RunStatus.OK:
        raise UserError(
            f"setup command `{command}` failed ({result.status.value}: {result.reason}); "
            f"see {log_dir / 'setup.log'}"
        )
    files = home / "files"
    entries = [e for e in workspace.new_entries(tree) if not _is_cache(e)]
    for rel in entries:
        (files / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tree / rel), files / rel)
    _read_only(files)
    setup = SetupData(files, entries, _stamps(files))
    manifest.write_text(
        json.dumps({"command": command, "entries": entries, "stamps": setup.stamps}, indent=1)
    )
    workspace.restore(tree)
    return setup


def _is_cache(rel: str) -> bool:
    name = rel.rstrip("/").rsplit("/", 1)[-1]
    return name == "__pycache__" or name.endswith(".pyc")


def _stamps(root: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    if not root.is_dir():
        return out
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            info = path.lstat()
            out[path.relative_to(root).as_posix()] = [info.st_size, info.st_mtime_ns]
    return out


def _read_only(root: Path) -> None:
    """The files of ``root`` lose their write bits. Folders stay writable, so `rm -rf .nightlab`
    still works; a file a run adds to them is caught by :meth:`SetupData.changed`."""
    if not root.is_dir():
        return
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
