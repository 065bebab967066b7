"""Classifying a change before it runs, and sizing it for the simplicity penalty."""

from __future__ import annotations

import pytest

from nightlab.code.changes import classify_change, line_counts

TRAIN = '''\
"""Train a tiny model."""
import random

SEED = 1337
LR = 0.01  # learning rate
WIDTH = 64


def main():
    random.seed(SEED)
    return LR * WIDTH
'''
OLD = {"train.py": TRAIN, "notes.txt": "batch size 32\nlr 0.01\n"}


def changed(**files: str) -> dict[str, str]:
    return {**OLD, **files}


def test_identical_is_none() -> None:
    assert classify_change(OLD, dict(OLD)) == "none"


def test_comments_only_is_cosmetic() -> None:
    new = TRAIN.replace("# learning rate", "# the step size, tuned on Tuesday").replace(
        "def main():", "# entry point\ndef main():"
    )
    assert classify_change(OLD, changed(**{"train.py": new})) == "cosmetic"


def test_whitespace_and_formatting_only_is_cosmetic() -> None:
    new = TRAIN.replace("LR * WIDTH", "(LR*WIDTH)").replace("\n\n\ndef", "\n\ndef") + "\n\n"
    assert classify_change(OLD, changed(**{"train.py": new})) == "cosmetic"
    assert classify_change(OLD, changed(**{"notes.txt": "batch size   32\n\nlr 0.01"})) == "cosmetic"


def test_seed_only_is_seed() -> None:
    new = TRAIN.replace("SEED = 1337", "SEED = 42  # another seed")
    assert classify_change(OLD, changed(**{"train.py": new})) == "seed"
    annotated = {"train.py": "RANDOM_SEED: int = 1\nX = 2\n"}
    assert classify_change(annotated, {"train.py": "RANDOM_SEED: int = 7\nX = 2\n"}) == "seed"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("SEED = 1\nLR = 0.1\n", "SEED = 2\nLR = 0.2\n"),  # seed and a real change
        ("N_SEEDS = 3\n", "N_SEEDS = 5\n"),  # how many runs are averaged: not a seed
        ("def f():\n    SEED = 1\n", "def f():\n    SEED = 2\n"),  # not module level
        ("SEED = 1\n", "SEED = 1\nimport os\n"),  # a statement added
        ("SEED = OTHER = 1\n", "SEED = OTHER = 2\n"),  # also binds another name
    ],
)
def test_seed_plus_anything_else_is_code(old: str, new: str) -> None:
    assert classify_change({"train.py": old}, {"train.py": new}) == "code"


def test_real_changes_are_code() -> None:
    assert classify_change(OLD, changed(**{"train.py": TRAIN.replace("0.01", "0.02")})) == "code"
    assert classify_change(OLD, changed(**{"notes.txt": "batch size 64\n"})) == "code"
    # A docstring can be read at run time (``__doc__``), so it is not treated as a comment.
    assert classify_change(OLD, changed(**{"train.py": TRAIN.replace("tiny", "small")})) == "code"
    assert classify_change(OLD, changed(**{"train.py": TRAIN + "def broken(:\n"})) == "code"
    assert classify_change(OLD, {**OLD, "extra.py": ""}) == "code"  # a new file
    assert classify_change(OLD, {"train.py": TRAIN}) == "code"  # a removed file


def test_strongest_kind_over_files_wins() -> None:
    new = changed(**{"train.py": TRAIN.replace("1337", "7"), "notes.txt": "batch size 32 lr 0.01"})
    assert classify_change(OLD, new) == "seed"
    new["notes.txt"] = "batch size 16"
    assert classify_change(OLD, new) == "code"


def test_line_counts_ignore_blank_and_comment_lines() -> None:
    new = TRAIN.replace("WIDTH = 64\n", "WIDTH = 128\nDEPTH = 4\n\n# a comment\n").replace(
        "    random.seed(SEED)\n", ""
    )
    assert line_counts(OLD, changed(**{"train.py": new})) == (2, 2)
    assert line_counts(OLD, changed(**{"train.py": TRAIN + "\n\n# trailing notes\n"})) == (0, 0)
    assert line_counts(OLD, {**OLD, "extra.py": "A = 1\nB = 2\n"}) == (2, 0)
    assert line_counts({"a.py": "x = 1\ny = 2\nz = 3\n"}, {}) == (0, 3)
    assert line_counts(OLD, dict(OLD)) == (0, 0)
