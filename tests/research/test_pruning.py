"""Early stopping: progress read while a run trains, and a hopeless candidate stopped with evidence.

The unit tests pin the rule (worse than the incumbent's curve by more than the noise allows,
judged once per checkpoint); the end-to-end tests run the real CLI on a toy target that writes
its curve as it trains, so the pruned run is a real subprocess killed for real.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from helpers import TOY_TOML, edit, git, make_workspace, nightlab
from nightlab.config import load_config
from nightlab.research.progress import Point, ProgressReader, value_at
from nightlab.research.prune_rules import HalvingPruner, MedianPruner
from nightlab.research.pruning import IncumbentCurvePruner, PruneSetup, pruner_for
from nightlab.stats import NoiseEstimate
from nightlab.store.ledger import Ledger
from nightlab.types import Direction, RunResult, RunStatus

# A toy target that trains for 20 steps of 0.1 s and writes a progress line (with its own
# metric) at every NIGHTLAB_PROGRESS_EVERY share of the budget; its curve falls towards the
# final value, which depends on LR as in the plain toy target.
CURVE_TRAIN = """\
import json, os, random, sys, time
LR = 0.1  # learning rate: best at 0.3
NOISE = 0.002

seed = int(os.environ.get("NIGHTLAB_SEED", "0"))
rng = random.Random(seed)
final = 1.0 + 10 * (LR - 0.3) ** 2 + rng.gauss(0, NOISE)
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
every = float(os.environ.get("NIGHTLAB_PROGRESS_EVERY") or 0)
STEPS = 20
next_point = every
with open(os.path.join(run_dir, "progress.jsonl"), "a") as progress:
    for step in range(1, STEPS + 1):
        time.sleep(0.1)
        fraction = step / STEPS
        value = final + 0.5 * (1 - fraction) + rng.gauss(0, NOISE)
        print(f"step {step}: val loss {value:.5f}", flush=True)
        if every and fraction >= next_point - 1e-9:
            line = {"step": step, "fraction": fraction, "seconds": round(0.1 * step, 3), "val_loss": value}
            progress.write(json.dumps(line) + "\\n")
            progress.flush()
            next_point += every
print("---")
print(f"val_loss: {final:.6f}")
with open(os.path.join(run_dir, "metrics.json"), "w") as f:
    json.dump({"val_loss": final}, f)
