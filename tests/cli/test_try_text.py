"""`nightlab try`'s text arguments: what the ledger stores must be text it can store."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_workspace, nightlab


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["-m", "LR up \udcff"], "'--message' / '-m'"),
        (["-m", "LR up", "--hypothesis", "x\udcff"], "'--hypothesis'"),
    ],
)
def test_a_message_that_is_not_utf8_is_one_usage_line_before_anything_trains(
    tmp_path: Path, args: list[str], named: str
) -> None:
    """`nightlab try -m $'LR up \\xff'` trained the experiment, then ended in a UnicodeEncodeError
    traceback from sqlite: the byte reached the ledger as a lone surrogate (found from outside)."""
    root = make_workspace(tmp_path / "ws")
    (root / "train.py").write_text((root / "train.py").read_text().replace("LR = 0.1 ", "LR = 0.3 "))
    res = nightlab("try", *args, str(root))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[0] == f"error: Invalid value for {named}: not UTF-8 text (byte 0xff): give it in UTF-8"
    assert len(lines) == 2 and lines[1].startswith("usage: nightlab try")
    assert not (root / ".nightlab" / "runs").exists()
