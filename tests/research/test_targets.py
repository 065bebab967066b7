"""Training scripts of the shapes people already have, checked and researched end to end:
settings in an exec'd config file plus flags, argparse defaults, a dataclass config, a YAML
config; and the scripts `nightlab check` must refuse (a fixed seed, an ignored budget)."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from helpers import git, nightlab, script_workspace

LOSS = "1.0 + 10 * (float(lr) - 0.3) ** 2 + abs(int(n_layer) - 8) / 100 + random.Random(seed).gauss(0, 0.002)"

# nanoGPT's shape: lowercase settings, overridden by an exec'd config file and --key=value flags.
NANOGPT_TRAIN = f"""\
import os, random
learning_rate = 0.1
n_layer = 4
max_iters = 100
exec(open("configurator.py").read())
lr, seed = learning_rate, int(os.environ.get("NIGHTLAB_SEED", "1337"))
os.makedirs("out", exist_ok=True)
open("out/ckpt.pt", "w").write("weights")
print(f"iter {{max_iters}}: val loss {{{LOSS}:.4f}}")
"""
CONFIGURATOR = """\
import sys
from ast import literal_eval
for arg in sys.argv[1:]:
    if "=" not in arg:
        exec(open(arg).read())
    else:
        key, value = arg[2:].split("=", 1)
        globals()[key] = literal_eval(value)
"""

ARGPARSE_TRAIN = f"""\
import argparse, os, random
parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--n-layer", type=int, default=4)
parser.add_argument("--max-steps", type=int, default=1000)
args = parser.parse_args()
lr, n_layer, seed = args.lr, args.n_layer, int(os.environ["NIGHTLAB_SEED"])
print(f"val loss {{{LOSS}:.4f}}")
"""

DATACLASS_CONFIG = """\
from dataclasses import dataclass


@dataclass
class TrainConfig:
    lr: float = 0.1
    n_layer: int = 4
