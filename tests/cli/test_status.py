"""What `status`, `run` and `init` tell a user, checked through the real CLI (issue 17, point 8):
the sign of ``delta``, a rounded best line, a missing [metric] table said out loud, a metric
pattern that matches nothing named with its log and itself, ``init --force`` that loses nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import TOY_TOML, TOY_TRAIN, edit, git, make_workspace, nightlab


def test_status_delta_moves_with_the_metric_and_the_best_line_is_rounded(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3", "LR up")])
    assert nightlab("run", str(root), "--plain", "--tag", "t").returncode == 0
    data = json.loads(nightlab("status", str(root), "--json").stdout)
    kept = data["experiments"][-1]
    assert kept["decision"] == "keep"
    # val_loss went down by ~0.4: delta is the metric's own change (the sign of the reason's Δ),
    # improvement is > 0 when better.
    assert kept["delta"] < -0.3 and kept["improvement"] == -kept["delta"]
    assert re.search(r"Δ −0\.4", kept["reason"]), kept["reason"]
    table = nightlab("status", str(root), env={"COLUMNS": "200"}).stdout
    best = [line for line in table.splitlines() if line.startswith("best:")]
    assert best == [f"best: #{kept['id']} val_loss {kept['metric']:.6f} (LR up)"]


def test_a_missing_metric_table_is_said_at_the_start_of_a_run(tmp_path: Path) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    toml = re.sub(r"\[metric\]\n(?:[^\[].*\n)*", "", toml)
    assert "[metric]" not in toml
    train = TOY_TRAIN.replace('json.dump({"val_loss": loss}, f)', 'json.dump({"val_bpb": loss}, f)')
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")], train=train, toml=toml)
    res = nightlab("run", str(root), "--plain", "-n", "0")
    assert res.returncode == 0, res.stdout + res.stderr
    note = [line for line in res.stdout.splitlines() if line.startswith("note:")]
    assert note == [
        'note: nightlab.toml has no [metric] table; assuming name = "val_bpb", direction = "minimize", '
        "read from metrics.json in the run directory (docs/CONFIG.md, [metric])"
    ]


def test_a_pattern_that_matches_nothing_names_the_evaluation_log_and_the_pattern(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")], source="regex", evaluate=True
    )
    toml = root / "nightlab.toml"
    toml.write_text(toml.read_text().replace("^val_loss:", "^valid_loss:"))
    git(root, "commit", "-qam", "a pattern that matches nothing")
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "/eval.log: [metric] pattern '^valid_loss:" in line, line
    assert "run.log:" not in line  # the metric is read from the evaluation's log, not the trainer's


def test_init_force_never_overwrites_work_git_does_not_hold(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    assert nightlab("init", str(root), "--size", "cpu").returncode == 0
    train = root / "train.py"
    committed = train.read_text()
    assert nightlab("init", str(root), "--size", "cpu", "--force").returncode == 0  # nothing to lose
    train.write_text(committed + "\n# my uncommitted idea\n")
    res = nightlab("init", str(root), "--size", "cpu", "--force")
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "--force would overwrite train.py" in line and "git add -A" in line, line
    assert train.read_text().endswith("# my uncommitted idea\n")
    git(root, "commit", "-qam", "my idea")
    assert nightlab("init", str(root), "--size", "cpu", "--force").returncode == 0  # git holds it now
    assert "my uncommitted idea" in git(root, "show", "HEAD~1:train.py")
