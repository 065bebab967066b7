"""A harness started the way a user starts it, to be stopped the ways users stop it.

The toy target's training sleeps ``SLOW_SECONDS`` (an environment variable the harness passes
on to its runs) after writing its pid to ``train.pid`` in its run directory (the one place
besides its worktree the sandbox lets it write), so a test knows when training is under way
and which process to watch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

import psutil

from helpers import TOY_TRAIN, edit, git, make_workspace

SLOW_TRAIN = TOY_TRAIN.replace(
    'seed = int(os.environ.get("NIGHTLAB_SEED", "0"))',
    "import time\n"
    'with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "train.pid"), "w") as f:\n'
    "    f.write(str(os.getpid()))\n"
    'time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))\n'
    'seed = int(os.environ.get("NIGHTLAB_SEED", "0"))',
)
assert SLOW_TRAIN != TOY_TRAIN


def slow_workspace(root: Path, timeout: float = 30, proposals: list[dict] | None = None) -> Path:
    """The toy workspace with the sleeping trainer and a hard timeout of ``timeout`` seconds."""
    if proposals is None:
        proposals = [
            edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3"),
            edit("WIDTH = 64", "WIDTH = 128", "wider"),
        ]
    root = make_workspace(root, proposals=proposals, train=SLOW_TRAIN)
    if timeout != 30:
        toml = root / "nightlab.toml"
        toml.write_text(toml.read_text().replace("timeout = 30", f"timeout = {timeout:g}"))
        git(root, "commit", "-qam", f"timeout {timeout:g}")
    return root


def _foreground_signals() -> None:
    # A harness started from a background job inherits SIGINT ignored (and then keeps it so, as
    # a shell's background job should): give it the terminal's default, as a user's shell does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str, slow: float, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``nightlab ARGS`` as a user's shell starts it, its training sleeping ``slow`` seconds."""
    full = {**os.environ, "SLOW_SECONDS": f"{slow:g}", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "nightlab.cli", *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_foreground_signals,
    )


def training_pid(root: Path, known: Collection[int] = (), within: float = 30.0) -> int:
    """The pid (as this machine sees it) of a training process of workspace ``root`` once it has
    started, other than ``known``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for path in (root / ".nightlab" / "runs").glob("*/*/train.pid"):
            try:
                text = path.read_text().strip()
            except FileNotFoundError:  # a resumed replicate's old run directory, being replaced
                continue
            pid = host_pid(path.parent, int(text)) if text else None
            if pid is not None and pid not in known:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no training process started within {within:g} s")


def host_pid(run_dir: Path, written: int) -> int | None:
    """The pid of the process that wrote ``written`` into ``run_dir/train.pid``, as this machine
    sees it. Under the sandbox's own PID namespace the number it wrote is its pid in there (3,
    in every run): the process is the one whose namespace pid that is and whose environment
    names ``run_dir``. None once it has ended."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            nspids = [int(p) for p in fields.get("NSpid", "").split()]
            if not nspids or nspids[-1] != written:
                continue
            named = psutil.Process(nspids[0]).environ().get("NIGHTLAB_RUN_DIR")
            if named is not None and os.path.realpath(named) == os.path.realpath(run_dir):
                return nspids[0]
        except (OSError, ValueError, psutil.Error):
            continue
    return None


def gone(pid: int, within: float) -> bool:
    """True once ``pid`` has ended (a zombie counts as ended: it runs nothing, holds nothing)."""
    deadline = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
