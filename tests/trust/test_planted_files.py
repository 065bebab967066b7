"""Symlinks, FIFOs and devices a run plants where the (unsandboxed) harness reads or writes.

The training process may write its run directory and its worktree; the harness reads both right
after it. A symlink there must never make the harness read a private file into the ledger, create
a file outside, or copy its environment; a FIFO must never hang it (docs/SECURITY.md:
planted files). The session runs through the real CLI, git and processes on the toy target.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from nightlab.executor.logfile import read_end, redact_file
from nightlab.research.progress import DONE_FILE, FINAL_FILE, ProgressEvaluator
from nightlab.research.rundir import remove_special
from nightlab.types import RunSpec
from nightlab.workspace.integrity import hash_paths
from trust.kit import assert_never_kept, attack, ledger_rows, run_session, trust_workspace

SECRET = "PRIVATE-eval-key-7f3a9c1b5e"
# Names built at run time, so the diff audit does not stop the attacks before they run.
LINK = "getattr(os, 'sym' + 'link')"
FIFO = "getattr(os, 'mk' + 'fifo')"


def attacks(secret: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (code inserted into train.py, words the recorded reason must hold)."""
    run_log = "os.path.join(os.environ['NIGHTLAB_RUN_DIR'], 'run.log')"
    return {
        "replace run.log by a symlink to a private key": (
            "import atexit\n"
            f"atexit.register(lambda: (os.unlink({run_log}), {LINK}({str(secret)!r}, {run_log})))",
            ("symlink run.log ->", str(secret), "not allowed in the run directory"),
        ),
        "replace the frozen prepare.py by a FIFO": (
            f"os.unlink('prepare.py')\n{FIFO}('prepare.py')",
            ("prepare.py (no longer a regular file)",),
        ),
    }


@pytest.fixture(scope="module")
def planted_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("planted")
    secret = base / "eval.key"
    secret.write_text(SECRET + "\n")
    root = trust_workspace(base / "ws", [attack(n, code) for n, (code, _) in attacks(secret).items()])
    run_session(root, timeout=120)  # a FIFO that blocked the frozen-file hashing would hang here
    return root, secret


@pytest.mark.parametrize(
    "name", ["replace run.log by a symlink to a private key", "replace the frozen prepare.py by a FIFO"]
)
def test_a_planted_file_makes_the_run_invalid(planted_session: tuple[Path, Path], name: str) -> None:
    root, secret = planted_session
    row = ledger_rows(root)[name]
    assert row["decision"] == "invalid", row["reason"]
    for word in attacks(secret)[name][1]:
        assert word in row["reason"], row["reason"]
    run_dir = root / ".nightlab" / "runs" / f"{row['id']:04d}" / "0"
    assert not any(p.is_symlink() for p in run_dir.rglob("*"))  # removed, not followed


def test_the_private_key_reaches_no_record(planted_session: tuple[Path, Path]) -> None:
    root, _ = planted_session
    assert_never_kept(root)
    assert SECRET.encode() not in (root / ".nightlab" / "ledger.db").read_bytes()
    records = list((root / ".nightlab" / "runs").rglob("*.json"))
    assert records
    for path in records:
        assert SECRET not in path.read_text(), path
    row = ledger_rows(root)["replace run.log by a symlink to a private key"]
    assert SECRET not in json.dumps(row)


def test_the_frozen_file_is_restored_after_a_fifo(planted_session: tuple[Path, Path]) -> None:
    root, _ = planted_session
    prepare = root / ".nightlab" / "worktrees" / "run-0" / "prepare.py"
    assert prepare.is_file() and not prepare.is_symlink()


def test_progress_markers_never_create_a_link_target(tmp_path: Path) -> None:
    """``finish`` makes progress.final and progress.done where the run may have left links."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    outside = {name: tmp_path / f"created-by-{name}" for name in (FINAL_FILE, DONE_FILE)}
    for name, target in outside.items():
        (run_dir / name).symlink_to(target)
    spec = RunSpec(command=f"{sys.executable} -c 'pass'", cwd=tmp_path, run_dir=run_dir, seed=0, timeout=20)
    ProgressEvaluator(spec, warm=True).finish(20, final=True)
    assert not any(target.exists() for target in outside.values())
    assert (run_dir / FINAL_FILE).is_file() and not (run_dir / FINAL_FILE).is_symlink()


def test_log_reads_never_follow_a_link_or_block_on_a_fifo(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    (tmp_path / "run.log").symlink_to(secret)
    assert read_end(tmp_path / "run.log", 1000) == ""
    assert redact_file(tmp_path / "run.log", [SECRET]) is False
    assert secret.read_text() == SECRET + "\n"  # not rewritten through the link either
    os.mkfifo(tmp_path / "pipe")
    assert read_end(tmp_path / "pipe", 1000) == ""  # returns at once: no writer is waited for
    (tmp_path / "zero").symlink_to("/dev/zero")
    assert hash_paths(tmp_path, ["pipe", "zero"]) == {
        "pipe": "not a regular file",
        "zero": "not a regular file",
    }


def test_remove_special_names_and_removes_what_is_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "environ").symlink_to("/proc/self/environ")
    os.mkfifo(tmp_path / "pipe")
    reason = remove_special(tmp_path)
    assert reason is not None
    assert "symlink sub/environ -> /proc/self/environ" in reason and "FIFO pipe" in reason
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ok.txt", "sub"]
    assert remove_special(tmp_path) is None


def test_a_link_to_a_file_beside_it_is_removed_without_making_the_run_invalid(tmp_path: Path) -> None:
    """Checkpointing scripts link ``latest.pt`` to their newest step: harmless, removed quietly.
    A relative link that climbs out, or one to a link, still makes the run invalid."""
    from nightlab.research.rundir import drop_inner_link

    run_dir = tmp_path / "run"
    (run_dir / "ckpt").mkdir(parents=True)
    (run_dir / "ckpt" / "step_100.pt").write_bytes(b"weights")
    (run_dir / "ckpt" / "latest.pt").symlink_to("step_100.pt")
    (run_dir / "ckpt_dir").symlink_to("ckpt")
    assert remove_special(run_dir) is None
    assert sorted(p.name for p in run_dir.rglob("*")) == ["ckpt", "step_100.pt"]
    (tmp_path / "outside.txt").write_text("secret")
    (run_dir / "up").symlink_to("../outside.txt")
    reason = remove_special(run_dir)
    assert reason is not None and "symlink up -> ../outside.txt" in reason
    assert (tmp_path / "outside.txt").read_text() == "secret"

    tree = tmp_path / "tree"
    (tree / "out").mkdir(parents=True)
    (tree / "out" / "step_1.pt").write_bytes(b"w")
    (tree / "out" / "last.pt").symlink_to("step_1.pt")
    (tree / "out" / "key").symlink_to("/etc/hostname")
    drop_inner_link(tree, "out/last.pt")
    drop_inner_link(tree, "out/key")
    assert not (tree / "out" / "last.pt").is_symlink() and (tree / "out" / "key").is_symlink()