"""
DATACLASS_TRAIN = f"""\
import os, random
from config import TrainConfig
cfg = TrainConfig()
lr, n_layer, seed = cfg.lr, cfg.n_layer, int(os.environ["NIGHTLAB_SEED"])
print(f"val loss {{{LOSS}:.4f}}")
"""

YAML_CONFIG = "# the run's settings\nmodel:\n  n_layer: 4   # depth\noptim:\n  lr: 0.1\n"
YAML_TRAIN = f"""\
import os, random
from ruamel.yaml import YAML
cfg = YAML(typ="safe").load(open("config.yaml"))
lr, n_layer, seed = cfg["optim"]["lr"], cfg["model"]["n_layer"], int(os.environ["NIGHTLAB_SEED"])
print(f"val loss {{{LOSS}:.4f}}")
"""


def _workspace(
    root: Path, files: dict[str, str], editable: list[str], frozen: list[str], run: str, extra: str = ""
) -> Path:
    return script_workspace(root, files, editable, frozen, run, extra)


def _checked(tmp_path: Path, script: str, run: str = "python train.py") -> tuple[int, str]:
    """`nightlab check --seconds 1` on a workspace of ``script`` alone: its exit code, its output
    on one line."""
    root = _workspace(tmp_path / "ws", {"train.py": script}, ["train.py"], [], run)
    check = nightlab("check", str(root), "--seconds", "1")
    return check.returncode, " ".join(check.stdout.split()) + check.stderr


SHAPES = {
    "exec'd config + flags": (
        {"train.py": NANOGPT_TRAIN, "configurator.py": CONFIGURATOR, "config/small.py": "learning_rate = 0.1\n",
         "flags.toml": "n_layer = 4\n", ".gitignore": "out/\n"},
        ["config/small.py", "flags.toml"], ["train.py", "configurator.py"],
        "python train.py config/small.py {flags:flags.toml}", 'outputs = ["out/**"]',
        {"learning_rate": "config/small.py", "n_layer": "flags.toml"},
    ),
    "argparse": ({"train.py": ARGPARSE_TRAIN}, ["train.py"], [], "python train.py", "", {"lr": "train.py", "n_layer": "train.py"}),
    "dataclass": (
        {"train.py": DATACLASS_TRAIN, "config.py": DATACLASS_CONFIG}, ["config.py"], ["train.py"],
        "python train.py", "", {"lr": "config.py", "n_layer": "config.py"},
    ),
    "yaml": (
        {"train.py": YAML_TRAIN, "config.yaml": YAML_CONFIG}, ["config.yaml"], ["train.py"],
        "python train.py", "", {"optim.lr": "config.yaml", "model.n_layer": "config.yaml"},
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_script_of_each_shape_is_checked_and_researched(tmp_path: Path, shape: str) -> None:
    files, editable, frozen, run, extra, knobs = SHAPES[shape]
    root = _workspace(tmp_path / "ws", files, editable, frozen, run, extra)
    space = nightlab("agent", "show-space", str(root))
    assert space.returncode == 0, space.stderr
    rows = {line.split()[0]: line for line in space.stdout.splitlines() if line.strip()}
    for name, path in knobs.items():
        assert path in rows[name], (name, rows.get(name))
    assert "max_steps" not in rows or "the budget" in rows["max_steps"]
    check = nightlab("check", str(root), "--seconds", "2")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "a night on this target would be honest" in " ".join(check.stdout.split())
    result = nightlab("run", str(root), "--plain", "--tag", "t", "-n", "3")
    assert result.returncode == 0, result.stderr + result.stdout
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    rows = con.execute("SELECT status, diff FROM experiments WHERE kind = 'candidate'").fetchall()
    con.close()
    assert len(rows) == 3 and all(status == "ok" for status, _ in rows)
    changed = {line[6:] for _, diff in rows for line in diff.splitlines() if line.startswith("+++ b/")}
    assert changed <= set(editable) and changed  # the agent edits the files the knobs live in
    assert git(root, "status", "--porcelain") == ""
    # Each run's record holds its command as it ran: {flags:FILE} expanded from its own commit.
    commands = [json.loads(p.read_text())["command"] for p in root.glob(".nightlab/runs/*/*/replicate.json")]
    assert len(commands) >= 4 and all(c.startswith(run.split("{")[0].strip()) for c in commands), commands
    if "{flags:" in run:
        assert all("{flags:" not in c and "--n_layer=" in c for c in commands), commands


FIXED_SEED = """\
import random
lr = 0.1
print(f"val loss {1.0 + random.Random(1337).gauss(0, 0.01):.4f}")
"""

# A fixed seed in a loop bounded by time: two runs still differ (by timing), so the values alone
# cannot show that the seed never reaches the script (found from outside: `torch.manual_seed(42)`).
FIXED_SEED_TIMED = """\
import random, time
lr = 0.1
jitter = time.perf_counter_ns() % 997 / 1e6
print(f"val loss {1.0 + random.Random(42).gauss(0, 0.01) + jitter:.6f}")
"""

IGNORES_BUDGET = """\
import os, random, time
lr = 0.1
time.sleep(4)
print("---")
print("training_seconds: 4.0")
print(f"val loss {1.0 + random.Random(int(os.environ['NIGHTLAB_SEED'])).gauss(0, 0.01):.4f}")
"""


@pytest.mark.parametrize(
    ("train", "finding"),
    [
        (FIXED_SEED, "FIX seed: seeds 1 and 2 gave the identical"),
        (FIXED_SEED_TIMED, "nor a committed file names NIGHTLAB_SEED, so both ran the script's own seed"),
        (IGNORES_BUDGET, "FIX budget: with a budget of 1 s"),
    ],
)
def test_check_refuses_a_fixed_seed_and_an_ignored_budget(tmp_path: Path, train: str, finding: str) -> None:
    root = _workspace(tmp_path / "ws", {"train.py": train}, ["train.py"], [], "python train.py")
    check = nightlab("check", str(root), "--seconds", "1")
    assert check.returncode == 1
    out = " ".join(check.stdout.split())
    assert finding in out and "fix what is marked FIX" in out


SEED_OPTION_ARGS = """\
import argparse
def parse():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1337)
    return parser.parse_args()
"""
SEED_OPTION_TRAIN = """\
import random
from args import parse
a = parse()
print(f"val loss {1.0 + random.Random(a.seed).gauss(0, 0.01) + a.lr:.4f}")
"""


@pytest.mark.parametrize(
    ("run", "fix"),
    [
        (
            "python train.py",
            'pass it to the script\'s own option: run = "python train.py --seed $NIGHTLAB_SEED"',
        ),
        ("python train.py --seed 7", "the run command sets --seed to a fixed value: give it $NIGHTLAB_SEED"),
    ],
)
def test_check_names_the_scripts_own_seed_option_as_the_fix(tmp_path: Path, run: str, fix: str) -> None:
    """train.py frozen, its options in an editable file: the code edit the check used to suggest
    could not be made; the script's --seed option is the fix (found from outside)."""
    files = {"train.py": SEED_OPTION_TRAIN, "args.py": SEED_OPTION_ARGS}
    root = _workspace(tmp_path / "ws", files, ["args.py"], ["train.py"], run)
    check = nightlab("check", str(root), "--seconds", "1")
    out = " ".join(check.stdout.split())
    assert check.returncode == 1 and "FIX seed: seeds 1 and 2 gave the identical" in out, out
    assert fix in out and "torch.manual_seed" not in out, out


