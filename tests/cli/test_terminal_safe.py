"""Run- and agent-written text reaches the terminal shown, never obeyed: no escape sequence or
control character of a training log's status line or an agent's description gets through
`nightlab run`, `nightlab status` or `nightlab try`, while its words do (and the ledger keeps
what was said, as it was said)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import TOY_TRAIN, edit, make_workspace, nightlab
from nightlab.formatting import terminal_safe

# A learning rate of 0.5 or more "runs out of memory", saying so with an escape-laden reason.
OOM_TRAIN = TOY_TRAIN.replace(
    "seed = int(",
    'if LR >= 0.5:\n    print("status: oom (\\x1b]0;pwned\\x07\\x1b[2Jfake)")\n    raise SystemExit(1)\n'
    "seed = int(",
)
RED = "\x1b[31mred LR\x1b[0m"


def assert_inert(text: str, *words: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, repr(text)
    for word in words:
        assert word in text, (word, text)


def test_escape_sequences_are_removed_whole() -> None:
    assert terminal_safe("a\x1b[31mred\x1b[0m \x1b[2J\x1b[1;1Hb") == "ared b"
    assert terminal_safe("(\x1b]0;pwned\x07fake)") == "(fake)"  # OSC ended by BEL
    assert terminal_safe("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "link"  # OSC 8 ended by ST
    assert terminal_safe("\x1b]52;c;ZXZpbA==\x07ok") == "ok"  # a clipboard write
    assert terminal_safe("\x1bPq#0\x1b\\after") == "after"  # DCS
    assert terminal_safe("x\x1b7y\x1b(Bz\x1bc") == "xyz"  # other ESC x
    assert terminal_safe("lone\x1b") == "lone"


def test_c1_and_other_controls_go_newlines_only_when_allowed() -> None:
    assert terminal_safe("a\x9b2Jb\x85c\x9d0;t\x07d") == "abcd"  # 8-bit CSI, NEL, 8-bit OSC
    assert terminal_safe("bell\x07 bs\x08 cr\rdel\x7f nul\x00") == "bell bs crdel nul"
    assert terminal_safe("one\ntwo\tthree") == "onetwo three"
    assert terminal_safe("one\r\ntwo\tthree\n", allow="\n") == "one\ntwo three\n"
    assert terminal_safe("a\tb", allow="\t") == "a\tb"
    # an OSC left open loses its introducer only, never the lines after it
    assert terminal_safe("\x1b]0;open\nnext", allow="\n") == "0;open\nnext"
    text = "é ü 日本語 — −0.5 ± 0.01 ✓ 🙂"
    assert terminal_safe(text) == text


def test_invisible_and_direction_characters_are_shown_by_their_code_point() -> None:
    # A right-to-left override would make the rest of a printed diff line read backwards.
    assert terminal_safe("LR = 0.1 # \u202e}\u2066x\u2069") == "LR = 0.1 # <U+202E>}<U+2066>x<U+2069>"
    assert terminal_safe("zero\u200bwidth\ufeff") == "zero<U+200B>width<U+FEFF>"
    assert terminal_safe("שלום عربي") == "שלום عربي"  # right-to-left text itself is text


@pytest.mark.slow
def test_run_status_and_try_print_no_escapes_from_the_log_or_the_agent(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.5", RED)], train=OOM_TRAIN)
    run = nightlab("run", str(root), "--plain", "--tag", "t")
    assert run.returncode == 0, run.stdout + run.stderr
    assert_inert(run.stdout + run.stderr, "red LR", "fake")

    status = nightlab("status", str(root), env={"COLUMNS": "300"})
    assert status.returncode == 0, status.stderr
    assert_inert(status.stdout + status.stderr, "red LR", "fake")
    # The ledger keeps what the run and the agent said; JSON escapes it.
    data = json.loads(nightlab("status", str(root), "--json").stdout)
    oom = data["experiments"][-1]
    assert oom["status"] == "oom" and RED in oom["description"] and "\x1b[2Jfake" in oom["reason"]

    train = root / "train.py"
    train.write_text(train.read_text().replace("LR = 0.1", "LR = 0.7"))
    tried = nightlab("try", "-m", f"\x1b]0;title\x07{RED} again", "--hypothesis", "\x1b[2Jwhy", str(root))
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert_inert(tried.stdout + tried.stderr, "red LR again", "fake", "oom")
