"""The replay agent's file: every line checked before anything trains, each problem one line."""

from __future__ import annotations

import pytest

from nightlab.agents.replay import load_replay_file
from nightlab.errors import UserError

LINE = b'{"description": "LR up", "edits": [{"path": "train.py", "search": "LR = 0.1", "replace": "LR = 0.3"}]}\n'


def test_a_file_saved_in_another_encoding_names_the_line_and_the_byte(tmp_path):
    """A Latin-1 'é' stopped `nightlab run` with a UnicodeDecodeError traceback."""
    path = tmp_path / "proposals.jsonl"
    path.write_bytes(LINE + LINE.replace(b"LR up", b"caf\xe9"))
    with pytest.raises(UserError) as caught:
        load_replay_file(path)
    assert str(caught.value) == "proposals.jsonl line 2: not UTF-8 text (byte 0xe9); save the file as UTF-8"


def test_good_lines_become_proposals_in_order(tmp_path):
    path = tmp_path / "proposals.jsonl"
    path.write_bytes(b"# a comment\n\n" + LINE)
    [proposal] = load_replay_file(path)
    assert (proposal.description, proposal.meta, proposal.edits[0].replace) == (
        "LR up",
        {"replay_line": 3},
        "LR = 0.3",
    )


def test_a_lone_surrogate_escape_is_refused_before_anything_trains(tmp_path):
    """`"\\ud800"` is valid JSON but not Unicode: it reached the ledger, whose insert raised
    UnicodeEncodeError (a traceback after the experiment had been screened)."""
    path = tmp_path / "proposals.jsonl"
    path.write_bytes(LINE + LINE.replace(b"LR = 0.3", b"LR = 0.3  # \\udc80"))
    with pytest.raises(UserError) as caught:
        load_replay_file(path)
    assert str(caught.value) == (
        "proposals.jsonl line 2: a string holds a lone surrogate escape (\\ud800-\\udfff): not Unicode text"
    )
