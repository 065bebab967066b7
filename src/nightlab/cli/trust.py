"""``nightlab recover``: rebuild a lost or corrupt ledger from the git refs and run directories.
Registered by :mod:`nightlab.cli.app`."""

from __future__ import annotations

from pathlib import Path

import typer

from nightlab.cli.output import console, given
from nightlab.errors import shell_word


def register(app: typer.Typer) -> None:
    """Add the trust commands to the ``nightlab`` CLI."""
    app.command("recover")(recover)


def recover(
    directory: Path = typer.Argument(Path("."), help="The research workspace."),
    tag: str = typer.Option(
        None, "--tag", callback=given, help="Research tag to rebuild (needed when several exist)."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the ledger reads fine."),
) -> None:
    """Rebuild .nightlab/ledger.db from refs/nightlab/experiments/*, the branch and the run dirs."""
    from nightlab.config import load_config, workspace_root
    from nightlab.store.recover import recover as rebuild
    from nightlab.workspace.git import Workspace
    from nightlab.workspace.lock import acquire

    root = workspace_root(directory)
    config = load_config(root)
    lock = acquire(Workspace(root).state_dir)  # never rebuild under a harness writing the ledger
    done = rebuild(root, config, tag=tag, force=force)
    lock.release()
    moved = f"; the old file is {done.moved_to}" if done.moved_to else ""
    if done.carried:  # --force on a readable ledger: what is not this tag's stays as it was
        moved += f"; {done.carried} experiments of other tags and side studies copied from it as they were"
    console.print(
        f"recovered {done.experiments} experiments ({done.kept} kept, {done.runs} runs) of nightlab/{done.tag} "
        f"from its records, git refs and run directories{moved}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"next: nightlab status {shell_word(directory)}", markup=False, highlight=False, soft_wrap=True
    )
