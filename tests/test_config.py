"""``nightlab.toml`` mistakes as a user meets them: one ``error:`` line naming what to fix, exit 2.

Run through the real CLI (``nightlab check``), since the order of the messages and the line the
user reads are what these tests pin.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TOY_TOML, make_workspace, nightlab
from nightlab.config import load_config
from nightlab.errors import UserError

REGEX_TOML = TOY_TOML.format(evaluate="", source="regex", pattern="{pattern}", policy="greedy")


def _error_line(root: Path, *args: str) -> str:
    res = nightlab(*args, str(root))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_a_typo_in_a_required_key_leads_with_the_unknown_key(tmp_path: Path) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    root = make_workspace(tmp_path / "ws", toml=toml.replace("editable =", "editabel ="))
    line = _error_line(root, "check")
    assert "unknown key 'editabel' in [target] (did you mean 'editable'?) (and 1 more)" in line
    assert "Field required" not in line


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("timeout = 30", "timout = 30", "unknown key 'timout' in [budget] (did you mean 'timeout'?)"),
        ("[metric]", "[metrics]", "unknown key 'metrics' in top level (did you mean 'metric'?)"),
        (
            "[metric]",
            "[audit]\nmod = 'mark'\n[metric]",
            "unknown key 'mod' in [audit] (did you mean 'mode'?)",
        ),
    ],
)
def test_a_typo_in_an_optional_key_suggests_the_known_one(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    root = make_workspace(tmp_path / "ws", toml=toml.replace(old, new, 1))
    assert expected in _error_line(root, "check")


def test_an_unknown_key_unlike_any_known_one_gets_no_suggestion(tmp_path: Path) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    root = make_workspace(tmp_path / "ws", toml=toml.replace("[budget]", "[budget]\nzzzq = 1"))
    line = _error_line(root, "check")
    assert line.endswith("unknown key 'zzzq' in [budget]")


def test_a_metric_pattern_with_two_groups_is_refused_at_config_time(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws",
        source="regex",
        toml=REGEX_TOML.format(pattern="pattern = '^(val_loss):\\s*([0-9.]+)'"),
    )
    line = _error_line(root, "check")
    assert "pattern has 2 capture groups" in line and "(?:...)" in line


def test_a_metric_pattern_with_one_named_group_is_accepted(tmp_path: Path) -> None:
    toml = REGEX_TOML.format(pattern="pattern = '^(?:val_loss):\\s*(?P<v>[0-9.]+)'")
    (tmp_path / "nightlab.toml").write_text(toml)
    assert load_config(tmp_path).metric.pattern == "^(?:val_loss):\\s*(?P<v>[0-9.]+)"


@pytest.mark.parametrize(
    "progress, ok",
    [
        ("'step (\\d+): .*val loss ([0-9.]+)'", False),
        ("'step (?P<step>\\d+): .*val loss ([0-9.]+)'", True),  # the documented form
        ("'step (\\d+): .*val loss (?P<value>[0-9.]+)'", True),
    ],
)
def test_a_progress_pattern_needs_one_unnamed_group_or_a_named_value(
    tmp_path: Path, progress: str, ok: bool
) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    toml = toml.replace('name = "val_loss"', f'name = "val_loss"\nprogress_pattern = {progress}')
    if ok:
        (tmp_path / "nightlab.toml").write_text(toml)
        assert load_config(tmp_path).metric.progress_pattern
    else:
        line = _error_line(make_workspace(tmp_path / "ws", toml=toml), "status")
        assert "progress_pattern has 2 unnamed capture groups" in line and "(?P<value>...)" in line


@pytest.mark.parametrize(
    "name", ["val_acc", "valAccuracy", "eval/f1", "mAP@0.5", "bleu4", "pass@1", "reward_mean"]
)
def test_a_metric_named_as_a_score_must_say_its_direction(tmp_path: Path, name: str) -> None:
    """Minimising an accuracy by default made a night keep four changes that took a classifier
    from 76% to 17% (found from outside); such a name must set direction."""
    base = f'[target]\nrun = "python train.py"\neditable = ["train.py"]\n[metric]\nname = "{name}"\n'
    (tmp_path / "nightlab.toml").write_text(base)
    with pytest.raises(
        UserError, match=r'reads as a score where higher is better.*set direction = "maximize"'
    ):
        load_config(tmp_path)
    for direction in ("maximize", "minimize"):  # said either way, it is the user's word
        (tmp_path / "nightlab.toml").write_text(base + f'direction = "{direction}"\n')
        assert load_config(tmp_path).metric.direction.value == direction


@pytest.mark.parametrize("name", ["val_bpb", "top1_error", "test_loss", "acc_err", "score", "val_ppl"])
def test_a_metric_named_as_a_loss_keeps_the_default_direction(tmp_path: Path, name: str) -> None:
    (tmp_path / "nightlab.toml").write_text(
        f'[target]\nrun = "python train.py"\neditable = ["train.py"]\n[metric]\nname = "{name}"\n'
    )
    assert load_config(tmp_path).metric.direction.value == "minimize"
