"""What an agent spent outside any experiment, per tag: the rest of the night's bill.

Each experiment's row carries what its proposal cost. Some spending has no row: a proposal the
loop dropped (the best moved while the agent was thinking, or the night ended with one
waiting), a conversation that ended without a proposal (a cap reached in it, Ctrl-C), the last
lessons. It is summed here, in the ledger's meta table, so the morning's cost is the whole bill
and a resumed night's caps count it.
"""

from __future__ import annotations

import json

from nightlab.store.ledger import Ledger
from nightlab.types import ProposalCost

_KEY = "unrecorded_cost:{tag}"


def unrecorded_cost(ledger: Ledger, tag: str) -> dict:
    """The tag's spending outside experiments so far: ``tokens_in``, ``tokens_out``,
    ``cost_usd`` and ``dropped`` (proposals made and never run); zeros when there is none."""
    out = {"tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0, "dropped": 0}
    text = ledger.get_meta(_KEY.format(tag=tag))
    try:
        data = json.loads(text) if text else {}
        for key, kind in (("tokens_in", int), ("tokens_out", int), ("cost_usd", float), ("dropped", int)):
            out[key] = kind(data.get(key) or 0)
    except (ValueError, TypeError, AttributeError):
        pass  # hand-edited beyond reading: the experiments' own costs still stand
    return out


def as_cost(record: dict) -> ProposalCost:
    """The record as a cost an agent can count toward its caps."""
    return ProposalCost(record["tokens_in"], record["tokens_out"], record["cost_usd"], attempts=0)


def add_unrecorded_cost(ledger: Ledger, tag: str, costs: list[ProposalCost], dropped: int = 0) -> dict:
    """Add ``costs`` (and ``dropped`` proposals) to the tag's record; returns the new record."""
    record = unrecorded_cost(ledger, tag)
    costs = [c for c in costs if c.tokens_in or c.tokens_out or c.cost_usd]
    if not costs and not dropped:
        return record
    for cost in costs:
        record["tokens_in"] += cost.tokens_in
        record["tokens_out"] += cost.tokens_out
        record["cost_usd"] = round(record["cost_usd"] + cost.cost_usd, 6)
    record["dropped"] += dropped
    ledger.set_meta(_KEY.format(tag=tag), json.dumps(record))
    return record


def outside_text(record: dict, cents: bool = False) -> str:
    """``(110 tokens, $0.0001 of it outside experiments: ...)`` for a report line; empty when the
    record is empty. ``cents``: dollars to two places, as the morning line shows them."""
    tokens = record["tokens_in"] + record["tokens_out"]
    if not (tokens or record["cost_usd"]):
        return ""
    what = "lessons, abandoned requests"
    if record["dropped"]:
        what = f"{record['dropped']} proposal{'s' * (record['dropped'] != 1)} never run, {what}"
    usd = f"{record['cost_usd']:.2f}" if cents else f"{record['cost_usd']:.4f}"
    return f" ({tokens:,} tokens, ${usd} of it outside experiments: {what})"