def test_a_script_with_no_knobs_stops_before_anything_runs(tmp_path: Path) -> None:
    train = 'import os\nprint("val loss", 1.0 + int(os.environ["NIGHTLAB_SEED"]) * 0)\n'
    root = _workspace(tmp_path / "ws", {"train.py": train}, ["train.py"], [], "python train.py")
    result = nightlab("run", str(root), "--plain", "--tag", "t")
    assert result.returncode == 2
    assert "the search agent found no knobs in the editable files (train.py)" in result.stderr
    assert not (root / ".nightlab" / "runs").exists()
    space = nightlab("agent", "show-space", str(root))
    assert space.returncode == 2 and "found no knobs" in " ".join(space.stderr.split())


SLOW_START = """\
import os, random, time
lr = 0.1
time.sleep(1.0)  # start-up: imports, data
budget = float(os.environ["NIGHTLAB_BUDGET_SECONDS"])
time.sleep(budget)
print("---")
print(f"training_seconds: {budget}")
print(f"val loss {1.0 + random.Random(int(os.environ['NIGHTLAB_SEED'])).gauss(0, 0.01):.4f}")
"""


def test_check_says_what_share_of_a_run_training_gets_at_the_nights_budget(tmp_path: Path) -> None:
    code, out = _checked(tmp_path, SLOW_START)
    assert code == 0, out
    found = re.search(
        r"([\d.]+) s of a run is outside training \(start-up, checkpoints, evaluation\): at the "
        r"night's 5 s budget a run trains about (\d+)% of its time",
        out,
    )
    assert found, out
    outside, share = float(found.group(1)), int(found.group(2))
    assert outside >= 1.0  # the script's own second of start-up, at least
    # Both figures are printed rounded: the time outside to 0.1 s, the share to 1%.
    low, high = 100 * 5 / (5 + outside + 0.05), 100 * 5 / (5 + outside - 0.05)
    assert round(low) <= share <= round(high), (share, low, high)


def test_check_share_under_a_budget_a_check_keeps_is_the_runs_own() -> None:
    from nightlab.config import BudgetConfig
    from nightlab.research.check import _training_share
    from nightlab.research.runner import Replicate
    from nightlab.types import RunResult, RunStatus

    def rep(trained: float, wall: float) -> Replicate:
        result = RunResult(RunStatus.OK, training_seconds=trained, total_seconds=wall)
        return Replicate(result, 1.0, None, Path("r"))

    tokens = BudgetConfig(tokens=1000, timeout=60)
    # The run least slowed by anything else speaks: 9 s outside training, not 13.
    assert _training_share([rep(27.0, 36.0), rep(27.0, 40.0)], tokens) == (
        "training 27.0 s of it (75%); 9.0 s outside training"
    )
    assert _training_share([rep(0.0, 5.0)], tokens) == ""  # no training time reported


FIXED_WORK = """\
import os, random, time
lr = 0.1
time.sleep(1.5)  # a fixed number of steps, whatever the budget
print(f"val loss {1.0 + random.Random(int(os.environ['NIGHTLAB_SEED'])).gauss(0, 0.01):.4f}")
"""


def test_check_says_when_it_cannot_tell_whether_the_budget_is_followed(tmp_path: Path) -> None:
    code, out = _checked(tmp_path, FIXED_WORK)
    assert code == 0, out  # nothing to fix, but not a pass either: marked ??, not ok
    assert re.search(
        r"\?\? budget: with a budget of 1 s a run ran [\d.]+ s in all, within the 31 s allowed for "
        r"start-up and evaluation; whether it trains for NIGHTLAB_BUDGET_SECONDS or a fixed amount "
        r"was not checked: it prints no training_seconds",
        out,
    ), out
    assert "ok budget" not in out
    assert "nothing to fix, but not everything was checked (budget: see ??)" in out, out
    assert "would be honest: nightlab run" not in out


