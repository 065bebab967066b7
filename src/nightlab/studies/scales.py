"""Named scales: the same training code at another size, without touching the research branch.

``[scales.NAME]`` in nightlab.toml overrides knobs of the editable files (``DEPTH = 12``, or
``n_layer``, ``model = "big"`` for a Hydra group: any name ``nightlab agent show-space`` lists)
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

from nightlab.code.knobs import KNOB_SUFFIXES, Knob, find_all_knobs, set_all_knobs, set_by_command
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


def scaled_files(
    files: dict[str, str], constants: dict[str, object], scale_name: str, command: str = ""
) -> dict[str, str]:
    """The files whose texts change under ``constants`` (knob name -> value).

    A scale names knobs as the search does (``nightlab agent show-space``): an UPPER_CASE constant, a
    lowercase setting, an argparse or dataclass default, a scalar of a YAML/JSON/TOML config, a
    Hydra group's choice or a selected option file's value (``model = "big"``, ``optim.lr``), so
    a script whose sizes live in ``config.yaml`` scales like train.py's constants. A name no
    editable file defines is an error naming the scale, so a typo such as ``DEPHT = 12`` fails
    before hours of runs, not after; so is one the run ``command`` sets on its command line,
    which would override the edit without a word.
    """
    readable = {path: text for path, text in files.items() if path.endswith(KNOB_SUFFIXES)}
    where = f"nightlab.toml: [scales.{scale_name}] constants"
    known = {knob.name: knob for knob in find_all_knobs(readable, command).knobs}
    constants = {_knob_name(name, known, where): value for name, value in _flat(constants).items()}
    on_command = set_by_command(command, [known[k] for k in constants]) if command else {}
    if on_command:
        words = ", ".join(f"{name} ({shown})" for name, shown in on_command.items())
        raise UserError(
            f"{where}: the run command sets {words}, which would override the scale's value; "
            "take it off [target] run"
        )
    try:
        changed = set_all_knobs(readable, dict(constants), command)  # type: ignore[arg-type]
    except UserError as exc:  # a value of the wrong kind ("an int knob (4); cannot set it to 'x'")
        raise UserError(f"{where}: {str(exc).removeprefix('the editable files: ')}") from None
    return {path: text for path, text in changed.items() if text != files[path]}


def _flat(constants: dict[str, object], prefix: str = "") -> dict[str, object]:
    """TOML reads ``{ model.n_layer = 4 }`` as a nested table; the knob is ``model.n_layer``."""
    out: dict[str, object] = {}
    for key, value in constants.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _knob_name(name: str, known: dict[str, Knob], where: str) -> str:
    """``name`` as a knob of the editable files: itself, or the one knob it ends (``n_layer`` for
    ``model.n_layer`` of config.yaml, as a user who wrote the YAML thinks of it)."""
    if name in known:
        return name
    ends = [k for k in known if k.endswith((f".{name}", f":{name}"))]
    if len(ends) == 1:
        return ends[0]
    if ends:
        raise UserError(f"{where}: {name} could be {' or '.join(ends)}; write the whole name")
    listed = ", ".join(known) if len(known) <= 12 else ", ".join(list(known)[:12]) + ", ..."
    raise UserError(
        f"{where}: {name} is not a knob of the editable files (knobs: {listed or 'none'}; "
        "`nightlab agent show-space` lists them)"
    )


def apply_scale(
    workspace: Workspace, config: Config, commit: str, scale_name: str | None, scale: ScaleConfig
) -> str:
    """A commit on top of ``commit`` with the scale's constants written in; ``commit`` when none."""
    if not scale.constants:
        return commit
    paths = editable_paths(workspace, config, commit)
    files = workspace.read_files(commit, paths)
    changed = scaled_files(files, dict(scale.constants), scale_name or "?", config.target.run)
    if not changed:  # the commit already has the scale's values
        return commit
    shown = ", ".join(f"{k}={v!r}" for k, v in _flat(dict(scale.constants)).items())
    return workspace.commit_files(commit, changed, f"nightlab scale {scale_name}: {shown}")


def set_ref(workspace: Workspace, ref: str, commit: str) -> None:
    """Keep a side study's commit reachable (``refs/nightlab/validate/...``) so nothing run is lost."""
    if not ref.startswith("refs/nightlab/"):
        raise ValueError(f"side-study refs live under refs/nightlab/, not {ref}")
    workspace.git("update-ref", ref, commit)
