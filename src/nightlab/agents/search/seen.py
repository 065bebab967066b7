"""What the search agent has tried or has in flight, as seen from a new candidate.

An exact repeat of a configuration is never proposed (the agent's ``tried`` keys); a near
repeat is avoided too while farther candidates remain, since with several slots, or after a
first look that came back worse, it would spend a full run measuring the same thing again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nightlab.agents.search.space import Space
from nightlab.types import Context

# Candidates closer than this (in unit coordinates, on every knob) to a configuration already
# tried or in flight are not proposed while farther ones remain (see _away_from).
NEAR = 0.02


def running_configs(context: Context) -> list[dict[str, Any]]:
    """The knob values of experiments still running (in another slot, or before a restart)."""
    return [e.meta["knobs"] for e in context.running if isinstance((e.meta or {}).get("knobs"), dict)]


def away_from(
    space: Space,
    candidates: list[dict[str, Any]],
    seen: list[dict[str, Any]],
    units: dict[tuple, list[float]],
) -> list[dict[str, Any]]:
    """The candidates not within ``NEAR`` of a configuration already tried or in flight.

    Exact repeats are excluded earlier; a near repeat (``LR 0.005`` beside ``0.0051``, the second
    proposed while the first ran in another slot, or after it came back worse during the opening)
    measures the same thing again for a full run. All of them when none is far enough."""
    points = []
    for config in seen:
        try:
            points.append(space.unit(config))
        except (KeyError, TypeError, ValueError):  # a configuration of another space (older knobs)
            continue
    if not points:
        return candidates
    known = np.array(points)
    mask = space.categorical_mask
    far = []
    for c in candidates:
        u = np.array(units.get(space.key(c)) or space.unit(c))
        gap = np.abs(known - u)
        gap[:, mask] = (gap[:, mask] > 0.5).astype(float)
        if np.min(np.max(gap, axis=1)) >= NEAR:
            far.append(c)
    return far or candidates


def running_keys(space: Space, context: Context) -> set[tuple]:
    """The configurations of experiments still running, as keys of ``space``."""
    keys = set()
    for entry in context.running:
        knobs = (entry.meta or {}).get("knobs")
        if isinstance(knobs, dict):
            try:
                keys.add(space.key(knobs))
            except (KeyError, TypeError, ValueError):
                continue
    return keys
