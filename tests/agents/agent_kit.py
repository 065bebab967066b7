"""Shared pieces for the agent tests: a small incumbent, its context and history entries, a test key.

A plain module (not conftest.py), so test modules import it by a name no other folder uses."""

from __future__ import annotations

from fake_servers import answer_text, block

from nightlab.types import Context, Direction, HistoryEntry

# Two well-formed answers: a learning rate raised, the width doubled (the incumbent's TRAIN).
GOOD = answer_text(
    "raise LR 0.01 -> 0.03",
    "the learning rate is far below the optimum",
    block("train.py", "LR = 0.01  # learning rate", "LR = 0.03  # learning rate"),
)
WIDER = answer_text(
    "WIDTH 64 -> 128",
    "more capacity",
    block("train.py", "WIDTH = 64  # model width", "WIDTH = 128  # model width"),
)

TRAIN = """\
import json
import os

LR = 0.01  # learning rate
WIDTH = 64  # model width


def main():
    loss = abs(LR - 0.3) + abs(WIDTH - 128) / 1000
    print(f"val_loss: {loss:.6f}")


if __name__ == "__main__":
    main()
"""

PREPARE = '''\
"""Data and evaluation: frozen."""
MAX_SEQ_LEN = 256


def evaluate(model, split="val"):
    """Bits per byte on the validation split."""
    secret_internal_detail = 42
    return secret_internal_detail
'''

KEY_ENV = "NIGHTLAB_TEST_LLM_KEY"
KEY = "sk-test-do-not-log-7f3a"


def make_context(history: list[HistoryEntry] | None = None, **changes) -> Context:
    """A context with one editable train.py and a frozen prepare.py."""
    context = Context(
        files={"train.py": TRAIN},
        history=list(history or []),
        metric_name="val_loss",
        direction=Direction.MINIMIZE,
        best=0.354,
        noise=0.002,
        program="Lower val_loss. Keep the script simple.",
        frozen_files={"prepare.py": PREPARE},
        experiments_left=10,
        editable=["train.py"],
        frozen=["prepare.py"],
    )
    for name, value in changes.items():
        setattr(context, name, value)
    return context


def entry(id: int, description: str = "something", **changes) -> HistoryEntry:
    """A finished experiment with plausible defaults."""
    values = dict(
        id=id,
        description=description,
        status="ok",
        decision="discard",
        reason="Δ +0.0001 ± 0.001, 2 runs, not significant",
        metric=0.35,
        spread=0.001,
        runs=2,
        delta=0.0001,
    )
    values.update(changes)
    return HistoryEntry(**values)
