"""Leaving a kept change out of the best by its knobs, where ``git`` cannot revert it.

The search agent's kept changes are knob moves, and consecutive ones touch the same or
neighbouring lines (the learning rate in every move, constants one line apart), so reverting an
older one on top of the best conflicts: a three-way apply needs its context lines unchanged.
Such a change is a set of knob values, ``{knob: (before, after)}``, and can be left out by
value instead: each of its knobs that the best still holds at ``after`` is set back to
``before``. A knob a later kept change moved again stays at the best's value (there is no
"without" for it that keeps the later change), and the ablation says which knobs it left out.

Only a change that is nothing but knob moves is reverted this way (setting its knobs back must
give exactly the files before it): an edit of code lines as well is left to ``git``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nightlab.code.knobs import KNOB_SUFFIXES, KnobValue, find_all_knobs, set_all_knobs
from nightlab.errors import UserError
from nightlab.workspace.git import Workspace


@dataclass(frozen=True)
class KnobRevert:
    """A commit on the best without a change's knob moves, and which knobs it could set back."""

    commit: str | None  # None: every knob it moved was moved again later, nothing to set back
    reverted: list[str]  # knobs set back to their value before the change
    kept: list[str]  # knobs a later kept change moved again: left at the best's value


def revert_knobs_onto(
    workspace: Workspace, change: str, best: str, paths: list[str], command: str = ""
) -> KnobRevert | None:
    """The best (``best``) without the knob moves of ``change`` (a single-parent commit); a
    :class:`KnobRevert` without a commit when the best holds none of its values any more, None
    when ``change`` is not only knob moves.

    ``paths`` are the editable files; ``command`` the run command (Hydra group overrides)."""
    parent = workspace.git("rev-parse", f"{change}^").strip()
    readable = [p for p in paths if p.endswith(KNOB_SUFFIXES)]
    before_files = workspace.read_files(parent, readable, missing_ok=True)
    after_files = workspace.read_files(change, readable, missing_ok=True)
    if set(before_files) != set(after_files) or _others_differ(workspace, parent, change, readable):
        return None
    before = _values(before_files, command)
    after = _values(after_files, command)
    moved = {k: before[k] for k in after if k in before and after[k] != before[k]}
    if not moved or set(before) != set(after):
        return None
    try:
        undone = set_all_knobs(after_files, moved, command)
    except UserError:
        return None
    if {**after_files, **undone} != before_files:  # the change edited more than knob values
        return None
    best_files = workspace.read_files(best, readable, missing_ok=True)
    now = _values(best_files, command)
    back = {k: v for k, v in moved.items() if k in now and now[k] == after[k]}
    changed = {p: t for p, t in set_all_knobs(best_files, back, command).items() if t != best_files[p]}
    if not changed:  # every knob it moved was moved again later: nothing of it is left
        return KnobRevert(None, [], sorted(moved))
    shown = ", ".join(f"{k}={v!r}" for k, v in back.items())
    commit = workspace.commit_files(
        best, changed, f"nightlab ablate: {change[:12]}'s knobs set back: {shown}"
    )
    return KnobRevert(commit, sorted(back), sorted(set(moved) - set(back)))


def _values(files: dict[str, str], command: str) -> dict[str, KnobValue]:
    return {k.name: k.value for k in find_all_knobs(files, command).knobs}


def _others_differ(workspace: Workspace, parent: str, change: str, readable: list[str]) -> bool:
    """Whether ``change`` touched a file knobs cannot live in (or one not among the editable)."""
    touched = workspace.git("diff", "--name-only", "--no-renames", parent, change).split("\n")
    return any(p and p not in readable for p in touched)
