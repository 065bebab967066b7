"""What a training run leaves in the machine's scratch space: nothing in ``/dev/shm``.

``/dev/shm`` is memory. A file written there is counted by no process's resident size (the
``[run] memory_limit_mb`` sampling), nor by the run-directory limit, and it outlives the run
(found from outside: 60 MB written there by a run under a 20 MB run-directory limit and a 200 MB
memory limit, the run ``ok``, the file still there; the machine's ``/dev/shm`` may take half its
memory or more). The training command gets a ``/dev/shm`` of its own, gone with its last process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from nightlab.executor import sandbox

SUPPORT = sandbox.detect()
needs_namespaces = pytest.mark.skipif(
    not (SUPPORT.complete and SUPPORT.netns),
    reason=f"needs user namespaces; this machine has {SUPPORT.describe()}",
)

# Writes a file into /dev/shm, then shares memory between two of its own processes through a named
# segment there (as torch's DataLoader workers and NCCL do); prints what it saw.
PROBE = """
import os, sys
from multiprocessing import Process, shared_memory
name = sys.argv[1]
with open("/dev/shm/" + name, "wb") as f:
    f.write(b"x" * (1 << 20))
print("wrote", os.path.getsize("/dev/shm/" + name))
block = shared_memory.SharedMemory(name=name + "-seg", create=True, size=16)

def child(n):
    other = shared_memory.SharedMemory(name=n)
    other.buf[0] = 42
    other.close()

p = Process(target=child, args=(name + "-seg",))
p.start(); p.join()
print("shared", block.buf[0])
block.close(); block.unlink()
"""


@needs_namespaces
def test_what_training_writes_into_dev_shm_is_gone_with_the_run(tmp_path: Path) -> None:
    name = f"nightlab-test-{uuid.uuid4().hex[:10]}"
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    work = tmp_path / "work"
    work.mkdir()
    command = f"{sys.executable} {script} {name}"
    try:
        done = subprocess.run(
            sandbox.wrap(command, [work], "required", hide=[]), shell=True, capture_output=True, text=True
        )
        assert done.stdout.split() == ["wrote", "1048576", "shared", "42"], done.stdout + done.stderr
        assert not os.path.exists(f"/dev/shm/{name}")  # before: 1 MB of the machine's memory, kept
        # The evaluation commands (no ``hide``) keep the machine's /dev/shm, as unwrapped commands do.
        evaluation = subprocess.run(
            sandbox.wrap(command, [work], "required"), shell=True, capture_output=True, text=True
        )
        assert evaluation.returncode == 0, evaluation.stderr
        assert os.path.exists(f"/dev/shm/{name}")
    finally:
        Path(f"/dev/shm/{name}").unlink(missing_ok=True)