"""


def _config(tmp_path: Path, extra: str = "") -> Path:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy") + extra
    (tmp_path / "nightlab.toml").write_text(toml)
    return tmp_path


# -- reading progress ---------------------------------------------------------------------------
def test_reader_reads_appended_lines_and_waits_for_a_partial_one(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    reader = ProgressReader(run_dir, config)
    assert reader.points() == []
    with (run_dir / "progress.jsonl").open("w") as fh:
        fh.write(json.dumps({"step": 5, "fraction": 0.25, "val_loss": 2.0}) + "\n")
        fh.write('{"step": 10, "fraction": 0.5, "val_lo')  # half-written by a process still running
    assert [(p.x, p.value) for p in reader.points()] == [(0.25, 2.0)]
    with (run_dir / "progress.jsonl").open("a") as fh:
        fh.write('ss": 1.5}\nnot json\n[1, 2]\n{"step": 12}\n')
    assert [(p.x, p.value) for p in reader.points()] == [(0.25, 2.0), (0.5, 1.5)]


def test_frozen_evaluator_points_win_over_the_runs_own(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "progress.jsonl").write_text(
        json.dumps({"step": 5, "fraction": 0.25, "val_loss": 0.1, "export": "progress/0001"}) + "\n"
    )
    (run_dir / "progress.eval.jsonl").write_text(
        json.dumps({"step": 5, "fraction": 0.25, "tokens": 4096, "val_loss": 2.5}) + "\n"
    )
    (point,) = ProgressReader(run_dir, config).points()
    assert (point.x, point.value, point.step, point.tokens) == (0.25, 2.5, 5, 4096)


def test_progress_pattern_reads_points_from_the_log(tmp_path: Path) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    toml = toml.replace("seconds = 5", "steps = 200").replace(
        'name = "val_loss"',
        "name = \"val_loss\"\nprogress_pattern = 'step (?P<step>\\d+): .*val loss ([0-9.]+)'",
    )
    (tmp_path / "nightlab.toml").write_text(toml)
    config = load_config(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.log").write_text(
        "iter 40: loss 3.1\nstep 50: train loss 3.02, val loss 3.10\nstep 100: train loss 2.50, val loss 2.61\n"
    )
    points = ProgressReader(run_dir, config).points()
    assert [(p.x, p.value, p.step) for p in points] == [(0.25, 3.10, 50), (0.5, 2.61, 100)]


def test_progress_pattern_needs_a_group_around_the_metric(tmp_path: Path) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy").replace(
        'name = "val_loss"', "name = \"val_loss\"\nprogress_pattern = 'step (?P<step>\\d+)'"
    )
    (tmp_path / "nightlab.toml").write_text(toml)
    res = nightlab("status", str(tmp_path))
    assert res.returncode == 2
    assert "progress_pattern needs a capture group around the metric" in res.stderr
    assert "Traceback" not in res.stderr


def test_value_at_interpolates_and_tolerates_a_late_checkpoint() -> None:
    points = [Point(0.1, 3.0), Point(0.3, 2.0), Point(0.52, 1.5)]
    assert value_at(points, 0.2) == pytest.approx(2.5)
    assert value_at(points, 0.55) == 1.5  # the checkpoint landed a step after 55%: near enough
    assert value_at(points, 0.9) is None
    assert value_at([], 0.5) is None


# -- the rule -------------------------------------------------------------------------------------
def _curves(final: float, jitter: list[float]) -> list[list[Point]]:
    return [[Point(x, final + 0.5 * (1 - x) + j) for x in (0.25, 0.5, 0.75, 1.0)] for j in jitter]


# Five completed runs around the incumbent's two: the median at each point is 0.2 above it.
OTHERS = _curves(1.0, [0.0, 0.01, 0.2, 0.3, 0.4])


def test_pruner_stops_a_hopeless_curve_with_its_evidence() -> None:
    floor = NoiseEstimate(sd=0.01, df=4, groups=2)
    pruner = IncumbentCurvePruner(
        PruneSetup(
            _curves(1.0, [0.0, 0.01]), Direction.MINIMIZE, [0.25, 0.5], 0.99, floor, "val_loss", OTHERS
        )
    )
    assert pruner.should_stop([Point(0.1, 5.0)]) is None  # no checkpoint reached yet
    reason = pruner.should_stop([Point(0.1, 5.0), Point(0.25, 3.0)])
    assert reason is not None and reason.startswith("at 25% of the budget val_loss was 3")
    evidence = pruner.evidence
    assert evidence is not None
    assert evidence["at"] == 0.25 and evidence["value"] == 3.0
    assert evidence["incumbent"] == pytest.approx(1.38)
    assert evidence["gap"] == pytest.approx(3.0 - 1.38)
    assert 0 < evidence["margin"] < evidence["gap"]
    assert evidence["median"] == pytest.approx(1.575) and evidence["experiments"] == 5
    assert reason.endswith("and worse than the median 1.575 of the 5 finished experiments there")


def test_curves_that_cross_are_not_stopped_behind_the_incumbent_alone() -> None:
    floor = NoiseEstimate(sd=0.01, df=4, groups=2)
    setup = PruneSetup(_curves(1.0, [0.0, 0.01]), Direction.MINIMIZE, [0.25], 0.99, floor, "v", OTHERS)
    # Behind the incumbent (1.38) by far more than the noise, but ahead of most completed runs
    # (median 1.575): a wider model starting slowly looks like this, and may end ahead.
    assert IncumbentCurvePruner(setup).should_stop([Point(0.25, 1.5)]) is None
    assert IncumbentCurvePruner(setup).should_stop([Point(0.25, 1.6)]) is not None
    # Until `startup` runs have completed, nothing says where runs stand: nothing is stopped.
    assert IncumbentCurvePruner(setup, startup=6).should_stop([Point(0.25, 9.0)]) is None


def test_pruner_lets_a_curve_within_the_noise_go_on_and_judges_each_checkpoint_once() -> None:
    floor = NoiseEstimate(sd=0.01, df=4, groups=2)
    pruner = IncumbentCurvePruner(
        PruneSetup(_curves(1.0, [0.0, 0.01]), Direction.MINIMIZE, [0.25], 0.99, floor)
    )
    _, margin = pruner.margin(0.25) or (0, 0)
    slightly_worse = 1.38 + margin * 0.9
    assert pruner.should_stop([Point(0.25, slightly_worse)]) is None
    # The checkpoint was judged; a later, worse reading at that share changes nothing.
    assert pruner.should_stop([Point(0.25, slightly_worse), Point(0.3, 9.0)]) is None
    assert pruner.evidence is None


def test_pruner_respects_direction_and_needs_measured_noise() -> None:
    floor = NoiseEstimate(sd=0.01, df=4, groups=2)
    up = IncumbentCurvePruner(PruneSetup(_curves(1.0, [0.0, 0.01]), Direction.MAXIMIZE, [0.5], 0.99, floor))
    assert up.should_stop([Point(0.5, 5.0)]) is None  # higher is better: far ahead, not hopeless
    up_low = IncumbentCurvePruner(
        PruneSetup(_curves(1.0, [0.0, 0.01]), Direction.MAXIMIZE, [0.5], 0.99, floor, others=OTHERS)
    )
    assert up_low.should_stop([Point(0.5, 0.1)]) is not None
    # One incumbent curve and no noise floor: nothing says how far is too far.
    blind = IncumbentCurvePruner(PruneSetup(_curves(1.0, [0.0]), Direction.MINIMIZE, [0.5], 0.99, None))
    assert blind.should_stop([Point(0.5, 50.0)]) is None


def test_margin_uses_the_spread_of_early_points_when_wider_than_the_floor() -> None:
    floor = NoiseEstimate(sd=0.001, df=4, groups=2)
    pruner = IncumbentCurvePruner(
        PruneSetup(_curves(1.0, [0.0, 0.2, 0.4]), Direction.MINIMIZE, [0.5], 0.99, floor)
    )
    _, margin = pruner.margin(0.5) or (0, 0)
    assert margin > 0.2 * 3  # the curves' own spread (sd 0.2) sets it, not the floor's 0.001


def test_median_rule_needs_startup_runs_then_stops_below_the_median() -> None:
    others = _curves(1.0, [0.0, 0.1, 0.2, 0.3, 0.4])  # values at 50%: 1.25 .. 1.65, median 1.45
    young = MedianPruner(PruneSetup([], Direction.MINIMIZE, [0.5], others=others[:4]), startup=5)
    assert young.should_stop([Point(0.5, 9.0)]) is None  # four completed runs: too few to judge
    rule = MedianPruner(PruneSetup([], Direction.MINIMIZE, [0.5], others=others), startup=5)
    assert rule.should_stop([Point(0.5, 1.44)]) is None
    rule = MedianPruner(
        PruneSetup([], Direction.MINIMIZE, [0.5], metric_name="loss", others=others), startup=5
    )
    reason = rule.should_stop([Point(0.5, 1.46)])
    assert (
        reason
        == "at 50% of the budget loss was 1.46, worse than the median 1.45 of the finished experiments there"
    )


def test_halving_rule_keeps_the_best_share_at_each_rung() -> None:
    others = _curves(1.0, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])  # 7 others + the run: the best 2 go on
    setup = PruneSetup([], Direction.MINIMIZE, [0.5], others=others)
    assert HalvingPruner(setup, reduction=4).should_stop([Point(0.5, 1.3)]) is None  # second best
    stopped = HalvingPruner(setup, reduction=4)
    assert stopped.should_stop([Point(0.5, 1.36)]) is not None  # third: 1.25 and 1.35 go on
    assert stopped.evidence is not None and stopped.evidence["kept"] == 2 and stopped.evidence["of"] == 8
    maximize = HalvingPruner(PruneSetup([], Direction.MAXIMIZE, [0.5], others=others), reduction=4)
    assert maximize.should_stop([Point(0.5, 1.8)]) is None  # the highest is the best when maximizing


def test_unknown_pruner_kind_is_a_one_line_usage_error(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=[])
    (root / "nightlab.toml").write_text((root / "nightlab.toml").read_text() + '\n[pruner]\nkind = "asha"\n')
    git(root, "commit", "-qam", "a pruner that does not exist")
    res = nightlab("run", str(root), "--plain", "--max-experiments", "0")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "[pruner] kind 'asha' is not one of halving, incumbent, median" in res.stderr
    assert "Traceback" not in res.stderr


def test_only_a_candidates_first_run_is_ever_watched(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    with Ledger(tmp_path / "ledger.db") as ledger:
        base = ledger.add_experiment(kind="baseline", tag="t", description="baseline")
        for replicate, jitter in enumerate((0.0, 0.01)):
            curve = [{"x": x, "value": 1.5 - x + jitter} for x in (0.25, 0.5, 0.75)]
            result = RunResult(status=RunStatus.OK, progress=curve)
            ledger.add_run(base, replicate, result, 1.0 + jitter, None, str(tmp_path))
        ledger.finish_experiment(base, status="ok", decision="baseline")
        cand = ledger.experiment(ledger.add_experiment(kind="candidate", tag="t", incumbent_id=base))
        baseline = ledger.experiment(base)
        assert isinstance(pruner_for(config, ledger, "t", cand, 0), IncumbentCurvePruner)
        assert pruner_for(config, ledger, "t", cand, 1) is None  # a confirmation run: never
        assert pruner_for(config, ledger, "t", baseline, 0) is None  # the baseline: never
        config.policy.prune = False
        assert pruner_for(config, ledger, "t", cand, 0) is None


# -- end to end -------------------------------------------------------------------------------------
def _ledger(root: Path) -> tuple[list[dict], list[dict]]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    exps = [dict(r) for r in con.execute("select * from experiments order by id")]
    runs = [dict(r) for r in con.execute("select * from runs order by experiment_id, replicate")]
    con.close()
    return exps, runs


def _judge_after_the_baseline(root: Path) -> None:
    """The toy night has only the baseline finished when its first candidate runs."""
    toml = (root / "nightlab.toml").read_text() + "\n[pruner.incumbent]\nstartup = 1\n"
    (root / "nightlab.toml").write_text(toml)
    git(root, "commit", "-qam", "prune from the first candidate on")


@pytest.mark.slow
def test_hopeless_candidate_is_pruned_recorded_and_never_the_incumbent(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws",
        train=CURVE_TRAIN,
        proposals=[
            edit("LR = 0.1", "LR = 1.5", "LR 0.1 -> 1.5"),  # hopeless: 14 worse from the start
            edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3"),  # a real gain: runs to the end
        ],
    )
    _judge_after_the_baseline(root)
    started = time.monotonic()
    res = nightlab("run", str(root), "--plain", "--tag", "p")
    assert res.returncode == 0, res.stderr + res.stdout
    assert time.monotonic() - started < 120
    exps, runs = _ledger(root)
    base, hopeless, good = exps
    # The baseline is never pruned: every replicate ran to the end, with its curve.
    base_runs = [r for r in runs if r["experiment_id"] == base["id"]]
    assert [r["status"] for r in base_runs] == ["ok", "ok"]
    assert all(len(json.loads(r["progress_json"])) == 4 for r in base_runs)  # 25%, 50%, 75%, 100%
    # The hopeless candidate: stopped at its first checkpoint, recorded with its evidence.
    assert (hopeless["status"], hopeless["decision"], hopeless["metric_mean"]) == ("pruned", "discard", None)
    assert hopeless["reason"].startswith("pruned: at 25% of the budget val_loss was")
    (pruned_run,) = [r for r in runs if r["experiment_id"] == hopeless["id"]]
    assert pruned_run["status"] == "pruned" and pruned_run["metric"] is None
    # Killed before its summary: it trained at least as long as its last progress line said.
    assert 0.5 <= pruned_run["training_seconds"] <= 1.0
    assert pruned_run["total_seconds"] < min(r["total_seconds"] for r in base_runs)
    evidence = json.loads(hopeless["meta_json"])["pruned"]
    assert evidence["at"] == 0.25 and evidence["gap"] > evidence["margin"] > 0
    assert evidence["estimate"] > base["metric_mean"]
    # Never the incumbent: the real gain is kept, and the branch holds it.
    assert good["decision"] == "keep"
    status = nightlab("status", str(root), "--tag", "p")
    assert "pruned" in status.stdout
    tsv = (root / ".nightlab" / "results.tsv").read_text()
    assert "\t0.000000\t0.0\tpruned\tLR 0.1 -> 1.5" in tsv


@pytest.mark.slow
def test_prune_off_runs_every_candidate_to_the_end(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws", train=CURVE_TRAIN, proposals=[edit("LR = 0.1", "LR = 1.5", "LR 0.1 -> 1.5")]
    )
    toml = (root / "nightlab.toml").read_text() + "prune = false\n"
    (root / "nightlab.toml").write_text(toml)
    git(root, "commit", "-qam", "no pruning")
    res = nightlab("run", str(root), "--plain", "--tag", "np")
    assert res.returncode == 0, res.stderr + res.stdout
    exps, runs = _ledger(root)
    assert exps[1]["status"] == "ok" and exps[1]["decision"] == "discard"
    # Without pruning nothing asks for checkpoints: the toy target writes no progress at all.
    assert all(json.loads(r["progress_json"]) == [] for r in runs)


# The training side of a target with a frozen progress evaluator: checkpoints carry no metric,
# only an export the evaluator scores (here a JSON file standing in for the model's weights).
EXPORT_TRAIN = CURVE_TRAIN.replace(
    'line = {"step": step, "fraction": fraction, "seconds": round(0.1 * step, 3), "val_loss": value}',
    'export = f"progress/{step:04d}.json"\n'
    "            os.makedirs(os.path.join(run_dir, 'progress'), exist_ok=True)\n"
    "            with open(os.path.join(run_dir, export), 'w') as fh:\n"
    "                json.dump({'loss': value}, fh)\n"
    '            line = {"step": step, "fraction": fraction, "export": export}',
)

FOLLOW = """\
import json, os, time
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
scored = 0
while True:
    done = os.path.exists(os.path.join(run_dir, "progress.done"))
    try:
        lines = open(os.path.join(run_dir, "progress.jsonl")).read().splitlines()
    except OSError:
        lines = []
    for line in lines[scored:]:
        point = json.loads(line)
        with open(os.path.join(run_dir, point["export"])) as fh:
            point["val_loss"] = json.load(fh)["loss"]
        with open(os.path.join(run_dir, "progress.eval.jsonl"), "a") as out:
            out.write(json.dumps(point) + "\\n")
        print("scored", point["export"], flush=True)
        scored += 1
    if done:
        break
    time.sleep(0.05)
