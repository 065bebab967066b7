"""Progress checkpoints end to end: `python train.py` beside `python evaluation.py --follow`, as
nightlab runs them, on a copy of the template with a tiny model, a short sequence and a small
evaluation. Checked, not assumed: the training process never opens the val or holdout files
and the evaluator never opens holdout (both run under a Python audit hook that ends the process
at such an open), checkpoints leave the final result unchanged, and a FLOPs budget gives a
bigger model fewer tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gpt_kit import TEMPLATE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import set_constants  # noqa: E402

TINY = {"DEPTH": 2, "ASPECT_RATIO": 16, "HEAD_DIM": 16, "TOTAL_BATCH_SIZE": 256, "DEVICE_BATCH_SIZE": 4}

# Runs a script under an audit hook: every open of a *.bin file is written to a log, and an open
# of a forbidden one ends the process at once with exit code 97 (tests run as root, so file
# permissions would prove nothing). argv: the log, forbidden names (comma-separated), the script.
AUDITED = """\
import os, runpy, sys
log_path, forbidden, script = sys.argv[1], set(sys.argv[2].split(",")), sys.argv[3]
log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

def hook(event, args):
    if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    name = os.path.basename(os.fsdecode(args[0]))
    if name.endswith(".bin"):
        os.write(log, (name + "\\n").encode())
        if name in forbidden:
            os.write(2, f"audit: {script} opened {name}\\n".encode())
            os._exit(97)

