"""Knob discovery and literal rewriting: the file must round-trip except the literal."""

from __future__ import annotations

import pytest

from nightlab.code.knobs import find_knobs, format_literal, knob_values, set_knobs
from nightlab.errors import UserError

KARPATHY_STYLE = '''"""Pretraining script."""
import os

# Model architecture
ASPECT_RATIO = 64       # model_dim = depth * ASPECT_RATIO
HEAD_DIM = 128          # target head dimension for attention
WINDOW_PATTERN = "SSSL" # sliding window pattern: L=full, S=half context

# Optimization
TOTAL_BATCH_SIZE = 2**19 # ~524K tokens per optimizer step
EMBEDDING_LR = 0.6      # learning rate for token embeddings (Adam)
MATRIX_LR = 0.04        # learning rate for matrix parameters (Muon)
ADAM_BETAS = (0.8, 0.95) # Adam beta1 and beta2
WARMUP_RATIO = 0.0      # fraction of time budget for LR warmup
DEPTH = 8               # number of transformer layers

model_dim = DEPTH * ASPECT_RATIO
'''

ODD = """import math
LR=3e-4#no spaces at all
WD   =    1E-2     #   lots of spaces
NEG = -0.5
NEG_INT = -3
BIG = 1_000_000
SMALL_FLOAT = 1_0.5
FLAG: bool = True  # annotated
OFF = False
NAME = 'gelu'
MULTI = [
    1,   # first
    2,
]
BARE_TUPLE = 0.9, 0.999
SINGLE = (5,)
A = B = 3
COMPUTED = LR * 2
NONE_VALUE = None
lower = 4
_PRIVATE = 2
PLUS = +7
if True:
    INSIDE = 1
def f():
    LOCAL = 2
DUP = 1
DUP = 2  # wins
UNI = 'ä€'  ;  AFTER = 1.5e3
"""


def test_discovers_karpathy_block_with_comments() -> None:
    knobs = {k.name: k for k in find_knobs(KARPATHY_STYLE)}
    assert list(knobs) == [
        "ASPECT_RATIO",
        "HEAD_DIM",
        "WINDOW_PATTERN",
        "TOTAL_BATCH_SIZE",
        "EMBEDDING_LR",
        "MATRIX_LR",
        "ADAM_BETAS",
        "WARMUP_RATIO",
        "DEPTH",
    ]
    assert knobs["TOTAL_BATCH_SIZE"].value == 2**19
    assert knobs["TOTAL_BATCH_SIZE"].kind == "int"
    assert knobs["TOTAL_BATCH_SIZE"].text == "2**19"
    assert knobs["ADAM_BETAS"].value == (0.8, 0.95)
    assert knobs["ADAM_BETAS"].kind == "tuple"
    assert knobs["WINDOW_PATTERN"].kind == "str"
    assert knobs["MATRIX_LR"].comment == "learning rate for matrix parameters (Muon)"
    assert knobs["WINDOW_PATTERN"].comment == "sliding window pattern: L=full, S=half context"
    depth = knobs["DEPTH"]
    assert (depth.line, depth.col, depth.end_line, depth.end_col) == (15, 8, 15, 9)
    assert KARPATHY_STYLE[depth.start : depth.end] == "8"


def test_discovers_odd_formatting() -> None:
    knobs = {k.name: k for k in find_knobs(ODD, "odd.py")}
    values = {name: k.value for name, k in knobs.items()}
    assert values == {
        "LR": 3e-4,
        "WD": 1e-2,
        "NEG": -0.5,
        "NEG_INT": -3,
        "BIG": 1_000_000,
        "SMALL_FLOAT": 10.5,
        "FLAG": True,
        "OFF": False,
        "NAME": "gelu",
        "MULTI": [1, 2],
        "BARE_TUPLE": (0.9, 0.999),
        "SINGLE": (5,),
        "PLUS": 7,
        "DUP": 2,
        "UNI": "ä€",
        "AFTER": 1500.0,
        "lower": 4,  # a lowercase setting of the leading block (before `if True:`)
    }
    assert knobs["lower"].source == "setting" and knobs["LR"].source == "constant"
    kinds = {name: k.kind for name, k in knobs.items()}
    assert kinds["LR"] == "float" and kinds["NEG_INT"] == "int" and kinds["FLAG"] == "bool"
    assert kinds["MULTI"] == "list" and kinds["BARE_TUPLE"] == "tuple"
    assert knobs["LR"].comment == "no spaces at all"
    assert knobs["WD"].comment == "lots of spaces"
    assert knobs["WD"].text == "1E-2"
    assert knobs["NEG"].text == "-0.5"
    assert knobs["DUP"].comment == "wins"
    assert knobs["MULTI"].comment == ""  # the comment inside the list belongs to an element
    assert knobs["AFTER"].text == "1.5e3" and knobs["AFTER"].col == 23  # columns in characters
    for knob in knobs.values():
        assert ODD[knob.start : knob.end] == knob.text
        assert knob.path == "odd.py"


def test_syntax_error_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"broken\.py: not valid Python"):
        find_knobs("LR = (0.1\n", "broken.py")


def _diff_outside(old: str, new: str, start: int, end: int, replacement: str) -> None:
    assert new == old[:start] + replacement + old[end:]