"""


@pytest.mark.slow
@pytest.mark.parametrize("separate", [False, True], ids=["metric-from-training", "separate-evaluation"])
def test_frozen_progress_evaluator_scores_checkpoints_and_drives_pruning(
    tmp_path: Path, separate: bool
) -> None:
    assert '"val_loss": value' not in EXPORT_TRAIN  # the training side writes no metric in its lines
    train = EXPORT_TRAIN
    if separate:  # the final metric too comes from a frozen evaluation, as in the GPT template
        train = train.replace('json.dump({"val_loss": final}, f)', 'json.dump({"loss": final}, f)')
    root = make_workspace(
        tmp_path / "ws",
        train=train,
        proposals=[edit("LR = 0.1", "LR = 1.5", "LR 0.1 -> 1.5")],
        extra_files={"follow.py": FOLLOW},
        evaluate=separate,
    )
    toml = (root / "nightlab.toml").read_text()
    toml = toml.replace('frozen = ["evaluate.py"]', 'frozen = ["evaluate.py", "follow.py"]')
    toml = toml.replace(
        'run = "python train.py"', 'run = "python train.py"\nprogress_evaluate = "python follow.py"'
    )
    (root / "nightlab.toml").write_text(toml)
    git(root, "commit", "-qam", "a frozen progress evaluator")
    _judge_after_the_baseline(root)
    res = nightlab("run", str(root), "--plain", "--tag", "f")
    assert res.returncode == 0, res.stderr + res.stdout
    exps, runs = _ledger(root)
    base_runs = [r for r in runs if r["experiment_id"] == exps[0]["id"]]
    for run in base_runs:
        run_dir = Path(run["run_dir"])
        # Every checkpoint was scored by the evaluator, which then ended on progress.done.
        assert (run_dir / "progress.done").exists()
        scored = [json.loads(line) for line in (run_dir / "progress.eval.jsonl").read_text().splitlines()]
        assert [p["step"] for p in scored] == [5, 10, 15, 20]
        assert "scored progress/0020.json" in (run_dir / "progress_eval.log").read_text()
        assert [p["value"] for p in json.loads(run["progress_json"])] == [p["val_loss"] for p in scored]
    assert exps[1]["status"] == "pruned"
    assert "at 25% of the budget" in exps[1]["reason"]


@pytest.mark.slow
def test_check_says_whether_runs_can_be_stopped_early(tmp_path: Path) -> None:
    curve = make_workspace(tmp_path / "curve", train=CURVE_TRAIN)
    res = nightlab("check", str(curve))
    out = " ".join(res.stdout.split())  # the report wraps at the terminal's width
    assert "4 points per run (at 25%, 50%, 75%, 100%): hopeless runs can be stopped early" in out, out
    plain = make_workspace(tmp_path / "plain")
    res = nightlab("check", str(plain))
    out = " ".join(res.stdout.split())
    assert "no progress points: every run trains to the end" in out, out