def test_check_on_uncommitted_changes_says_they_were_not_checked(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", {"train.py": SLOW_START}, ["train.py"], [], "python train.py")
    (root / "train.py").write_text(SLOW_START + "raise SystemExit('an uncommitted bug')\n")
    check = nightlab("check", str(root), "--seconds", "1")
    assert check.returncode == 1
    out = " ".join(check.stdout.split())
    assert "FIX commit: uncommitted changes (train.py): the runs above used the committed files" in out


JSON_METRICS = """\
import json, os, random
lr = 0.1
loss = 1.0 + random.Random(int(os.environ["NIGHTLAB_SEED"])).gauss(0, 0.01)
with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "metrics.json"), "w") as f:
    json.dump({"val_loss": loss, "steps": 10}, f)
"""


def test_a_json_metric_under_another_name_is_named_with_what_the_file_holds(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", {"train.py": JSON_METRICS}, ["train.py"], [], "python train.py")
    toml = (root / "nightlab.toml").read_text()
    toml = toml.replace('name = "val_loss"', 'name = "val_mse"').replace(
        'source = "regex"', 'source = "json"'
    )
    (root / "nightlab.toml").write_text(toml.replace("pattern = 'val loss ([0-9.]+)'\n", ""))
    git(root, "commit", "-qam", "json metric")
    check = nightlab("check", str(root), "--seconds", "1")
    assert check.returncode == 1
    out = " ".join(check.stdout.split())
    assert "metric 'val_mse' not found in" in out and "which holds steps, val_loss ([metric] name)" in out


def test_check_does_not_count_a_knob_the_run_command_sets_as_searched(tmp_path: Path) -> None:
    _, out = _checked(tmp_path, ARGPARSE_TRAIN, run="python train.py --lr=0.2")
    found = re.search(r"knobs: (\d+) searched \(([^)]*)\)", out)
    assert found, out
    assert "lr" not in found.group(2).split(", ") and "n_layer" in found.group(2).split(", ")


def test_show_space_says_which_knobs_the_run_command_sets(tmp_path: Path) -> None:
    root = _workspace(
        tmp_path / "ws", {"train.py": ARGPARSE_TRAIN}, ["train.py"], [], "python train.py --lr 0.2"
    )
    space = nightlab("agent", "show-space", str(root))
    assert space.returncode == 0, space.stderr
    rows = {line.split()[0]: " ".join(line.split()) for line in space.stdout.splitlines() if line.strip()}
    assert "pinned" in rows["lr"] and "set by the run command (`--lr 0.2`)" in rows["lr"]
    assert "pinned" not in rows["n_layer"]
    assert "under [agent.search] (space = {...}, pin = [...])" in " ".join(space.stdout.split())


STEPS_SCRIPT = """\
import os, random
lr = 0.1
steps = {steps}
print(f"val loss {{1.0 + random.Random(int(os.environ['NIGHTLAB_SEED'])).gauss(0, 0.01):.4f}}")
print("---")
print(f"num_steps: {{steps}}")
"""


@pytest.mark.parametrize(
    ("steps", "finding"),
    [
        ('int(os.environ["NIGHTLAB_BUDGET_STEPS"])', "ok budget: with a budget of 50 steps a run trained 50"),
        ("1000", "FIX budget: with a budget of 50 steps a run trained 1000: the script does not follow"),
        (
            None,  # no num_steps line: nothing to compare the budget with
            "?? budget: a budget of 50 steps (NIGHTLAB_BUDGET_STEPS) was not checked, only the 60 s "
            "timeout: the runs print no count of steps trained",
        ),
    ],
)
def test_check_compares_a_steps_budget_with_the_steps_a_run_says_it_trained(
    tmp_path: Path, steps: str | None, finding: str
) -> None:
    script = STEPS_SCRIPT.format(steps=steps or "1000")
    if steps is None:
        script = script.replace('print(f"num_steps: {steps}")\n', "")
        assert "num_steps" not in script
    root = _workspace(tmp_path / "ws", {"train.py": script}, ["train.py"], [], "python train.py")
    toml = (root / "nightlab.toml").read_text().replace("seconds = 5", "steps = 50")
    (root / "nightlab.toml").write_text(toml)
    git(root, "commit", "-qam", "a steps budget")
    check = nightlab("check", str(root))
    out = " ".join(check.stdout.split())
    assert finding in out, out
    assert check.returncode == (1 if finding.startswith("FIX") else 0)
    assert ("not everything was checked" in out) is finding.startswith("??"), out


def test_a_metric_printed_as_nan_is_named_nan_not_an_unmatched_pattern(tmp_path: Path) -> None:
    code, out = _checked(tmp_path, "lr = 0.1\nprint('step 10: val loss nan')\n")
    assert code == 1
    assert "metric 'val_loss' is NaN (the log says: step 10: val loss nan)" in out, out
    assert "matched no line" not in out