sys.addaudithook(hook)
sys.argv = [script, *sys.argv[4:]]
runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def ws(tmp_path: Path, cache: Path) -> Path:
    """A copy of the template with a tiny model, prepared (outside any audit)."""
    ws = tmp_path / "ws"
    shutil.copytree(TEMPLATE, ws, ignore=shutil.ignore_patterns("__pycache__", "run"))
    set_constants(ws / "data.py", SEQ_LEN=64, EVAL_TOKENS=2048)
    set_constants(ws / "train.py", **TINY)
    (ws / "audited.py").write_text(AUDITED)
    proc = subprocess.run(
        [sys.executable, "prepare.py"], cwd=ws, env=env(cache), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return ws


def env(cache: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTLAB_")}
    return {**base, "OMP_NUM_THREADS": "1", "NIGHTLAB_CACHE": str(cache), **extra}


def audited(ws: Path, log: Path, forbidden: str, *command: str) -> list[str]:
    return [sys.executable, "audited.py", str(log), forbidden, *command]


def summary(stdout: str) -> dict[str, float]:
    block = stdout.rsplit("\n---\n", 1)[1]
    return {k.strip(): float(v) for k, v in (line.split(":", 1) for line in block.strip().splitlines())}


def evaluate(ws: Path, run_dir: Path, cache: Path) -> dict:
    proc = subprocess.run([sys.executable, "evaluation.py"], cwd=ws, capture_output=True, text=True,
                          env=env(cache, NIGHTLAB_RUN_DIR=str(run_dir)))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_checkpoints_scored_beside_training_that_never_opens_val_or_holdout(
    ws: Path, cache: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_env = env(cache, NIGHTLAB_RUN_DIR=str(run_dir), NIGHTLAB_EVAL_SEPARATE="1", NIGHTLAB_SEED="3",
                  NIGHTLAB_BUDGET_TOKENS="4096", NIGHTLAB_PROGRESS_EVERY="0.25",
                  NIGHTLAB_EVAL_INTERVAL_SECONDS="1000", NIGHTLAB_TARGET_METRIC="0.001")  # fmt: skip
    train_log, eval_log = tmp_path / "train.opened", tmp_path / "eval.opened"
    evaluator = subprocess.Popen(audited(ws, eval_log, "holdout.bin", "evaluation.py", "--follow"), cwd=ws,
                                 env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        train = subprocess.run(audited(ws, train_log, "val.bin,holdout.bin", "train.py"), cwd=ws, env=run_env,
                               capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        (run_dir / "progress.done").touch()  # what nightlab does when training has ended
        out, _ = evaluator.communicate(timeout=300)
    assert train.returncode == 0, train.stdout + train.stderr
    assert evaluator.returncode == 0, out
    # The hooks saw the data files: the training process train.bin only, the evaluator val.bin only.
    assert set(train_log.read_text().split()) == {"train.bin"}
    assert set(eval_log.read_text().split()) == {"val.bin"}
    points = [json.loads(line) for line in (run_dir / "progress.eval.jsonl").read_text().splitlines()]
    assert [p["fraction"] for p in points] == [0.25, 0.5, 0.75]  # 16 steps of 256 tokens
    assert [p["tokens"] for p in points] == [1024, 2048, 3072]
    assert all(0 < p["val_bpb"] < 9 for p in points)
    assert "progress: 3 checkpoints in " in train.stdout and "(the first checkpoint's program" in train.stdout
    assert not (run_dir / "progress").exists() and not (run_dir / "stop").exists()  # target never met

    # The same run without checkpoints ends with the very same model.
    plain_dir = tmp_path / "plain"
    plain_env = {k: v for k, v in run_env.items() if "PROGRESS" not in k and "EVAL_INTERVAL" not in k}
    plain = subprocess.run([sys.executable, "train.py"], cwd=ws, capture_output=True, text=True, timeout=300,
                           env={**plain_env, "NIGHTLAB_RUN_DIR": str(plain_dir)})  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert "(traced)" in plain.stdout and not (plain_dir / "progress.jsonl").exists()
    assert evaluate(ws, plain_dir, cache)["val_bpb"] == evaluate(ws, run_dir, cache)["val_bpb"]


@pytest.mark.slow
def test_the_warm_evaluator_scores_the_final_model_as_the_evaluation_does(
    ws: Path, cache: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_env = env(cache, NIGHTLAB_RUN_DIR=str(run_dir), NIGHTLAB_EVAL_SEPARATE="1", NIGHTLAB_SEED="5",
                  NIGHTLAB_BUDGET_TOKENS="4096", NIGHTLAB_PROGRESS_EVERY="0.5", NIGHTLAB_WARM_EVALUATE="1")  # fmt: skip
    train_log, eval_log = tmp_path / "train.opened", tmp_path / "eval.opened"
    evaluator = subprocess.Popen(audited(ws, eval_log, "train.bin", "evaluation.py", "--follow"), cwd=ws,
                                 env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        train = subprocess.run(audited(ws, train_log, "val.bin,holdout.bin", "train.py"), cwd=ws, env=run_env,
                               capture_output=True, text=True, timeout=300)  # fmt: skip
        assert train.returncode == 0, train.stdout + train.stderr
        assert not (run_dir / "metrics.json").exists()
        (run_dir / "progress.final").touch()  # what nightlab does once training has passed its audit
    finally:
        (run_dir / "progress.done").touch()
        out, _ = evaluator.communicate(timeout=300)
    assert evaluator.returncode == 0, out
    assert "final evaluation (warm, in the progress evaluator)" in out and "val_bpb: " in out
    warm = json.loads((run_dir / "metrics.json").read_text())
    assert set(eval_log.read_text().split()) == {"val.bin", "holdout.bin"}
    assert set(train_log.read_text().split()) == {"train.bin"}
    # The evaluation in its own process, on the same export: the same verdict to the last digit.
    cold_dir = tmp_path / "cold"
    cold_dir.mkdir()
    for name in ("model.pt2", "model.json"):
        shutil.copy(run_dir / name, cold_dir / name)
    cold = evaluate(ws, cold_dir, cache)
    assert warm["val_bpb"] == cold["val_bpb"] and warm["holdout_bpb"] == cold["holdout_bpb"]
    assert warm["causal"] is True and warm["data_sha256"] == cold["data_sha256"]

    # Without the request it only scores the checkpoints: no verdict.
    again = tmp_path / "again"
    again.mkdir()
    (again / "progress.done").touch()
    done = subprocess.run([sys.executable, "evaluation.py", "--follow"], cwd=ws, capture_output=True, text=True,
                          env={**run_env, "NIGHTLAB_RUN_DIR": str(again)}, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (again / "metrics.json").exists()


@pytest.mark.slow
def test_a_flops_budget_gives_a_bigger_model_fewer_tokens(ws: Path, cache: Path, tmp_path: Path) -> None:
    budget = 2e9
    results = {}
    for aspect in (16, 32):
        set_constants(ws / "train.py", ASPECT_RATIO=aspect)
        run_env = env(cache, NIGHTLAB_RUN_DIR=str(tmp_path / f"run{aspect}"), NIGHTLAB_EVAL_SEPARATE="1",
                      NIGHTLAB_BUDGET_FLOPS=f"{budget:g}")  # fmt: skip
        proc = subprocess.run([sys.executable, "train.py"], cwd=ws, env=run_env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results[aspect] = values = summary(proc.stdout)
        steps = values["num_steps"]
        per_step = values["total_flops"] / steps  # total_flops is printed to 4 digits
        # Training stops at the first step that reaches the budget.
        assert (steps - 1) * per_step < budget * (1 + 1e-3) and steps * per_step >= budget * (1 - 1e-3)
    small, big = results[16], results[32]
    assert big["num_params_M"] > small["num_params_M"]
    assert big["total_tokens_M"] < small["total_tokens_M"] / 2  # width 64 against 32: > 2x the FLOPs
