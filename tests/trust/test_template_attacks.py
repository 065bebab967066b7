"""Attacks on the real GPT template, at a tiny size and a three-step budget (slow: real torch runs).

The toy target cannot show these: a model that looks ahead (the frozen evaluation's causality
check makes it invalid, exit code 5), also only in the progress checkpoints (the progress
evaluator checks each), and the evaluation itself working inside the sandbox while it reads the
data cache.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import git, nightlab
from trust.kit import assert_clean, assert_never_kept, ledger_rows

pytest.importorskip("torch")

CAUSAL_EDITS = [
    {"path": "train.py", "search": "is_causal=True", "replace": "is_causal=False"},
    {
        "path": "train.py",
        "search": "mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < self.window)",
        "replace": "mask = (i[:, None] - i[None, :]).abs() < self.window",
    },
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for the module: the first night's setup prepares it, the next finds it."""
    return tmp_path_factory.mktemp("cache")


def _tiny_template(root: Path, proposals: list[dict], prune: bool = True) -> Path:
    """The cpu template at a tiny size and a three-step budget; ``prune``: with progress checkpoints."""
    res = nightlab("init", str(root), "--size", "cpu")
    assert res.returncode == 0, res.stdout + res.stderr
    toml = (root / "nightlab.toml").read_text()
    toml = re.sub(r"(?m)^seconds = .*$", "steps = 3", toml)
    toml = re.sub(r"(?m)^timeout = .*$", "timeout = 300", toml)
    toml = toml.replace('kind = "search"', 'kind = "replay"\nfile = "proposals.jsonl"')
    toml = toml.replace('kind = "confirm"', 'kind = "greedy"\nbaseline_runs = 1\nmax_runs = 1\nremeasure = 0')
    if not prune:  # no checkpoints: the final evaluation is the first to see the model
        toml = toml.replace("remeasure = 0", "remeasure = 0\nprune = false")
    toml += '\n[run]\nsandbox = "auto"\n'
    (root / "nightlab.toml").write_text(toml)
    train = (root / "train.py").read_text()
    for name, value in (
        ("DEPTH", "1"),
        ("ASPECT_RATIO", "64"),
        ("DEVICE_BATCH_SIZE", "8"),
        ("TOTAL_BATCH_SIZE", "2048"),
    ):
        train = re.sub(rf"(?m)^{name} = \S+", f"{name} = {value}", train)
    (root / "train.py").write_text(train)
    (root / "proposals.jsonl").write_text("".join(json.dumps(p) + "\n" for p in proposals))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "tiny")
    return root


@pytest.mark.slow
def test_non_causal_model_is_invalid(tmp_path: Path, cache: Path) -> None:
    root = _tiny_template(
        tmp_path / "ws",
        [{"description": "attention that looks ahead", "edits": CAUSAL_EDITS}],
        prune=False,  # with checkpoints, the first one is refused before (the test below)
    )
    env = {"NIGHTLAB_CACHE": str(cache)}
    res = nightlab("run", str(root), "--plain", "--tag", "t", env=env, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = ledger_rows(root)
    assert rows["baseline"]["decision"] == "baseline", rows["baseline"]["reason"]
    row = rows["attention that looks ahead"]
    assert row["status"] == "invalid" and row["decision"] == "invalid", row["reason"]
    assert "causal" in row["reason"], row["reason"]
    run_dir = root / ".nightlab" / "runs" / f"{row['id']:04d}" / "0"
    verdict = json.loads((run_dir / "metrics.json").read_text())
    assert verdict.get("causal") is False and "invalid" in verdict
    assert_never_kept(root)
    assert_clean(root)


# Look ahead only while a progress checkpoint is traced: the final export (traced again, since the
# checkpoint's program no longer computes what the model does) is causal, the curve is not.
PEEK_EDITS = [
    {
        "path": "train.py",
        "search": "class Attention(nn.Module):",
        "replace": "PEEK = [False]\n\n\nclass Attention(nn.Module):",
    },
    {"path": "train.py", "search": "is_causal=True", "replace": "is_causal=not PEEK[0]"},
    {
        "path": "train.py",
        "search": "mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < self.window)",
        "replace": "mask = ((i[None, :] <= i[:, None]) | PEEK[0]) & (i[:, None] - i[None, :] < self.window)",
    },
    {
        "path": "train.py",
        "search": "        if checkpoints.after_step(model, training_seconds, tokens, step, flops_per_token * tokens):\n",
        "replace": (
            "        PEEK[0] = True\n"
            "        stop = checkpoints.after_step(model, training_seconds, tokens, step, flops_per_token * tokens)\n"
            "        PEEK[0] = False\n"
            "        if stop:\n"
        ),
    },
]


@pytest.mark.slow
def test_checkpoints_that_look_ahead_make_the_run_invalid(tmp_path: Path, cache: Path) -> None:
    root = _tiny_template(
        tmp_path / "ws", [{"description": "checkpoints that look ahead", "edits": PEEK_EDITS}]
    )
    env = {"NIGHTLAB_CACHE": str(cache)}
    res = nightlab("run", str(root), "--plain", "--tag", "t", env=env, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = ledger_rows(root)
    assert rows["baseline"]["decision"] == "baseline", rows["baseline"]["reason"]
    row = rows["checkpoints that look ahead"]
    assert row["status"] == "invalid" and row["decision"] == "invalid", row["reason"]
    assert row["reason"].startswith(
        "invalid: progress evaluator: checkpoint progress/0001 (step 1): model is not causal: predictions at"
    ), row["reason"]
    run_dir = root / ".nightlab" / "runs" / f"{row['id']:04d}" / "0"
    log = (run_dir / "progress_eval.log").read_text()
    assert "progress: progress/0001 refused: model is not causal" in log, log
    assert "val_bpb" not in (run_dir / "progress.eval.jsonl").read_text()  # no point was scored
    assert_never_kept(root)
    assert_clean(root)
