"""Time to target on the GPT template: its progress checkpoints, and ``nightlab validate``.

Every NIGHTLAB_EVAL_INTERVAL_SECONDS of training the training process leaves a checkpoint (frozen
harness.py); ``python evaluation.py --follow`` (frozen, its own process) scores it on a val prefix,
appends the point to progress.eval.jsonl and creates the stop file at NIGHTLAB_TARGET_METRIC,
which ends training at its next step. The end-to-end test runs ``nightlab validate
--time-to-target`` on a cpu workspace at a tiny scale, comparing a learning rate ten times too
small with the default: the default must reach the slow side's score sooner.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nightlab

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import git, set_constants  # noqa: E402
from helpers import nightlab as run_cli
from nightlab.code.knobs import knob_values

TEMPLATE = Path(nightlab.__file__).parent / "templates" / "gpt"
# A model and an evaluation small enough that a CPU run takes seconds.
TINY = {"DEPTH": 2, "ASPECT_RATIO": 16, "HEAD_DIM": 16, "TOTAL_BATCH_SIZE": 2048, "DEVICE_BATCH_SIZE": 8}
SMALL_EVAL = {"SEQ_LEN": 64, "EVAL_TOKENS": 4096}
SLOW_LRS = {"EMBEDDING_LR": 0.03, "UNEMBEDDING_LR": 0.0004, "MATRIX_LR": 0.004, "SCALAR_LR": 0.002}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def run_train(
    ws: Path, cache: Path, run_dir: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    """train.py with the progress evaluator beside it, as nightlab runs them (progress.done when
    training has ended); the training process and the evaluator's log."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTLAB_")}
    full.update(NIGHTLAB_CACHE=str(cache), NIGHTLAB_RUN_DIR=str(run_dir), NIGHTLAB_EVAL_SEPARATE="1", **env)
    run_dir.mkdir(parents=True)
    evaluator = subprocess.Popen([sys.executable, "evaluation.py", "--follow"], cwd=ws, env=full,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        proc = subprocess.run(
            [sys.executable, "train.py"], cwd=ws, env=full, capture_output=True, text=True, timeout=300
        )
    finally:
        (run_dir / "progress.done").touch()
        log, _ = evaluator.communicate(timeout=300)
    assert evaluator.returncode == 0 or "NIGHTLAB_TARGET_METRIC" in log, log
    return proc, log


def curve(run_dir: Path) -> list[dict]:
    path = run_dir / "progress.eval.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_periodic_checkpoints_give_a_curve_and_stop_at_the_target(tmp_path: Path, cache: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(TEMPLATE, ws, ignore=shutil.ignore_patterns("__pycache__", "run"))
    set_constants(ws / "data.py", **SMALL_EVAL)
    set_constants(ws / "train.py", **TINY)
    assert subprocess.run([sys.executable, "prepare.py"], cwd=ws, env=dict(os.environ, NIGHTLAB_CACHE=str(cache)),
                          capture_output=True).returncode == 0  # fmt: skip

    # Without the variables: no checkpoint, no curve, nothing changes.
    proc, _ = run_train(ws, cache, tmp_path / "plain", NIGHTLAB_BUDGET_STEPS="3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "plain" / "progress.jsonl").exists() and curve(tmp_path / "plain") == []

    proc, log = run_train(
        ws, cache, tmp_path / "curve", NIGHTLAB_BUDGET_SECONDS="3", NIGHTLAB_EVAL_INTERVAL_SECONDS="0.5"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    points = curve(tmp_path / "curve")
    assert len(points) >= 2, proc.stdout + log  # how many depends on the machine's speed
    keys = ["export", "flops", "fraction", "seconds", "step", "tokens", "val_bpb"]
    assert [sorted(p) for p in points] == [keys] * len(points)
    seconds = [p["seconds"] for p in points]
    # Point k is taken at the first step past (k + 1) intervals of training (times rounded to ms).
    assert all(t >= (k + 1) * 0.5 - 1e-3 for k, t in enumerate(seconds)), seconds
    assert all(b > a for a, b in zip(seconds, seconds[1:], strict=False)), seconds
    assert [p["tokens"] for p in points] == sorted(p["tokens"] for p in points)
    assert points[-1]["val_bpb"] < points[0]["val_bpb"]  # it learns
    # The budget still ends training; the last checkpoint is at its end, after the last step.
    summary = dict(re.findall(r"^(\w+):\s+([0-9.e+]+)$", proc.stdout.rsplit("\n---\n", 1)[1], re.M))
    assert float(summary["training_seconds"]) >= 3.0
    assert points[-1]["step"] == int(summary["num_steps"])

    # A target any finite score meets (bits per byte are far below 100): the evaluator creates the
    # stop file at the first checkpoint, and training stops long before its budget.
    target = 100.0
    proc, log = run_train(ws, cache, tmp_path / "target", NIGHTLAB_BUDGET_SECONDS="60",
                     NIGHTLAB_EVAL_INTERVAL_SECONDS="0.5", NIGHTLAB_TARGET_METRIC=str(target))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stopped = curve(tmp_path / "target")
    assert stopped and stopped[0]["val_bpb"] <= target
    assert (tmp_path / "target" / "stop").exists() and "stop created" in log
    summary = dict(re.findall(r"^(\w+):\s+([0-9.e+]+)$", proc.stdout.rsplit("\n---\n", 1)[1], re.M))
    assert float(summary["training_seconds"]) < 60
    assert (tmp_path / "target" / "model.pt2").exists()  # finished as usual: exported for the evaluation
    _, bad = run_train(ws, cache, tmp_path / "bad", NIGHTLAB_BUDGET_STEPS="2", NIGHTLAB_EVAL_INTERVAL_SECONDS="0.5",
                    NIGHTLAB_TARGET_METRIC="low")  # fmt: skip
    assert bad == "evaluation.py: NIGHTLAB_TARGET_METRIC='low' is not a number\n"


@pytest.mark.slow
def test_validate_time_to_target_on_the_cpu_template(tmp_path: Path, cache: Path) -> None:
    env = {"NIGHTLAB_CACHE": str(cache)}
    ws = tmp_path / "lab"
    res = run_cli("init", str(ws), "--size", "cpu", env=env)
    assert res.returncode == 0, res.stderr
    set_constants(ws / "data.py", **SMALL_EVAL)
    set_constants(ws / "train.py", **SLOW_LRS)
    with (ws / "nightlab.toml").open("a") as fh:
        fh.write('\n[scales.tiny]\nconstants = { DEPTH = 2, ASPECT_RATIO = 16, HEAD_DIM = 16, '
                 'TOTAL_BATCH_SIZE = 2048, DEVICE_BATCH_SIZE = 8 }\nbudget = { seconds = 3, timeout = 120 }\n')  # fmt: skip
    git(ws, "commit", "-q", "-am", "learning rates ten times too small")
    template = knob_values((TEMPLATE / "train.py").read_text())
    defaults = {name: template[name] for name in SLOW_LRS}
    set_constants(ws / "train.py", **defaults)
    git(ws, "commit", "-q", "-am", "the template's learning rates")

    res = run_cli("validate", str(ws), "--scale", "tiny", "--a", "HEAD~1", "--b", "HEAD", "--seeds", "2",
                  "--time-to-target", "--eval-interval", "1", "--json", env=env, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout
    data = json.loads(res.stdout)
    val = data["metrics"][0]
    assert val["name"] == "val_bpb" and val["difference"] < 0  # the default learning rates learn more
    ttt = data["time_to_target"]
    assert ttt["target"] == pytest.approx(val["mean_a"])
    assert all(r["reached"] for r in ttt["b"]), ttt
    assert ttt["time"]["change"] < 0, ttt["time"]  # a positive speedup: less time to the target
    assert ttt["time"]["mean_b"] < ttt["time"]["mean_a"]
    assert "→" in ttt["time"]["text"]
    # The scaled commits carry the tiny constants; the curves of every run are on disk.
    assert "DEPTH = 2" in git(ws, "show", f"{data['b']['run_commit']}:train.py")
    curves = list((ws / ".nightlab" / "runs").glob("*/*/progress.eval.jsonl"))
    assert len(curves) >= 4 and len(curves) == len(list((ws / ".nightlab" / "runs").glob("*/*/run.log")))
    assert not list((ws / ".nightlab" / "runs").glob("*/*/progress/"))  # checkpoints deleted once scored
    assert Path(data["plot"]).stat().st_size > 1000
