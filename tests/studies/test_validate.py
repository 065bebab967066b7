"""``nightlab validate`` end to end through the real CLI, on fast synthetic targets.

The synthetic target (tests/fixtures/synthetic_target) has a known optimum, so a test knows
which change is a real improvement and which only moves the noise; the curve toy below follows
the time-to-target protocol (curve.jsonl, stop at the target) in simulated seconds, so the
statistics are tested in seconds rather than hours.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from helpers import edit, git, make_workspace, nightlab

FIXTURE = Path(__file__).parents[1] / "fixtures" / "synthetic_target" / "train.py"

SYNTHETIC_TOML = """\
[target]
editable = ["train.py"]
run = "python train.py"
[budget]
seconds = 5
timeout = 30
[metric]
name = "val_loss"
direction = "minimize"
source = "json"
holdout = "holdout_loss"
[agent]
kind = "replay"
file = "proposals.jsonl"
[policy]
kind = "{policy}"
baseline_runs = 2
max_runs = 4
[scales.big]
constants = {{ DEPTH = 5, BATCH_SIZE = 128 }}
[scales.typo]
constants = {{ DEPHT = 5 }}
"""

# Simulated training: the loss falls as floor + 2 exp(-rate t); a larger LR learns faster.
CURVE_TRAIN = """\
import json, math, os, random
LR = 0.01  # learning rate: larger learns faster (up to 0.04)
DEPTH = 2  # a deeper model reaches a lower floor
SEED = 0

seed = int(os.environ.get("NIGHTLAB_SEED", "0"))
rng = random.Random(seed * 7919 + SEED)
budget = float(os.environ.get("NIGHTLAB_BUDGET_SECONDS", "100"))
interval = float(os.environ.get("NIGHTLAB_EVAL_INTERVAL_SECONDS") or 0)
target = os.environ.get("NIGHTLAB_TARGET_METRIC")
run_dir = os.environ.get("NIGHTLAB_RUN_DIR", "run")
os.makedirs(run_dir, exist_ok=True)
rate = 0.05 * min(LR, 0.04) / 0.01 * math.exp(rng.gauss(0, 0.03))
floor = 1.0 + 0.5 / DEPTH


def loss_at(t):
    return floor + 2.0 * math.exp(-rate * t)


t, tokens, next_eval = 0.0, 0, interval
while t < budget - 1e-9:
    t += 0.1
    tokens += 1000
    if interval and t >= next_eval - 1e-9:
        next_eval += interval
        value = loss_at(t) + rng.gauss(0, 0.001)
        with open(os.path.join(run_dir, "curve.jsonl"), "a") as f:
            f.write(json.dumps({"training_seconds": t, "tokens": tokens, "val_loss": value}) + "\\n")
        if target is not None and value <= float(target):
            break
final = loss_at(t) + rng.gauss(0, 0.001)
with open(os.path.join(run_dir, "metrics.json"), "w") as f:
    json.dump({"val_loss": final, "holdout_loss": final + rng.gauss(0, 0.001)}, f)