def test_set_knobs_round_trips_except_the_literal() -> None:
    knobs = {k.name: k for k in find_knobs(KARPATHY_STYLE)}
    out = set_knobs(KARPATHY_STYLE, {"MATRIX_LR": 0.05})
    m = knobs["MATRIX_LR"]
    _diff_outside(KARPATHY_STYLE, out, m.start, m.end, "0.05")
    assert set_knobs(out, {"MATRIX_LR": 0.04}) == KARPATHY_STYLE  # and back, byte for byte
    assert set_knobs(KARPATHY_STYLE, {}) == KARPATHY_STYLE


def test_set_knobs_many_at_once_keeps_styles() -> None:
    out = set_knobs(
        ODD,
        {
            "LR": 6e-4,
            "WD": 0.002,
            "NEG": -0.25,
            "BIG": 2_000_000,
            "FLAG": False,
            "NAME": "relu",
            "MULTI": [4, 8],
            "BARE_TUPLE": (0.85, 0.99),
            "SINGLE": (6,),
            "UNI": "x'y",
            "AFTER": 2500.0,
            "PLUS": 9,
        },
        "odd.py",
    )
    expected = (
        ODD.replace("LR=3e-4#", "LR=6e-4#")
        .replace("1E-2", "2E-3")
        .replace("NEG = -0.5", "NEG = -0.25")
        .replace("1_000_000", "2_000_000")
        .replace("FLAG: bool = True", "FLAG: bool = False")
        .replace("'gelu'", "'relu'")
        .replace("    1,   # first\n    2,", "    4,   # first\n    8,")
        .replace("0.9, 0.999", "0.85, 0.99")
        .replace("(5,)", "(6,)")
        .replace("'ä€'", "'x\\'y'")
        .replace("1.5e3", "2.5e3")
        .replace("+7", "9")
    )
    assert out == expected
    values = knob_values(out)
    assert values["UNI"] == "x'y" and values["MULTI"] == [4, 8] and values["WD"] == 0.002


def test_unknown_knob_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"train\.py: no knob named DEPHT"):
        set_knobs(KARPATHY_STYLE, {"DEPHT": 4})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DEPTH", "big", r"DEPTH is an int knob \(8\); cannot set it to 'big'"),
        ("WINDOW_PATTERN", 3, r"WINDOW_PATTERN is a str knob"),
        ("MATRIX_LR", float("nan"), r"MATRIX_LR is a float knob"),
        ("MATRIX_LR", True, r"MATRIX_LR is a float knob"),
        ("ADAM_BETAS", (0.9, "x"), r"ADAM_BETAS is a tuple knob"),
    ],
)
def test_a_value_of_another_kind_is_a_user_error(name: str, value: object, message: str) -> None:
    with pytest.raises(UserError, match=message):
        set_knobs(KARPATHY_STYLE, {name: value})
    # numbers stay interchangeable: an int for a float knob is written as a float
    assert "MATRIX_LR = 1.0 " in set_knobs(KARPATHY_STYLE, {"MATRIX_LR": 1})


def test_crlf_and_unicode_lines_keep_offsets() -> None:
    src = '# ünïcödé header\r\nLR = 0.1  # lr\r\nNAME = "é"; DEPTH = 4\r\n'
    knobs = {k.name: k for k in find_knobs(src)}
    assert knobs["LR"].comment == "lr"
    out = set_knobs(src, {"DEPTH": 6, "LR": 0.2})
    assert out == src.replace("0.1", "0.2").replace("DEPTH = 4", "DEPTH = 6")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("0.04", 0.05, "0.05"),
        ("3e-4", 6e-4, "6e-4"),
        ("3e-4", 0.5, "0.5"),  # scientific only where it reads well
        ("3E-4", 1.5e-5, "1.5E-5"),
        ("0.1", 1e-7, "1e-7"),
        ("1.0", 2, "2.0"),  # a float stays a float
        ("4", 6, "6"),
        ("-3", 5, "5"),
        ("2**19", 2**18, "2**18"),
        ("2 ** 10", 2**12, "2 ** 12"),
        ("2**19", 300000, "300000"),  # not a power of two any more: plain
        ("1_000", 2500, "2_500"),
        ("0x10", 32, "0x20"),
        ("True", False, "False"),
        ('"SSSL"', "LLLL", '"LLLL"'),
        ("'a'", 'say "hi"', "'say \"hi\"'"),
        ("(0.8, 0.95)", (0.9, 0.99), "(0.9, 0.99)"),
        ("(0.8,0.95)", (0.9, 0.99), "(0.9,0.99)"),
        ("[1, 2]", [1, 2, 3], "[1, 2, 3]"),
        ("(1, 2)", (3,), "(3,)"),
        ("0.0", 0.0, "0.0"),
    ],
)
def test_format_literal(old: str, new: object, expected: str) -> None:
    assert format_literal(old, new) == expected


def test_format_literal_round_trips_values() -> None:
    for old in ("0.04", "3e-4", "1_000.0", "-2.5"):
        for value in (1e-9, 3.3e-5, 0.012345, 0.7, 12.0, 123456.789, 5e8, -0.03):
            text = format_literal(old, value)
            assert float(eval(text)) == value, (old, value, text)
