"""Moves that switch a Hydra config group (``optim: adam`` to ``sgd``), made as they will run.

Switching a group loads another option file with values of its own: ``optim.lr`` is then SGD's
0.05, not the 1e-3 Adam had. A move that switched the group and also moved ``optim.lr`` would
be a switch with an lr drawn for the other optimizer; and a move recorded with the old file's
values would look untried to the model forever (it runs, and is recorded, with the new file's),
so the search would keep proposing the same switch. So a move that switches a group leaves the
knobs of that group's files alone and takes the values the newly selected file has.
"""

from __future__ import annotations

from typing import Any

from nightlab.agents.search.space import Space

__all__ = ["GroupSwitches"]


class GroupSwitches:
    """Settles the moves of one proposal round in ``space`` (dimension index -> new value)."""

    def __init__(self, space: Space) -> None:
        self.space = space
        found = space.found
        self.selected_by = found.selected_by if found is not None else {}
        dims = {d.knob: i for i, d in enumerate(space.dims) if d.index is None}
        # Per dimension, the group dimensions whose choice selected its knob's file.
        self.under = [[dims[g] for g, _ in self.selected_by.get(d.knob, ()) if g in dims] for d in space.dims]
        self.groups = {i for deps in self.under for i in deps}
        self.cache: dict[tuple[int, Any], dict[int, Any]] = {}

    def settle(self, changes: dict[int, Any]) -> dict[int, Any]:
        """``changes`` with a switched group's file knobs set to the newly selected file's values
        (those the new file lacks keep the incumbent's, as the run will not read them)."""
        if not self.groups.intersection(changes):
            return changes
        out = {i: v for i, v in changes.items() if not any(g in changes for g in self.under[i])}
        for i in sorted(self.groups.intersection(changes)):
            out.update({j: v for j, v in self._values(i, changes[i]).items() if j not in out})
        return out

    def _values(self, dim: int, option: Any) -> dict[int, Any]:
        key = (dim, option)
        if key not in self.cache:
            group = self.space.dims[dim].knob
            values = self.space.found.values_if(group, option) if self.space.found else {}
            out = {}
            for j, d in enumerate(self.space.dims):
                if d.knob in values and dim in self.under[j]:
                    value = values[d.knob]
                    out[j] = (
                        value[d.index] if d.index is not None and isinstance(value, (list, tuple)) else value
                    )
            self.cache[key] = out
        return self.cache[key]