print("---")
print(f"val_loss:          {final:.6f}")
print(f"training_seconds:  {t:.1f}")
"""

CURVE_TOML = """\
[target]
editable = ["train.py"]
run = "python train.py"
[budget]
seconds = 100
timeout = 300
[metric]
name = "val_loss"
direction = "minimize"
source = "json"
holdout = "holdout_loss"
[agent]
kind = "replay"
file = "proposals.jsonl"
[policy]
kind = "greedy"
baseline_runs = 2
[scales.deep]
constants = { DEPTH = 4 }
"""


def synthetic_workspace(root: Path, proposals: list[dict], policy: str = "confirm") -> Path:
    return make_workspace(
        root, proposals=proposals, train=FIXTURE.read_text(), toml=SYNTHETIC_TOML.format(policy=policy)
    )


def research(root: Path, tag: str = "t") -> None:
    res = nightlab("run", str(root), "--plain", "--tag", tag)
    assert res.returncode == 0, res.stderr + res.stdout


def validate_json(root: Path, *args: str) -> dict:
    res = nightlab("validate", str(root), "--json", *args)
    assert res.returncode == 0, res.stderr + res.stdout
    return json.loads(res.stdout)


def experiments(root: Path) -> list[dict]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("select * from experiments order by id")]
    con.close()
    return rows


def noise_edit(seed: int, n: int) -> dict:
    """A kept change that only moves the noise: another SEED and an unused constant."""
    line = "SEED = 1234  # added to NIGHTLAB_SEED; changes nothing but the noise"
    return edit(line, f"SEED = {seed}  # reseeded\nUNUSED_{n} = {n}", f"reseed {seed}")


@pytest.mark.slow
def test_real_improvement_transfers_and_branch_does_not_move(tmp_path: Path) -> None:
    root = synthetic_workspace(
        tmp_path / "ws", [edit("WEIGHT_DECAY = 0.1", "WEIGHT_DECAY = 0.02", "weight decay 0.1 -> 0.02")]
    )
    research(root)
    branch_before = git(root, "rev-parse", "nightlab/t")
    head_before = git(root, "rev-parse", "HEAD")
    data = validate_json(root, "--scale", "big", "--seeds", "3")

    assert data["verdict"] == "transfers"
    val, holdout = data["metrics"]
    assert (val["name"], holdout["name"]) == ("val_loss", "holdout_loss")
    assert holdout["verdict"] == "transfers"
    assert len(val["values_a"]) == len(val["values_b"]) == 3
    # The synthetic optimum is known: weight decay 0.02 gains 0.05 * log10(5)^2 = 0.0244.
    assert val["ci_low"] < -0.0244 < val["ci_high"] < 0
    assert val["p_value"] < 0.01
    # The scale's constants were written into both sides' commits; the research branch stayed.
    for side in ("a", "b"):
        text = git(root, "show", f"{data[side]['run_commit']}:train.py")
        assert "DEPTH = 5" in text and "BATCH_SIZE = 128" in text
    assert "WEIGHT_DECAY = 0.02" in git(root, "show", f"{data['b']['run_commit']}:train.py")
    assert git(root, "rev-parse", "nightlab/t") == branch_before
    assert git(root, "rev-parse", "HEAD") == head_before
    refs = git(root, "for-each-ref", "--format=%(refname)", "refs/nightlab/validate/").split()
    assert len(refs) == 2
    # Recorded in the ledger as validate experiments, outside the research history.
    rows = [r for r in experiments(root) if r["kind"] == "validate"]
    assert [json.loads(r["meta_json"])["side"] for r in rows] == ["A", "B"]
    assert all(r["tag"] is None and r["status"] == "ok" and r["n_runs"] == 3 for r in rows)
    assert rows[1]["reason"].startswith("transfers")
    status = json.loads(nightlab("status", str(root), "--json").stdout)
    assert [e["kind"] for e in status["experiments"]] == ["baseline", "candidate"]
    # Interleaved A B A B with the same seeds on both sides.
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    runs = con.execute(
        "select r.experiment_id, r.seed from runs r join experiments e on e.id = r.experiment_id "
        "where e.kind = 'validate' order by r.id"
    ).fetchall()
    con.close()
    assert [eid for eid, _ in runs] == [rows[0]["id"], rows[1]["id"]] * 3
    assert [s for _, s in runs[0::2]] == [s for _, s in runs[1::2]] == data["seeds"]
    assert Path(data["plot"]).stat().st_size > 1000


@pytest.mark.slow
def test_noise_only_change_does_not_validate(tmp_path: Path) -> None:
    # Greedy keeps whatever single run looks best: lucky reseeds get kept.
    root = synthetic_workspace(
        tmp_path / "ws", [noise_edit(s, i) for i, s in enumerate((7, 99, 5, 31))], "greedy"
    )
    research(root)
    kept = [r for r in experiments(root) if r["decision"] == "keep"]
    assert kept, "precondition: greedy should keep at least one lucky reseed"
    data = validate_json(root, "--seeds", "3")
    # The lucky gain is in the runs that selected it; the value recorded rests on fresh runs no
    # decision saw ([policy] remeasure), so research reports no gain it cannot back.
    assert all("no decision saw" in r["reason"] for r in kept)
    assert data["verdict"] in ("inconclusive", "does not transfer")
    val = data["metrics"][0]
    assert val["ci_low"] < 0 < val["ci_high"] or val["verdict"] == "does not transfer"
    if val["verdict"] == "inconclusive":
        assert val["more_runs"] is None or val["more_runs"] >= 1
    # The table names the verdict too.
    res = nightlab("validate", str(root), "--seeds", "2")
    assert res.returncode == 0, res.stderr
    assert "verdict" in res.stdout and ("inconclusive" in res.stdout or "does not transfer" in res.stdout)


@pytest.mark.slow
def test_time_to_target_on_curve_toy(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws", proposals=[edit("LR = 0.01", "LR = 0.03", "LR 0.01 -> 0.03")], train=CURVE_TRAIN,
        toml=CURVE_TOML,
    )  # fmt: skip
    research(root)
    data = validate_json(root, "--scale", "deep", "--time-to-target", "--eval-interval", "2")
    assert data["verdict"] == "transfers"
    ttt = data["time_to_target"]
    assert ttt["target"] == pytest.approx(data["metrics"][0]["mean_a"])
    assert ttt["target_source"].startswith("mean of side A")
    # LR 0.03 learns three times as fast: about a third of the time (and tokens) to the target.
    assert -0.8 < ttt["time"]["change"] < -0.55
    assert ttt["tokens"]["change"] == pytest.approx(ttt["time"]["change"], abs=0.02)
    assert ttt["time"]["ci_high"] < 0
    assert "→" in ttt["time"]["text"] and ttt["time"]["text"].endswith("%")
    assert all(r["reached"] for r in ttt["a"] + ttt["b"])
    # Side B stopped at the target: its frozen final value is near it, its runs much shorter.
    assert all(abs(r["final_metric"] - ttt["target"]) < 0.02 for r in ttt["b"])
    assert max(r["seconds"] for r in ttt["b"]) < min(r["seconds"] for r in ttt["a"])
    # Terminal output in the style.
    res = nightlab(
        "validate",
        str(root),
        "--scale",
        "deep",
        "--time-to-target",
        "--target",
        str(ttt["target"]),
        "--seeds",
        "2",
    )
    assert res.returncode == 0, res.stderr
    assert "time to val_loss" in res.stdout and " s → " in res.stdout and "−" in res.stdout
    rows = [r for r in experiments(root) if r["kind"] == "validate"]
    modes = [json.loads(r["meta_json"])["mode"] for r in rows]
    assert modes == [
        "budget",
        "budget",
        "time_to_target",
        "time_to_target",
        "time_to_target",
        "time_to_target",
    ]
    # `nightlab report` redraws the learning curves of the latest study.
    (root / ".nightlab" / "validation.png").unlink()
    rep = nightlab("report", str(root))
    assert rep.returncode == 0, rep.stderr
    assert (root / ".nightlab" / "validation.png").stat().st_size > 1000


@pytest.mark.slow
def test_user_errors_are_one_line(tmp_path: Path) -> None:
    root = synthetic_workspace(tmp_path / "ws", [edit("DROPOUT = 0.2", "DROPOUT = 0.9", "much more dropout")])
    res = nightlab("validate", str(root))
    assert res.returncode == 2 and "pass --a REV and --b REV" in res.stderr
    research(root)  # the only proposal is worse: nothing kept
    res = nightlab("validate", str(root))
    assert res.returncode == 2 and "same commit" in res.stderr
    res = nightlab("validate", str(root), "--scale", "huge", "--a", "main", "--b", "main")
    assert res.returncode == 2 and "no [scales.huge]" in res.stderr and "big" in res.stderr
    git(root, "commit", "-q", "--allow-empty", "-m", "empty")
    res = nightlab("validate", str(root), "--scale", "typo", "--a", "main~1", "--b", "main")
    assert res.returncode == 2 and "[scales.typo]" in res.stderr and "DEPHT" in res.stderr
    # The synthetic target does not write curves: time to target says so instead of guessing.
    res = nightlab("validate", str(root), "--a", "main~1", "--b", "main", "--time-to-target", "--target", "1.1",
                   "--seeds", "2")  # fmt: skip
    assert res.returncode == 2 and "left no val_loss progress points" in " ".join(res.stderr.split())
    assert "Traceback" not in res.stderr
    # It stops at the first finished run without points (one run, not 2 seeds x 2 sides), and
    # the study's experiments say why they ended.
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    ended = con.execute(
        "select e.reason, count(r.id) from experiments e left join runs r on r.experiment_id = e.id "
        "where e.meta_json like '%time_to_target%' group by e.id"
    ).fetchall()
    con.close()
    assert len(ended) == 2 and sum(n for _, n in ended) == 1, ended
    assert all("left no val_loss progress points" in reason for reason, _ in ended), ended
    # Without --target the fixed-budget comparison runs first: its verdict is shown, not lost.
    res = nightlab("validate", str(root), "--a", "main~1", "--b", "main", "--time-to-target", "--seeds", "2")
    out = " ".join(res.stdout.split())
    assert res.returncode == 2 and "val_loss" in out and "CI" in out, res.stdout + res.stderr
    assert (
        "time to target: the runs left no val_loss progress points" in out and "Traceback" not in res.stderr
    )


# ---- the pieces, without the CLI (fast) ------------------------------------------------------


def test_compare_verdicts_follow_the_metric_direction() -> None:
    from nightlab.studies.compare import compare

    worse, better = [1.00, 1.01, 1.005], [0.95, 0.955, 0.96]
    assert compare("loss", worse, better, "minimize").verdict == "transfers"
    assert compare("loss", better, worse, "minimize").verdict == "does not transfer"
    assert compare("acc", worse, better, "maximize").verdict == "does not transfer"
    c = compare("acc", better, worse, "maximize")
    assert c.verdict == "transfers" and c.improvement == pytest.approx(0.05)
    low, high = c.improvement_interval()
    assert 0 < low < 0.05 < high
    # Identical sides: nothing to gain from more runs; a margin turns it into "does not transfer".
    same = compare("loss", [1.0, 1.0], [1.0, 1.0], "minimize")
    assert same.verdict == "inconclusive" and same.more_runs is None
    assert compare("loss", [1.0, 1.0], [1.0, 1.0], "minimize", margin=0.001).verdict == "does not transfer"
    noisy = compare("loss", [1.0, 1.01, 1.005], [1.002, 1.011, 1.009], "minimize")
    assert noisy.verdict == "inconclusive" and noisy.more_runs >= 1 and "more run" in noisy.note
    assert compare("loss", [], [1.0, 1.0], "minimize").verdict == "failed"
    assert compare("loss", [1.0], [0.9, 0.91], "minimize").verdict == "inconclusive"


def test_crossing_interpolates_and_marks_runs_that_never_reach() -> None:
    from nightlab.studies.time_to_target import CurvePoint, crossing, speedup

    points = [CurvePoint(10, 100, 2.0), CurvePoint(20, 200, 1.5), CurvePoint(30, 300, 1.0)]
    hit = crossing(points, 1.25, "minimize")
    assert hit.reached and hit.seconds == pytest.approx(25) and hit.tokens == pytest.approx(250)
    assert crossing(points, 2.5, "minimize").seconds == 10  # already there at the first evaluation
    miss = crossing(points, 0.5, "minimize")
    assert not miss.reached and miss.seconds == 30
    assert crossing([], 1.0, "minimize") is None
    rising = [CurvePoint(1, None, 0.2), CurvePoint(3, None, 0.6)]
    assert crossing(rising, 0.4, "maximize").seconds == pytest.approx(2)
    a = [crossing(points, 1.25, "minimize")] * 2
    sp = speedup(a, [type(hit)(s, None, True) for s in (20.0, 21.0)], "time")
    assert sp.text == "25.0 s → 20.5 s, −18%" and not sp.censored
    hours = speedup([type(hit)(7272.0, None, True)] * 2, [type(hit)(6480.0, None, True)] * 2, "time")
    assert hours.text == "2.02 h → 1.80 h, −11%"


def test_the_confidence_interval_of_a_speedup_never_passes_minus_100_percent() -> None:
    """Two seeds a side, B much faster and noisy: the CI of the difference over A's mean read
    "95% CI −256% … +125%", a time below zero. The ratio's CI (log scale) stays above −100%."""
    from nightlab.studies.time_to_target import Crossing, speedup

    sp = speedup([Crossing(100.0, None, True), Crossing(101.0, None, True)],
                 [Crossing(20.0, None, True), Crossing(50.0, None, True)], "time")  # fmt: skip
    assert sp is not None and sp.ci_low is not None and sp.ci_high is not None
    assert -1 < sp.ci_low < sp.change < sp.ci_high, sp
    steady = speedup([Crossing(s, None, True) for s in (100.0, 101.0, 99.0)],
                     [Crossing(s, None, True) for s in (50.0, 51.0, 49.5)], "time")  # fmt: skip
    assert steady is not None and -0.53 < steady.ci_low < steady.change < steady.ci_high < -0.47
    assert steady.p_value is not None and steady.p_value < 0.001


