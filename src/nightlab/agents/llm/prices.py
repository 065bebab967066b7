"""What a model's tokens cost: the built-in list prices and the user's ``[agent] prices``.

Kept apart from the providers so the price table can be read and extended without the SDK code.
"""

from __future__ import annotations

import re

from nightlab.errors import UserError

# USD per million tokens (input, output): list prices of models whose prices we know, when this
# table was written. A name matches itself and its dated snapshots ("gpt-4o-2024-08-06",
# "claude-haiku-4-5-20251001") only: never a neighbour such as gpt-5.5 for gpt-5, since a wrong
# price is worse than none. Override or extend with [agent] prices = { "my-model" = [0.5, 1.5] };
# a model with no price costs 0 (right for local servers) and a warning says so.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-sonnet-4-0": (3.00, 15.00),
    "claude-sonnet-4-5": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
    "claude-opus-4-0": (15.00, 75.00),
    "claude-opus-4-1": (15.00, 75.00),
    "claude-opus-4-5": (5.00, 25.00),
}

_DATED = re.compile(r"-\d{4}-?\d{2}-?\d{2}$")


def price_for(model: str, overrides: dict[str, list[float]] | None = None) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for ``model`` or its undated name; the user's table first."""
    undated = _DATED.sub("", model)
    for table in (overrides or {}, DEFAULT_PRICES):
        for name in (model, undated):
            if name in table:
                return _pair(name, table[name])
    return None


def _pair(model: str, value: object) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise UserError(f"nightlab.toml: [agent] prices.{model} must be [input $/Mtok, output $/Mtok]")
    return float(value[0]), float(value[1])


def cost_usd(
    model: str, tokens_in: int, tokens_out: int, overrides: dict[str, list[float]] | None = None
) -> float:
    """Dollars for one call; 0.0 for a model with no known price (a local server)."""
    price = price_for(model, overrides)
    if price is None:
        return 0.0
    return (tokens_in * price[0] + tokens_out * price[1]) / 1_000_000
