"""A sandboxed training command's ``/tmp`` is a folder of its run directory (``executor/scratch.py``).

Found through ``nightlab try`` (cpu template, ``run_dir_limit_mb = 20``, ``sandbox = "required"``):
a train.py that wrote 60 MB to ``/tmp`` was recorded ``ok`` twice and the file outlived it. Now
those bytes count against the run directory's limit and go with the run; the machine's ``/tmp``
stays readable and unchanged; the shared compile cache stays writable for training, and the
evaluation's compile caches are others, which no training run can write.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nightlab.executor import sandbox, scratch
from nightlab.executor.local import LocalExecutor
from nightlab.types import RunSpec, RunStatus

SUPPORT = sandbox.detect()
needs_namespaces = pytest.mark.skipif(
    not (SUPPORT.complete and SUPPORT.netns),
    reason=f"needs user namespaces; this machine has {SUPPORT.describe()}",
)


@pytest.fixture
def in_tmp() -> Iterator[Path]:
    """A folder in the machine's ``/tmp`` (where ``tmp_path`` need not lie), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="nightlab-test-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


FILL = """
import time
with open("/tmp/{name}", "wb") as f:
    for _ in range(60):
        f.write(b"x" * 1_000_000); f.flush(); time.sleep(0.02)
time.sleep(30)
"""


@needs_namespaces
def test_what_training_writes_into_tmp_counts_against_the_run_directory_limit(tmp_path: Path) -> None:
    name = f"nightlab-test-{uuid.uuid4().hex[:10]}"
    (tmp_path / "train.py").write_text(FILL.format(name=name))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    command = sandbox.wrap(f"{sys.executable} train.py", [tmp_path, run_dir], "required", hide=[])
    executor = LocalExecutor(run_dir_limit_bytes=20_000_000, poll_interval=0.05, grace_seconds=0.5)
    try:
        result = executor.run(RunSpec(command=command, cwd=tmp_path, run_dir=run_dir, seed=0, timeout=25))
        # Before: ok at its timeout, 60 MB left in the machine's /tmp.
        assert result.status is RunStatus.CRASH, (result.status, result.reason, result.log_tail)
        assert "run directory exceeded" in (result.reason or "")
        assert not Path(f"/tmp/{name}").exists()
        assert not (run_dir / scratch.FOLDER).exists()  # gone before the harness scans the run directory
    finally:
        Path(f"/tmp/{name}").unlink(missing_ok=True)


PROBE = """
import os, sys
existing, own = sys.argv[1], sys.argv[2]
print("read", open(existing).read())
for path in (existing, existing + ".new"):
    try:
        open(path, "a").write("x")
        print("wrote", path)
    except OSError:
        print("refused")
open("/tmp/" + own, "w").write("mine")
open(os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], own), "w").write("cache")
print("cache", os.environ["TORCHINDUCTOR_CACHE_DIR"])
"""


