"""Decisions that stay honest with scripts as people write them: a fixed seed, a gain bought with
compute."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from helpers import TOY_TOML, edit, git, make_workspace, nightlab

# Ignores NIGHTLAB_SEED: every replicate gives exactly the same number.
FIXED_SEED = """\
import json, os, random
LR = 0.1
random.seed(1337)
loss = 1.0 + 10 * (LR - 0.3) ** 2 + random.gauss(0, 0.01)
with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "metrics.json"), "w") as f:
    json.dump({"val_loss": loss}, f)
"""

# Trains longer with a bigger WIDTH and reports its training time, as real scripts do.
SLOW_WHEN_WIDE = """\
import json, os, random, time
WIDTH = 64
started = time.time()
time.sleep(WIDTH / 100)
loss = 1.0 + abs(WIDTH - 256) / 1000 + random.Random(int(os.environ["NIGHTLAB_SEED"])).gauss(0, 0.0001)
print("---")
print(f"training_seconds: {time.time() - started:.3f}")
with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "metrics.json"), "w") as f:
    json.dump({"val_loss": loss}, f)
"""


def _rows(root: Path) -> list[dict]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM experiments WHERE kind = 'candidate' ORDER BY id")]
    con.close()
    return rows


def _workspace(tmp_path: Path, train: str, proposals: list[dict], policy_extra: str = "") -> Path:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="confirm") + policy_extra
    return make_workspace(tmp_path / "ws", proposals=proposals, train=train, toml=toml)


def test_a_script_that_ignores_its_seed_is_named_and_never_read_as_certainty(tmp_path: Path) -> None:
    root = _workspace(
        tmp_path,
        FIXED_SEED,
        [edit("LR = 0.1", "LR = 0.101", "LR 0.1 -> 0.101"), edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3")],
    )
    result = nightlab("run", str(root), "--plain", "--tag", "t")
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "runs with different seeds gave exactly" in out and "ignores NIGHTLAB_SEED" in out
    small, large = _rows(root)
    # Identical replicates would make a 0.004 gain "certain"; with the assumed 1% noise it is not.
    assert small["decision"] == "discard"
    assert large["decision"] == "keep" and "noise sd 0.0139 assumed (1% of the incumbent" in large["reason"]
    assert "noise sd 0.0139 assumed" in small["reason"]  # a discard says what it rested on too
    status = json.loads(nightlab("status", str(root), "--json").stdout)
    assert any("ignores NIGHTLAB_SEED" in w for w in status["warnings"])
    table = nightlab("status", str(root), env={"COLUMNS": "200"})
    assert "warning: " in table.stdout and "ignores NIGHTLAB_SEED" in " ".join(table.stdout.split())
    report = nightlab("report", str(root))
    said = " ".join(report.stdout.split())
    assert "ignores NIGHTLAB_SEED" in said and "Noise floor not measurable" in said, said
    assert "sd 0.000000" not in said and "Warning" not in report.stderr  # no matplotlib warning either


def test_a_kept_change_remeasured_on_fresh_runs_keeps_the_assumed_noise(tmp_path: Path) -> None:
    # A fixed seed and [policy] remeasure: the kept change's value and its standard error come
    # from fresh runs, identical again; the error rests on the assumed noise, never on zero.
    root = _workspace(tmp_path, FIXED_SEED, [edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3")])
    toml = (root / "nightlab.toml").read_text().replace("remeasure = 0", "remeasure = 1")
    (root / "nightlab.toml").write_text(toml)
    git(root, "commit", "-qam", "remeasure")
    assert nightlab("run", str(root), "--plain", "--tag", "t").returncode == 0
    (row,) = _rows(root)
    assert row["decision"] == "keep" and "fresh run" in row["reason"]
    assert row["delta_se"] is not None and row["delta_se"] > 0.005  # 0.0139 * sqrt(2): about 0.02


def test_a_declared_noise_sd_is_used_and_named(tmp_path: Path) -> None:
    root = _workspace(tmp_path, FIXED_SEED, [edit("LR = 0.1", "LR = 0.3")], "noise_sd = 0.05\n")
    assert nightlab("run", str(root), "--plain", "--tag", "t").returncode == 0
    (row,) = _rows(root)
    assert row["decision"] == "keep" and "noise sd 0.05 from [policy] noise_sd" in row["reason"]


def test_a_gain_bought_with_compute_is_flagged_or_refused(tmp_path: Path) -> None:
    wider = [edit("WIDTH = 64", "WIDTH = 256", "WIDTH 64 -> 256")]
    root = _workspace(tmp_path / "flag", SLOW_WHEN_WIDE, wider)
    assert nightlab("run", str(root), "--plain", "--tag", "t").returncode == 0
    (row,) = _rows(root)
    assert row["decision"] == "keep" and "as long as the incumbent's" in row["reason"]
    refused = _workspace(tmp_path / "refuse", SLOW_WHEN_WIDE, wider, "refuse_slower = true\n")
    assert nightlab("run", str(refused), "--plain", "--tag", "t").returncode == 0
    (row,) = _rows(refused)
    assert row["decision"] == "discard" and "refused ([policy] refuse_slower)" in row["reason"]


LOG_METRIC = """\
import os, random
LR = 0.1
loss = 1.0 + 10 * (LR - 0.3) ** 2 + random.Random(int(os.environ["NIGHTLAB_SEED"])).gauss(0, 0.002)
print(f"step 100: val loss {loss:.4f}")
"""


def test_printing_what_the_metric_pattern_reads_is_refused(tmp_path: Path) -> None:
    """The atexit attack: a proposal registers a print of a made-up metric line at exit."""
    attack = "import atexit\natexit.register(lambda: print('step 999: val loss 0.5000'))\nLR = 0.1"
    toml = TOY_TOML.format(
        evaluate="", source="regex", pattern="pattern = 'val loss ([0-9.]+)'", policy="greedy"
    )
    root = make_workspace(
        tmp_path / "ws",
        proposals=[edit("LR = 0.1", attack, "exit print"), edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3")],
        train=LOG_METRIC,
        toml=toml,
    )
    result = nightlab("run", str(root), "--plain", "--tag", "t")
    assert result.returncode == 0, result.stderr
    assert "the metric is read from the training log" in " ".join(result.stdout.split())
    attack_row, honest = _rows(root)
    assert attack_row["decision"] == "invalid" and attack_row["commit"] is None
    assert "prints text the metric pattern reads ('step 999: val loss 0.5000'" in attack_row["reason"]
    assert honest["decision"] == "keep"  # the script's own print of the metric is not blamed
    status = json.loads(nightlab("status", str(root), "--json").stdout)
    assert any("frozen evaluate step" in w for w in status["warnings"])


# Seeded, but one setting collapses the model to a constant output, whatever the seed, close
# enough to the baseline that the policy replicates it.
COLLAPSING = """\
import json, os, random
LR = 0.1
COLLAPSE = False
noisy = 1.0 + 10 * (LR - 0.3) ** 2 + random.Random(int(os.environ["NIGHTLAB_SEED"])).gauss(0, 0.01)
with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "metrics.json"), "w") as f:
    json.dump({"val_loss": 1.395 if COLLAPSE else noisy}, f)
