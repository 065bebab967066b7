"""The yardsticks train.py is measured against (benchmarks/): they must keep working as it changes.

benchmarks/naive_train.py trains the straightforward GPT through a workspace's own loader,
budget, export and separate evaluation, so equal_time.py's val_bpb figures compare like with
like; tokens_per_second.py's ablations switch off train.py's features by name, which silently
breaks when a knob or function is renamed unless something checks it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gpt_kit import MODULES, TEMPLATE

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT / "tests"))
from helpers import set_constants  # noqa: E402


@pytest.mark.slow
def test_naive_baseline_trains_and_is_evaluated_like_train_py(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(TEMPLATE, ws, ignore=shutil.ignore_patterns("__pycache__", "run"))
    for name in ("naive_gpt.py", "naive_train.py"):
        shutil.copy(BENCHMARKS / name, ws / name)
    set_constants(ws / "data.py", SEQ_LEN=64, EVAL_TOKENS=2048)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        NIGHTLAB_CACHE=str(tmp_path / "cache"),
        NIGHTLAB_RUN_DIR=str(ws / "run"),
        NIGHTLAB_BUDGET_STEPS="5",
        NAIVE_DEPTH="2",
        NAIVE_WIDTH="32",
        NAIVE_HEADS="2",
        NAIVE_BATCH="4",
    )
    for key in ("NIGHTLAB_EVAL_SEPARATE", "NIGHTLAB_BUDGET_SECONDS", "NIGHTLAB_BUDGET_TOKENS"):
        env.pop(key, None)
    subprocess.run([sys.executable, "prepare.py"], cwd=ws, env=env, check=True, capture_output=True)
    proc = subprocess.run(
        [sys.executable, "naive_train.py"], cwd=ws, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = dict(re.findall(r"^(\w+):\s+([0-9.]+)$", proc.stdout, re.M))
    assert float(summary["num_steps"]) == 5
    # Five steps from a 0.02-std init: a little better than uniform (8 bits), nowhere near good.
    assert 4.0 < float(summary["val_bpb"]) < 8.5
    assert "evaluation:" in proc.stdout  # scored by the separate evaluator (causality checked)


@pytest.fixture
def importable(monkeypatch: pytest.MonkeyPatch):
    """benchmarks/ and the template on sys.path; what the test imports is forgotten afterwards."""
    names = (*MODULES, "naive_gpt", "naive_train", "tokens_per_second")
    for name in names:
        if name in sys.modules:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(TEMPLATE))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield
    for name in names:
        sys.modules.pop(name, None)


def test_naive_lr_schedule_warms_up_then_decays_to_a_tenth(importable: None) -> None:
    from naive_train import lr_at

    assert lr_at(0.0, 1.0) == pytest.approx(0.0, abs=1e-6)
    assert lr_at(0.02, 1.0) == pytest.approx(1.0)
    assert lr_at(0.51, 1.0) == pytest.approx(0.55, abs=1e-6)  # halfway down the cosine
    assert lr_at(1.0, 1.0) == pytest.approx(0.1)


def test_every_ablation_names_something_train_py_has(importable: None) -> None:
    import tokens_per_second

    for i, (label, overrides) in enumerate(tokens_per_second.ABLATIONS.items()):
        module = tokens_per_second.load_train(f"test{i}", overrides)
        for name, value in overrides.items():
            assert getattr(module, name) is value, (label, name)
    with pytest.raises(SystemExit, match="no 'NOT_A_KNOB'"):
        tokens_per_second.load_train("bad", {"NOT_A_KNOB": 1})
