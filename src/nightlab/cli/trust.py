"""``nightlab recover``: rebuild a lost or corrupt ledger from the git refs and run directories.
Registered by :mod:`nightlab.cli.app`."""

from __future__ import annotations

from pathlib import Path

import typer

from nightlab.cli.output import console


def register(app: typer.Typer) -> None:
    """Add the trust commands to the ``nightlab`` CLI."""
    app.command("recover")(recover)


def recover(
    directory: Path = typer.Argument(Path("."), help="The research workspace."),
    tag: str = typer.Option(None, "--tag", help="Research tag to rebuild (needed when several exist)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the ledger reads fine."),
) -> None:
    """Rebuild .nightlab/ledger.db from refs/nightlab/experiments/*, the branch and the run dirs."""
    from nightlab.config import load_config
    from nightlab.errors import UserError
    from nightlab.store.recover import recover as rebuild

    root = Path(directory).resolve()
    if not root.is_dir():
        raise UserError(f"{root}: no such directory")
    done = rebuild(root, load_config(root), tag=tag, force=force)
    moved = f"; the old file is {done.moved_to}" if done.moved_to else ""
    console.print(
        f"recovered {done.experiments} experiments ({done.kept} kept, {done.runs} runs) of nightlab/{done.tag} "
        f"from git refs and run directories{moved}",
        markup=False,
        highlight=False,
    )
    console.print(
        f"next: nightlab status {directory}   (decision reasons and refused proposals are not recoverable)"
    )
