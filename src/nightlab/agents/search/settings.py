"""``[agent.search]``: the offline search agent's settings."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nightlab.plugins import Settings


class SearchSettings(Settings):
    # Per-knob domains where inference needs help: NAME = { low, high, step, log, choices }.
    space: dict[str, Any] = Field(default_factory=dict)
    # Knobs never moved (e.g. a batch split that only changes speed and memory).
    pin: list[str] = Field(default_factory=list)
    seed: int = Field(default=0, ge=0)  # numpy takes no negative seed
    max_knobs_per_move: int = Field(default=2, ge=1)
