"""The diff audit's rules, one by one, without running anything (fast)."""

from __future__ import annotations

import pytest

from nightlab.code.audit import audit_change
from nightlab.config import parse_config
from nightlab.errors import UserError

BASE = """\
import os, json
import prepare
LR = 0.1
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
loss = 1.0
print(f"val_bpb: {loss:.6f}")
prepare.evaluate(None)
"""


def _config(**audit: object):
    data = {"target": {"editable": ["train.py"], "run": "python train.py", "env": {"MY_FLAG": "1"}}}
    data["metric"] = {"name": "val_bpb", "holdout": "holdout_bpb"}
    if audit:
        data["audit"] = audit
    return parse_config(data)


def _flags(new: str, config=None) -> list[str]:
    return audit_change({"train.py": BASE}, {"train.py": new}, config or _config())


@pytest.mark.parametrize(
    ("added", "rule"),
    [
        ("data = open('/data/val.bin', 'rb').read()", "evaluation or holdout data"),
        ("x = prepare.load_split('val')", "evaluation or holdout data"),
        ("x = prepare.load_split('holdout')", "evaluation or holdout data"),
        ("p = os.path.expanduser('~/.cache/nightlab/x')", "evaluation or holdout data"),
        ("from evaluation import score", "the evaluation"),
        ("prepare.evaluate(model)", "the evaluation"),
        ("json.dump({}, open('metrics.json', 'w'))", "the metrics file"),
        ("import nightlab", "harness's internals"),
        ("open('.nightlab/ledger.db')", "harness's internals"),
        ("print(f'val_bpb: {0.1}')", "a metric-like line"),
        ("sys.stdout.write('holdout_bpb= 0.2')", "a metric-like line"),
        ("logging.info('val_bpb: %s', 0.1)", "a metric-like line"),
    ],
)
def test_each_rule_flags_an_added_reference(added: str, rule: str) -> None:
    flags = _flags(BASE + added + "\n")
    assert any(rule in f for f in flags), flags
    assert flags[0].startswith("train.py: ") and "line 8" in " ".join(flags)


def test_existing_references_are_not_blamed_on_the_editor() -> None:
    # The base already prints the metric and calls the evaluation: edits around them are clean,
    # and so is moving them or changing a constant on the same line.
    moved = BASE.replace("LR = 0.1", "LR = 0.3").replace('print(f"val_bpb: {loss:.6f}")\n', "")
    moved += 'print(f"val_bpb: {loss:.4f}")\n'
    assert _flags(moved) == []
    assert _flags(BASE.replace("LR = 0.1", "LR = 0.2  # evaluated later")) == []


def test_environment_allow_list() -> None:
    allowed = "\n".join(
        f"x = os.environ.get('{n}')"
        for n in ("NIGHTLAB_SEED", "NIGHTLAB_BUDGET_SECONDS", "NIGHTLAB_EVAL_SEPARATE", "NIGHTLAB_DEVICE")
    )
    assert _flags(BASE + allowed + "\n") == []
    flags = _flags(
        BASE + "x = os.environ.get('NIGHTLAB_CACHE')\ny = os.environ.get('NIGHTLAB_PROCESS_TAG')\n"
    )
    assert flags == ["train.py: reads the harness's environment (NIGHTLAB_CACHE, NIGHTLAB_PROCESS_TAG)"]


def test_extra_patterns_from_the_config() -> None:
    config = _config(patterns=[r"/mnt/private/\w+"])
    flags = _flags(BASE + "d = '/mnt/private/labels'\n", config)
    assert flags == ["train.py: references a pattern in [audit] patterns (line 8: '/mnt/private/labels')"]


def test_audit_config_is_validated() -> None:
    assert _config().audit.mode == "block"
    with pytest.raises(UserError, match=r"\[audit\] mode"):
        _config(mode="warn")
    with pytest.raises(UserError, match="not a valid regular expression"):
        _config(patterns=["(unclosed"])
    with pytest.raises(UserError, match=r"\[run\] sandbox"):
        parse_config({"target": {"editable": ["a"], "run": "x"}, "run": {"sandbox": "maybe"}})


def test_text_the_configured_metric_pattern_reads_is_flagged() -> None:
    """With the metric read from the log, any added literal the pattern would read is flagged,
    f-strings included; reformatting the script's own metric print is not."""
    config = parse_config(
        {
            "target": {"editable": ["train.py"], "run": "python train.py"},
            "metric": {"name": "loss", "source": "regex", "pattern": r"^step \d+: val loss ([0-9.]+)"},
        }
    )
    base = 'loss = 1.0\nprint(f"step {1}: val loss {loss:.4f}")\n'

    def flags(new: str) -> list[str]:
        return audit_change({"train.py": base}, {"train.py": new}, config)

    assert flags(base.replace(":.4f", ":.6f")) == []
    assert flags(base + 'print("step 9: val loss 0.1")\n')[0].startswith(
        "train.py: prints text the metric pattern"
    )
    assert flags(base + 'import atexit\natexit.register(lambda: print(f"step 9: val loss {0.1:.4f}"))\n')
    assert flags(base + 'print("validation loss is low")\n') == []
    # The script's own formatted print does not license a constant that reads the same: the
    # placeholder stands for "0.5", and a fixed "val loss 0.5" is still a made-up value.
    assert flags('print("step 1: val loss 0.5")\n')[0].startswith("train.py: prints text the metric pattern")
    assert flags('print(f"step 1: val loss {0.5}")\n')  # a constant placeholder is a constant too


def test_invisible_and_direction_characters_are_flagged_and_shown() -> None:
    """Trojan Source: a right-to-left override inside a comment makes the line read
    ``LR = 0.1  # keep the evaluation`` while Python runs what the override hides."""
    rlo, isolate, pop = "\u202e", "\u2066", "\u2069"
    trojan = f"LR = 0.1  # {rlo}{isolate}; prepare.evaluate = print{pop} {isolate}keep the evaluation\n"
    flags = _flags(BASE + trojan)
    (flag,) = [f for f in flags if "invisible or text-direction" in f]
    assert "line 8: '<U+202E>'" in flag, flag
    assert not any(ch in " ".join(flags) for ch in (rlo, isolate, pop))  # the reason is readable as it is
    zero_width = BASE.replace("LR = 0.1", "L\u200bR = 0.1")
    assert any("invisible" in f for f in _flags(zero_width))
    # Text the user's own file already held (a right-to-left label) is not blamed on the editor.
    labelled = BASE + 'LABEL = "\u200fשלום"\n'
    assert audit_change({"train.py": labelled}, {"train.py": labelled.replace("0.1", "0.2")}, _config()) == []