@needs_namespaces
def test_the_machines_tmp_stays_readable_and_unchanged_and_the_compile_cache_shared(in_tmp: Path) -> None:
    tmp_path = in_tmp  # a workspace in /tmp: its worktree and run directory stay writable
    existing = tmp_path / "existing.txt"
    existing.write_text("machine")
    own = f"nightlab-test-{uuid.uuid4().hex[:10]}"
    (tmp_path / "probe.py").write_text(PROBE)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    command = f"{sys.executable} probe.py {existing} {own}"
    env = {**os.environ, "NIGHTLAB_RUN_DIR": str(run_dir)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    wrapped = sandbox.wrap(command, [tmp_path / "work", run_dir], "required", hide=[])
    (tmp_path / "work").mkdir()
    made = [Path(f"/tmp/{own}")]
    try:
        done = subprocess.run(wrapped, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
        lines = done.stdout.splitlines()
        assert lines[:3] == ["read machine", "refused", "refused"], done.stdout + done.stderr
        assert existing.read_text() == "machine" and not Path(f"{existing}.new").exists()
        assert not Path(f"/tmp/{own}").exists()  # in the run's own /tmp, in its run directory
        assert (run_dir / scratch.FOLDER / own).read_text() == "mine"
        cache = lines[3].split()[1]
        made.append(Path(cache, own))
        assert Path(cache, own).read_text() == "cache"  # the training runs' shared cache
        # The evaluation (no ``hide``) writes the machine's /tmp and compiles into other caches.
        evaluation = subprocess.run(
            sandbox.wrap(command, [run_dir], "required"),
            shell=True,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert Path(f"/tmp/{own}").read_text() == "mine", evaluation.stderr
        frozen = evaluation.stdout.splitlines()[3].split()[1]
        made.append(Path(frozen, own))
        assert frozen != cache and Path(frozen).name.startswith("nightlab-eval-")
    finally:
        for path in made:
            path.unlink(missing_ok=True)


RENAME = """
import os
print(open("cache/byte/train.bin").read())
try:
    os.rename("cache/byte", "cache/aside")
    os.makedirs("cache/byte")
    open("cache/byte/val.bin", "w").write("planted")
    print("replaced")
except OSError as exc:
    print("refused", type(exc).__name__)
"""


@needs_namespaces
def test_a_data_cache_in_tmp_cannot_be_swapped_by_training(in_tmp: Path, tmp_path: Path) -> None:
    """The attack SECURITY.md listed as not covered: with the data cache in ``/tmp``, training renamed
    its folder aside (the hidden ``val.bin`` with it) and wrote its own split in its place. The
    machine's ``/tmp`` entries are read-only in the training command's view."""
    byte = in_tmp / "cache" / "byte"
    byte.mkdir(parents=True)
    (byte / "train.bin").write_text("train")
    (byte / "val.bin").write_text("val")
    (in_tmp / "rename.py").write_text(RENAME)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    command = sandbox.wrap(f"{sys.executable} rename.py", [run_dir], "required", hide=[byte / "val.bin"])
    env = {**os.environ, "NIGHTLAB_RUN_DIR": str(run_dir)}
    done = subprocess.run(command, shell=True, cwd=in_tmp, env=env, capture_output=True, text=True)
    assert done.stdout.split() == ["train", "refused", "OSError"], done.stdout + done.stderr
    assert (byte / "val.bin").read_text() == "val" and not (in_tmp / "cache" / "aside").exists()


CAPPED = """
import sys
from nightlab.executor import scratch
scratch.MAX_ENTRIES = 5
own = scratch.private_tmp(sys.argv[2], [sys.argv[2]], root=sys.argv[1])
print("own" if own else "shared", sorted(__import__("os").listdir(sys.argv[1])))
"""


@needs_namespaces
@pytest.mark.parametrize("count", [5, 6])
def test_a_tmp_with_more_entries_than_the_cap_is_left_shared_and_the_log_says_so(
    tmp_path: Path, count: int
) -> None:
    """One mount per entry: 2,180 entries added 135 ms to a start, and the kernel's mount limit
    would refuse a crowded /tmp without a word. Past ``MAX_ENTRIES`` the run keeps the shared
    /tmp (a refused run would lose the night) and its log says why and what to do."""
    root, run_dir = tmp_path / "machine-tmp", tmp_path / "run"
    root.mkdir()
    run_dir.mkdir()
    for index in range(count):
        (root / f"entry-{index}").write_text("")
    (tmp_path / "capped.py").write_text(CAPPED)
    argv = ["unshare", "-rm", "--", sys.executable, str(tmp_path / "capped.py"), str(root), str(run_dir)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    if count <= 5:
        assert done.stdout.startswith("own ['entry-0',"), done.stdout + done.stderr
        assert not done.stderr
    else:
        assert done.stdout.startswith("shared ['entry-0',"), done.stdout + done.stderr
        assert "holds 6 entries, more than the 5" in done.stderr
        assert "remove old entries there" in done.stderr
        assert not (run_dir / ".nightlab-tmp").exists()
