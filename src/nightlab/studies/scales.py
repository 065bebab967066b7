"""Named scales: the same training code at another size, without touching the research branch.

``[scales.NAME]`` in nightlab.toml overrides constants of the editable files (``DEPTH = 12``)
and, optionally, the budget. A research session tunes at a small, cheap scale; ``nightlab
validate --scale big`` then checks that the kept changes still help at the size that matters.
Applying a scale makes a *new* commit on top of the one to scale (the research branch and the
experiment refs never move), so a validation run is as reproducible as any experiment.

Example::

    scale = resolve_scale(config, "big")
    commit = apply_scale(workspace, config, best_commit, "big", scale)   # DEPTH = 12 in train.py
    run_config = scaled_config(config, scale)                           # its budget, if it has one
"""

from __future__ import annotations

from nightlab.code.knobs import knob_values, set_knobs
from nightlab.config import Config, ScaleConfig
from nightlab.errors import UserError
from nightlab.paths import editable_files
from nightlab.workspace.git import Workspace


def resolve_scale(config: Config, name: str | None) -> ScaleConfig:
    """The ``[scales.NAME]`` table; no name means the research scale itself (nothing changes)."""
    if name is None:
        return ScaleConfig()
    if name not in config.scales:
        known = ", ".join(sorted(config.scales)) or "none defined"
        raise UserError(
            f"nightlab.toml: no [scales.{name}] table (scales: {known}); "
            f"add one, e.g. [scales.{name}] constants = {{ DEPTH = 12 }}"
        )
    return config.scales[name]


def scaled_config(config: Config, scale: ScaleConfig) -> Config:
    """A copy of ``config`` whose budget is the scale's, when the scale sets one."""
    if scale.budget is None:
        return config.model_copy(deep=True)
    return config.model_copy(update={"budget": scale.budget.model_copy()}, deep=True)


def editable_paths(workspace: Workspace, config: Config, commit: str) -> list[str]:
    """The editable files present at ``commit`` (:func:`nightlab.paths.is_editable`)."""
    return editable_files(workspace.list_files(commit), config.target.editable, config.target.frozen)


def scaled_files(files: dict[str, str], constants: dict[str, object], scale_name: str) -> dict[str, str]:
    """The files whose texts change under ``constants`` (every file that defines a constant).

    A constant no editable file defines is an error naming the scale, so a typo such as
    ``DEPHT = 12`` fails before hours of runs, not after.
    """
    changed: dict[str, str] = {}
    found: set[str] = set()
    for path, text in files.items():
        if not path.endswith(".py"):
            continue
        present = knob_values(text, path)
        mine = {k: v for k, v in constants.items() if k in present}
        if not mine:
            continue
        found.update(mine)
        new_text = set_knobs(text, mine, path)
        if new_text != text:
            changed[path] = new_text
    missing = [k for k in constants if k not in found]
    if missing:
        where = ", ".join(files) or "no editable file"
        raise UserError(
            f"nightlab.toml: [scales.{scale_name}] constants: {', '.join(missing)} is not a constant "
            f"of the editable files ({where})"
        )
    return changed


def apply_scale(
    workspace: Workspace, config: Config, commit: str, scale_name: str | None, scale: ScaleConfig
) -> str:
    """A commit on top of ``commit`` with the scale's constants written in; ``commit`` when none."""
    if not scale.constants:
        return commit
    paths = editable_paths(workspace, config, commit)
    files = workspace.read_files(commit, paths)
    changed = scaled_files(files, dict(scale.constants), scale_name or "?")
    if not changed:  # the commit already has the scale's values
        return commit
    shown = ", ".join(f"{k}={v!r}" for k, v in scale.constants.items())
    return workspace.commit_files(commit, changed, f"nightlab scale {scale_name}: {shown}")


def set_ref(workspace: Workspace, ref: str, commit: str) -> None:
    """Keep a side study's commit reachable (``refs/nightlab/validate/...``) so nothing run is lost."""
    if not ref.startswith("refs/nightlab/"):
        raise ValueError(f"side-study refs live under refs/nightlab/, not {ref}")
    workspace.git("update-ref", ref, commit)
