"""Memory a sandboxed training run holds in its own ``/dev/shm`` counts against its memory limit.

A file in a tmpfs is memory that no process's resident size counts. Found from outside: a run
under ``memory_limit_mb = 150`` wrote 300 MB into ``/dev/shm`` and was not stopped (on the machine's
``/dev/shm`` before the sandbox gave each training command its own, the memory also outlived it).
``ProcessTree.sample`` now adds what the run's own ``/dev/shm`` holds (``_own_shm_mb``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from nightlab.executor import sandbox
from nightlab.executor.local import LocalExecutor
from nightlab.types import RunSpec, RunStatus

SUPPORT = sandbox.detect()
needs_namespaces = pytest.mark.skipif(
    not (SUPPORT.complete and SUPPORT.netns),
    reason=f"needs user namespaces; this machine has {SUPPORT.describe()}",
)

FILL = """
import time
with open("/dev/shm/fill", "wb") as f:
    for _ in range(300):
        f.write(b"\\x01" * (1 << 20))
time.sleep(30)
"""


@needs_namespaces
def test_a_run_filling_its_own_dev_shm_is_stopped_by_the_memory_limit(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(FILL)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    command = sandbox.wrap(f"{sys.executable} train.py", [tmp_path, run_dir], "required", hide=[])
    executor = LocalExecutor(memory_limit_mb=150, poll_interval=0.02, grace_seconds=0.5)
    started = time.monotonic()
    result = executor.run(RunSpec(command=command, cwd=tmp_path, run_dir=run_dir, seed=0, timeout=20))
    assert result.status is RunStatus.OOM, result.reason  # before: it ran on, 300 MB held
    assert "memory limit exceeded" in result.reason
    assert time.monotonic() - started < 10
    assert not Path("/dev/shm/fill").exists()  # its own /dev/shm, gone with it
