"""Small research workspaces for the harness's own tests: real git repos with a toy target.

The toy target is a script whose metric is a noisy function of two constants, so a test knows
which edits are real improvements; it runs in a few milliseconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from nightlab.code.knobs import set_knobs

TOY_TRAIN = """\
import json, os, random
LR = 0.1  # learning rate: best at 0.3
WIDTH = 64  # model width: best at 128
NOISE = 0.002  # run-to-run noise (seed-driven)

seed = int(os.environ.get("NIGHTLAB_SEED", "0"))
rng = random.Random(seed)
loss = 1.0 + 10 * (LR - 0.3) ** 2 + abs(WIDTH - 128) / 1000 + rng.gauss(0, NOISE)
run_dir = os.environ.get("NIGHTLAB_RUN_DIR", "run")
os.makedirs(run_dir, exist_ok=True)
print("---")
print(f"val_loss:          {loss:.6f}")
print("training_seconds:  0.01")
with open(os.path.join(run_dir, "metrics.json"), "w") as f:
    json.dump({"val_loss": loss}, f)
"""

TOY_EVALUATE = """\
import json, os
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
# The "frozen evaluation": recomputes the metric from what training left in the run dir.
with open(os.path.join(run_dir, "result.json")) as f:
    loss = json.load(f)["loss"]
with open(os.path.join(run_dir, "metrics.json"), "w") as f:
    json.dump({"val_loss": loss, "holdout_loss": loss + 0.001}, f)
print(f"val_loss: {loss:.6f}")
"""

TOY_TOML = """\
[target]
editable = ["train.py"]
frozen = ["evaluate.py"]
run = "python train.py"
{evaluate}
[budget]
seconds = 5
timeout = 30
[metric]
name = "val_loss"
direction = "minimize"
source = "{source}"
{pattern}
[agent]
kind = "replay"
file = "proposals.jsonl"
[policy]
kind = "{policy}"
baseline_runs = 2
max_runs = 3
# Kept changes valued on fresh runs is tested on its own (tests/research/test_remeasure.py);
# elsewhere the run counts stay those of the decisions.
remeasure = 0
"""


def git(root: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def make_workspace(
    root: Path,
    proposals: list[dict] | None = None,
    train: str = TOY_TRAIN,
    policy: str = "greedy",
    source: str = "json",
    evaluate: bool = False,
    extra_files: dict[str, str] | None = None,
    toml: str | None = None,
) -> Path:
    """A committed git workspace with the toy target and a replay file."""
    root.mkdir(parents=True, exist_ok=True)
    if evaluate:
        train = train.replace('json.dump({"val_loss": loss}, f)', 'json.dump({"loss": loss}, f)').replace(
            '"metrics.json"', '"result.json"'
        )
    files = {
        "train.py": train,
        "evaluate.py": TOY_EVALUATE,
        "nightlab.toml": toml
        or TOY_TOML.format(
            evaluate='evaluate = "python evaluate.py"' if evaluate else "",
            source=source,
            pattern="pattern = '^val_loss:\\s*([0-9.]+)'" if source == "regex" else "",
            policy=policy,
        ),
        "proposals.jsonl": "".join(json.dumps(p) + "\n" for p in (proposals or [])),
        ".gitignore": "run/\n",
    }
    files.update(extra_files or {})
    return committed_repo(root, files)


def committed_repo(root: Path, files: dict[str, str]) -> Path:
    """``files`` written under ``root`` (folders made) and committed as a new git repository."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


# A user's own script as the target: the metric read from a `val loss X` line of its log.
SCRIPT_TOML = """\
[target]
editable = {editable}
frozen = {frozen}
run = "{run}"
{extra}
[budget]
seconds = 5
timeout = 60
[metric]
name = "val_loss"
direction = "minimize"
source = "regex"
pattern = 'val loss ([0-9.]+)'
[agent]
kind = "search"
[policy]
kind = "greedy"
"""


def script_workspace(
    root: Path, files: dict[str, str], editable: list[str], frozen: list[str], run: str, extra: str = ""
) -> Path:
    """A committed workspace around a user's script (:data:`SCRIPT_TOML`)."""
    toml = SCRIPT_TOML.format(editable=json.dumps(editable), frozen=json.dumps(frozen), run=run, extra=extra)
    return committed_repo(root, {**files, "nightlab.toml": toml})


def edit(search: str, replace: str, description: str | None = None, path: str = "train.py") -> dict:
    return {
        "description": description or f"{search} -> {replace}",
        "edits": [{"path": path, "search": search, "replace": replace}],
    }


def nightlab(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "nightlab.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def set_constants(path: Path, **values: object) -> None:
    """Rewrite module-level constants of a file in place, as `nightlab init --size` does."""
    path.write_text(set_knobs(path.read_text(), values, path.name))


def record_timed_runs(db: Path) -> None:
    """A ledger of tag ``t``: a baseline whose two runs trained 30 of 40 s and 36 of 44 s, and a
    candidate that crashed after 36 s without training: 66 s of training in 120 s (55%)."""
    from nightlab.store.ledger import Ledger
    from nightlab.types import RunResult, RunStatus

    with Ledger(db) as ledger:
        exp = ledger.add_experiment(kind="baseline", tag="t", description="baseline")
        for i, (trained, total) in enumerate([(30.0, 40.0), (36.0, 44.0)]):
            result = RunResult(RunStatus.OK, seed=i, training_seconds=trained, total_seconds=total)
            ledger.add_run(exp, i, result, 1.0, None, f"r/{exp}/{i}")
        crash = ledger.add_experiment(kind="candidate", tag="t", description="crashed at start-up")
        ledger.add_run(crash, 0, RunResult(RunStatus.CRASH, seed=0, total_seconds=36.0), None, None, "r/c/0")
        ledger.finish_experiment(exp, status="ok", decision="baseline", metric_mean=1.0, n_runs=2)
        ledger.finish_experiment(crash, status="crash", decision="crash", n_runs=0)