def test_learning_curve_axis_follows_the_budget_unit(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from nightlab.report.validation import curve_axis, run_end
    from nightlab.studies.time_to_target import read_curve

    (tmp_path / "curve.jsonl").write_text(
        '{"training_seconds": 1.5, "tokens": 4096, "step": 1, "val_bpb": 2.0}\n'
        '{"training_seconds": 3.0, "tokens": 8192, "step": 2, "val_bpb": 1.5}\n'
        '{"training_seconds": 4.5, "val_bpb": 1.2}\n'  # an older line without tokens or step
    )
    points = read_curve(tmp_path, "val_bpb")
    assert [(p.tokens, p.step) for p in points] == [(4096, 1), (8192, 2), (None, None)]

    def study(**meta: object) -> list:
        return [SimpleNamespace(meta=meta)]

    assert curve_axis(study(budget_unit="seconds")) == "seconds"
    assert curve_axis(study(budget_unit="steps")) == "steps"
    assert curve_axis(study(budget_unit="tokens") + study(budget_unit="steps")) == "tokens"
    assert curve_axis(study()) == "seconds"  # studies recorded before the unit was stored
    # A steps budget puts budget runs' finals at the budget, time-to-target finals where they stopped.
    meta = {"budget_unit": "steps", "budget_steps": 40, "budget_tokens": None}
    assert run_end("steps", "budget", points, meta, 12.0) == 40
    assert run_end("steps", "time_to_target", points[:2], meta, 12.0) == 2
    assert run_end("tokens", "budget", points, {"budget_tokens": 9000}, 12.0) == 9000
    assert run_end("seconds", "budget", points, meta, 12.0) == 12.0
    assert run_end("steps", "time_to_target", [], meta, 12.0) is None


def test_scale_constants_must_exist(tmp_path: Path) -> None:
    from nightlab.errors import UserError
    from nightlab.studies.scales import scaled_files

    files = {"train.py": "DEPTH = 4  # layers\nLR = 0.1\n", "notes.md": "DEPTH = 4"}
    assert scaled_files(files, {"DEPTH": 12}, "big") == {"train.py": "DEPTH = 12  # layers\nLR = 0.1\n"}
    with pytest.raises(UserError, match=r"\[scales.big\] constants: WIDTH is not a knob .*DEPTH, LR"):
        scaled_files(files, {"WIDTH": 2}, "big")


CONFIG_YAML = "model:\n  n_layer: 2   # layers\n  width: 64\noptim:\n  lr: 0.01\n"
YAML_SCRIPT = """\
import os, random, yaml
cfg = yaml.safe_load(open("config.yaml"))
noise = random.Random(int(os.environ["NIGHTLAB_SEED"])).gauss(0, 0.01)
print("val loss", abs(cfg["optim"]["lr"] - 0.03) * 10 + 2.0 / cfg["model"]["n_layer"] + noise)
"""


def test_a_scale_sets_knobs_of_config_files_by_their_names_as_show_space_gives_them() -> None:
    """Sizes kept in config.yaml (not UPPER_CASE constants of a .py file) were refused as "not
    a constant of the editable files"; TOML reads ``model.n_layer = 4`` as a nested table."""
    from nightlab.errors import UserError
    from nightlab.studies.scales import scaled_files

    files = {"config.yaml": CONFIG_YAML, "train.py": "LR = 0.1\n"}
    want = {"config.yaml": CONFIG_YAML.replace("n_layer: 2", "n_layer: 8")}
    assert scaled_files(files, {"model": {"n_layer": 8}}, "big") == want  # { model.n_layer = 8 }
    assert scaled_files(files, {"n_layer": 8}, "big") == want  # the one knob it can mean
    assert scaled_files(files, {"model.n_layer": 2}, "big") == {}  # already so: no commit
    with pytest.raises(UserError, match=r"\[scales.big\] constants: model.n_layer is an int knob"):
        scaled_files(files, {"n_layer": "deep"}, "big")
    with pytest.raises(UserError, match=r"run command sets model.n_layer \(model.n_layer=4\)"):
        scaled_files(files, {"n_layer": 8}, "big", "python train.py model.n_layer=4")
    hydra = {
        "conf/config.yaml": "defaults:\n  - model: small\n  - _self_\nlr: 0.1\n",
        "conf/model/small.yaml": "n_layer: 2\n",
        "conf/model/large.yaml": "n_layer: 12\n",
        "train.py": "import hydra\n@hydra.main(config_path='conf', config_name='config')\ndef main(cfg):\n    pass\n",
    }
    assert scaled_files(hydra, {"model": "large", "n_layer": 24}, "big", "python train.py") == {
        "conf/config.yaml": hydra["conf/config.yaml"].replace("model: small", "model: large"),
        "conf/model/large.yaml": "n_layer: 24\n",  # the option file the switched run loads
    }
    two = {"a.yaml": "model:\n  lr: 1.0\n", "b.yaml": "optim:\n  lr: 2.0\n"}
    with pytest.raises(UserError, match=r"lr could be model.lr or optim.lr; write the whole name"):
        scaled_files(two, {"lr": 0.5}, "big")


def test_validate_at_a_scale_of_a_scripts_yaml_config(tmp_path: Path) -> None:
    from helpers import script_workspace

    root = script_workspace(
        tmp_path / "ws",
        {"train.py": YAML_SCRIPT, "config.yaml": CONFIG_YAML},
        ["config.yaml"],
        ["train.py"],
        "python train.py",
        extra="[scales.big]\nconstants = { model.n_layer = 4 }\n",
    )
    (root / "config.yaml").write_text(CONFIG_YAML.replace("lr: 0.01", "lr: 0.03"))
    git(root, "commit", "-qam", "lr 0.03")
    out = validate_json(root, "--scale", "big", "--a", "HEAD~1", "--b", "HEAD", "--seeds", "2")
    # At 4 layers: A = 0.2 + 0.5, B = 0.5 (plus noise); at the research's 2 layers A would be 1.2.
    means = {side: out["metrics"][0][f"mean_{side}"] for side in ("a", "b")}
    assert means["a"] == pytest.approx(0.7, abs=0.05) and means["b"] == pytest.approx(0.5, abs=0.05), out


@pytest.mark.parametrize(
    "budget",
    [{"seconds": 10.0}, {"tokens": 1000}, {"steps": 30}, {"flops": 2.0e12}, {"tokens": 1000, "steps": 30}],
    ids=["seconds", "tokens", "steps", "flops", "tokens+steps"],
)
def test_a_time_to_target_run_gets_every_kind_of_budget_times_the_cap(budget: dict) -> None:
    """Each kind the scale sets is scaled, none dropped: a FLOPs budget once was, and the
    time-to-target runs silently trained for the default 60 seconds instead."""
    from nightlab.config import BudgetConfig
    from nightlab.studies.time_to_target import capped_budget

    capped = capped_budget(BudgetConfig(**budget, timeout=100), 2.0)
    kinds = ("seconds", "tokens", "steps", "flops")
    assert {k: getattr(capped, k) for k in kinds if getattr(capped, k) is not None} == {
        k: v * 2 for k, v in budget.items()
    }
    assert capped.timeout == 400


LOG_CURVE_SCRIPT = """\
import os
LR = 0.01
# A simulated clock: the loss falls faster with LR 0.03; printed every 0.1 s of "training".
t, loss, seed = 0.0, 3.0, int(os.environ["NIGHTLAB_SEED"])
while t < 2.0:
    t += 0.1
    loss = 1.0 + 2.0 * (1.0 - LR * 10) ** (t * 10) + seed % 7 * 1e-4
    print(f"t {t:.2f} val loss {loss:.4f}")
print(f"val loss {loss:.4f}")
"""


def test_time_to_target_of_a_script_that_only_prints_its_metric(tmp_path: Path) -> None:
    """A script that knows nothing of the protocol but prints `t SECONDS val loss X` lines: its
    log's points, read by [metric] progress_pattern, are the curve (they were ignored: "the runs
    left no val_loss progress points")."""
    from helpers import script_workspace

    root = script_workspace(
        tmp_path / "ws", {"train.py": LOG_CURVE_SCRIPT}, ["train.py"], [], "python train.py",
        extra="",
    )  # fmt: skip
    toml = (
        (root / "nightlab.toml")
        .read_text()
        .replace(
            "pattern = 'val loss ([0-9.]+)'",
            "pattern = '^val loss ([0-9.]+)'\nprogress_pattern = 't (?P<seconds>[0-9.]+) val loss ([0-9.]+)'",
        )
    )
    (root / "nightlab.toml").write_text(toml)
    git(root, "commit", "-qam", "progress pattern")
    (root / "train.py").write_text(LOG_CURVE_SCRIPT.replace("LR = 0.01", "LR = 0.03"))
    git(root, "commit", "-qam", "LR 0.03")
    args = ("--a", "HEAD~1", "--b", "HEAD", "--seeds", "2", "--target", "1.5", "--eval-interval", "0.5")
    ttt = validate_json(root, "--time-to-target", *args)["time_to_target"]
    assert all(r["reached"] for r in ttt["a"] + ttt["b"]), ttt
    # 1 + 2 * 0.9^(10 t) = 1.5 at t = 1.32 s; 1 + 2 * 0.7^(10 t) = 1.5 at t = 0.39 s
    assert [round(r["seconds"], 1) for r in ttt["a"]] == [1.3, 1.3]
    assert [round(r["seconds"], 1) for r in ttt["b"]] == [0.4, 0.4]
    assert ttt["time"]["change"] == pytest.approx(0.39 / 1.32 - 1, abs=0.05)


@pytest.mark.parametrize("command", ["validate", "ablate"])
def test_an_absurd_seed_count_is_one_line_before_anything_runs(tmp_path: Path, command: str) -> None:
    """``--seeds 100000000000000000000`` printed the header and hung building its list of seeds;
    ``--seeds 2000000`` started a study of weeks. Both are refused at parse time, exit 2."""
    for seeds in ("100000000000000000000", "2000000"):
        res = nightlab(command, str(tmp_path), "--seeds", seeds, timeout=30)
        assert res.returncode == 2, res.stdout + res.stderr
        assert res.stderr.startswith(f"error: Invalid value for '--seeds': {seeds}: give 2 to 1000"), (
            res.stderr
        )
        assert "Traceback" not in res.stderr and "nightlab validate:" not in res.stderr


def test_the_library_refuses_a_seed_count_past_the_limit() -> None:
    from nightlab.errors import UserError
    from nightlab.studies.study import MAX_SEEDS, check_seed_count

    check_seed_count(MAX_SEEDS, "why")
    with pytest.raises(UserError, match="more than 1000"):
        check_seed_count(2_000_000, "why")
    with pytest.raises(UserError, match="at least 2: why"):
        check_seed_count(1, "why")


def test_validate_sides_may_be_experiment_ids_as_status_shows_them(tmp_path: Path) -> None:
    """`validate --a 2 --b 3` said "'2' is not a commit": the ids `nightlab status` lists are
    what a user has at hand. `#N` or `N` (when no revision has that name) is experiment N."""
    from nightlab.errors import UserError
    from nightlab.research.session import open_session
    from nightlab.studies.validate import _resolve

    root = make_workspace(tmp_path / "ws")
    head = git(root, "rev-parse", "HEAD").strip()
    session = open_session(root)
    kept = session.ledger.add_experiment(kind="baseline", tag="t", commit=head, description="baseline")
    refused = session.ledger.add_experiment(
        kind="candidate", tag="t", description="refused", status="invalid"
    )
    assert _resolve(session, f"#{kept}") == head == _resolve(session, str(kept)) == _resolve(session, "HEAD")
    with pytest.raises(
        UserError, match=r"'#99' is neither a revision nor an experiment .*ids with a commit: 1 to 1"
    ):
        _resolve(session, "#99")
    with pytest.raises(UserError, match=rf"experiment #{refused} has no commit \(invalid: refused\)"):
        _resolve(session, str(refused))


def test_a_cap_past_the_limit_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """`--cap 1e308` was taken: an infinite hard timeout (and int(inf) for a tokens budget)."""
    res = nightlab("validate", str(tmp_path), "--time-to-target", "--cap", "1e308", timeout=30)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith(
        "error: Invalid value for '--cap': 1e+308: give a multiple of the budget above 1, at most 100"
    )


def test_an_eval_interval_past_what_a_run_trains_is_refused(tmp_path: Path) -> None:
    """`--eval-interval 1e9` ran the study and then said the target writes no curve."""
    from nightlab.errors import UserError
    from nightlab.research.session import open_session
    from nightlab.studies.validate import ValidateOptions, run_validation

    session = open_session(make_workspace(tmp_path / "ws"))  # a 5 s budget
    options = ValidateOptions(a="HEAD", b="HEAD", time_to_target=True, eval_interval=1e9)
    with pytest.raises(UserError, match=r"--eval-interval 1e\+09 s is not below the 10 s of training"):
        run_validation(session, options)
    assert not session.ledger.experiments()  # nothing ran