"""


def test_a_change_that_makes_runs_identical_is_not_blamed_on_the_script(tmp_path: Path) -> None:
    root = _workspace(tmp_path, COLLAPSING, [edit("COLLAPSE = False", "COLLAPSE = True", "collapse")])
    result = nightlab("run", str(root), "--plain", "--tag", "t")
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "ignores NIGHTLAB_SEED" not in out
    assert "#2:" in out and "this change makes the result independent of the seed" in out
    (row,) = _rows(root)
    assert row["n_runs"] >= 2  # replicated: a group of identical values the floor must not count
    status = json.loads(nightlab("status", str(root), "--json").stdout)
    assert not any("NIGHTLAB_SEED" in w for w in status["warnings"])
    assert status["noise_floor"]["groups"] == 1  # the baseline's replicates only


def test_a_tag_refuses_to_continue_under_another_budget_or_metric(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws",
        proposals=[edit("LR = 0.1", "LR = 0.3", "LR 0.3"), edit("LR = 0.1", "LR = 0.2", "LR 0.2")],
    )
    assert nightlab("run", str(root), "--plain", "--tag", "t", "-n", "1").returncode == 0
    toml = root / "nightlab.toml"
    toml.write_text(
        toml.read_text().replace("seconds = 5", "tokens = 1000").replace("timeout = 30", "timeout = 40")
    )
    git(root, "commit", "-qam", "a token budget")
    again = nightlab("run", str(root), "--plain", "--tag", "t", "-n", "2")
    assert again.returncode == 2
    line = again.stderr.strip()
    assert "\n" not in line and "changed what nightlab/t measures since its baseline" in line, line
    assert "budget seconds = 5 → tokens = 1000" in line and "--tag NEW" in line
    toml.write_text(toml.read_text().replace("tokens = 1000", "seconds = 5"))
    git(root, "commit", "-qam", "the budget back; a longer timeout stays")
    assert (
        nightlab("run", str(root), "--plain", "--tag", "t", "-n", "2").returncode == 0
    )  # timeouts don't measure
