"""A unix socket made after the training run started, in a folder where the user's services put
theirs (the runtime folder: D-Bus, ``systemd --user``; tmux's; X's).

The sockets bound when a run starts are covered by ``/dev/null`` mounts (``sandbox.unix_sockets``);
one made later was not (a known gap; found again from outside: a listener bound in such a folder
after the start took the training run's connection). The training command now sees each of those
folders, as it exists at the start, empty (``sandbox.socket_folders``, ``mounts.veil``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nightlab.executor import sandbox

SUPPORT = sandbox.detect()
needs_namespaces = pytest.mark.skipif(
    not (SUPPORT.complete and SUPPORT.netns),
    reason=f"needs user namespaces; this machine has {SUPPORT.describe()}",
)

# Waits for the go file, then connects to the socket the test made meanwhile.
PROBE = """
import os, socket, sys, time
path, go = sys.argv[1], sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.02)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(path)
    print("connected")
except OSError as exc:
    print("no-connect", type(exc).__name__)
"""


def _connect_after_start(command: str, folder: Path, go: Path) -> str:
    go.unlink(missing_ok=True)
    run = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # the run has started (and, sandboxed, made its mounts)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "bus"))
    server.listen(1)
    go.touch()
    try:
        out, err = run.communicate(timeout=20)
    finally:
        server.close()
        (folder / "bus").unlink()
    assert run.returncode == 0, err
    return out.strip()


@needs_namespaces
def test_a_socket_made_after_the_start_in_a_services_folder_is_out_of_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run-user"  # stands for /run/user/<uid>
    folder.mkdir()
    monkeypatch.setattr(sandbox, "socket_folders", lambda: [str(folder)])
    script, go, work = tmp_path / "probe.py", tmp_path / "go", tmp_path / "work"
    script.write_text(PROBE)
    work.mkdir()
    command = f"{sys.executable} {script} {folder / 'bus'} {go}"
    training = sandbox.wrap(command, [work], "required", hide=[])
    assert _connect_after_start(training, folder, go) == "no-connect FileNotFoundError"  # before: connected
    # The evaluation's wrapping (no ``hide``) keeps the folder, so the probe can connect.
    assert _connect_after_start(sandbox.wrap(command, [work], "required"), folder, go) == "connected"


def test_the_services_folders_are_those_that_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TMUX_TMPDIR", str(tmp_path))
    (tmp_path / f"tmux-{sandbox.os.getuid()}").mkdir()
    assert str(tmp_path / f"tmux-{sandbox.os.getuid()}") in sandbox.socket_folders()
