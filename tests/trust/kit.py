"""Workspaces and checks for the trust tests: the toy target with a frozen evaluation named ``prepare.py``.

The layout mirrors the GPT template (``train.py`` editable, ``prepare.py`` frozen and run as
the separate evaluation), so an attack written against the toy is the attack an agent would
write against the template; the toy trains in milliseconds.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from helpers import TOY_EVALUATE, edit, git, make_workspace, nightlab

TRUST_TOML = """\
[target]
editable = ["train.py"]
frozen = ["prepare.py"]
run = "python train.py"
evaluate = "python prepare.py"

[budget]
seconds = 1
timeout = {timeout}
evaluate_timeout = 20

[metric]
name = "val_loss"
direction = "minimize"
holdout = "holdout_loss"

[agent]
kind = "replay"
file = "proposals.jsonl"

[policy]
kind = "greedy"
baseline_runs = 1
max_runs = 1

[run]
max_consecutive_crashes = 100
run_dir_limit_mb = {run_dir_mb}
sandbox = "{sandbox}"

[audit]
mode = "{audit}"
"""

# A key planted in the harness's environment; it must never reach any output.
PLANTED_KEY = "sk-plantedNIGHTLABtrust0123456789abcdefXYZ"


def trust_workspace(
    root: Path,
    proposals: list[dict],
    *,
    audit: str = "block",
    sandbox: str = "off",
    timeout: float = 4,
    run_dir_mb: float = 20,
) -> Path:
    """A committed toy workspace whose evaluation is the frozen ``prepare.py``."""
    toml = TRUST_TOML.format(audit=audit, sandbox=sandbox, timeout=timeout, run_dir_mb=run_dir_mb)
    return make_workspace(
        root, proposals=proposals, evaluate=True, toml=toml, extra_files={"prepare.py": TOY_EVALUATE}
    )


def attack(name: str, code: str) -> dict:
    """A proposal that inserts ``code`` (top level of train.py) after the NOISE constant."""
    return edit("NOISE = 0.002", "NOISE = 0.002\n" + code, name)


def run_session(root: Path, *args: str, env: dict | None = None, timeout: float = 300):
    res = nightlab("run", str(root), "--plain", "--tag", "t", *args, env=env, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def ledger_rows(root: Path) -> dict[str, dict]:
    """Experiments by description (the attack's name)."""
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = {r["description"]: dict(r) for r in con.execute("select * from experiments order by id")}
    con.close()
    return rows


def assert_clean(root: Path) -> None:
    """The user's tree and the run worktree hold exactly their commits: nothing left behind."""
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    tree = root / ".nightlab" / "worktrees" / "run-0"
    if tree.exists():
        status = git(tree, "status", "--porcelain", "--untracked-files=all", "--ignored")
        leftovers = [line for line in status.splitlines() if "__pycache__" not in line]
        assert leftovers == [], leftovers


def assert_never_kept(root: Path, tag: str = "t") -> None:
    """Nothing was kept: the research branch is still the start commit."""
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    decisions = [d for (d,) in con.execute("select decision from experiments where kind = 'candidate'")]
    (start,) = con.execute("select value from meta where key = ?", (f"start_commit:{tag}",)).fetchone()
    con.close()
    assert "keep" not in decisions, decisions
    assert git(root, "rev-parse", f"nightlab/{tag}") == start


def proc_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def env_with_key() -> dict[str, str]:
    return {"OPENAI_API_KEY": PLANTED_KEY, "NIGHTLAB_TEST_PLANTED": PLANTED_KEY}
