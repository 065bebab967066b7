"""An MCP client that goes away while an experiment trains: the official ``mcp`` client, in a
process of its own that is killed outright (a crashed IDE, a closed laptop lid over ssh), so
nobody stops the server; it only sees its stdin closed.

The server waited for the tool call in flight, so the training ran its whole budget for a client
that would never read the answer (and a budget of hours kept the GPU). Now it stops the run with
its processes, keeps everything recorded, says so in one line on stderr and exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli_kit import gone, slow_workspace, training_pid

from helpers import nightlab

CLIENT = textwrap.dedent(
    """
    import sys
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    root, errlog = sys.argv[1], open(sys.argv[2], "w")

    async def main() -> None:
        params = StdioServerParameters(command=sys.executable, args=["-m", "nightlab.cli", "mcp", root],
                                       env={"PATH": "", "HOME": "/tmp", "SLOW_SECONDS": "60"})
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            if sys.argv[3] == "state":  # on a new tag, its first call measures the baseline
                await s.call_tool("state", {})
            edit = {"path": "train.py", "search": "WIDTH = 64", "replace": "WIDTH = 96"}
            await s.call_tool("run_experiment", {"description": "wider", "edits": [edit]})

    anyio.run(main)
    """
)


@pytest.fixture(scope="module")
def mcp_1x(tmp_path_factory: pytest.TempPathFactory) -> str:
    """PYTHONPATH with the newest mcp 1.x (and what pip resolves for it) in front: it runs a sync
    tool on the event loop, which then read nothing, not even the end of stdin, until a run had
    trained its whole budget."""
    target = tmp_path_factory.mktemp("mcp-1x")
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-warn-conflicts", "--target", str(target), "mcp<2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pip.returncode == 0, f"pip could not install mcp<2: {pip.stderr[-2000:]}"
    return os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


@pytest.mark.slow
@pytest.mark.parametrize("sdk", ["installed", "1.x"])
def test_a_client_killed_mid_experiment_stops_its_training_and_the_server(
    tmp_path: Path, sdk: str, request: pytest.FixtureRequest
) -> None:
    root = slow_workspace(tmp_path / "ws", timeout=120)
    baseline = nightlab("run", str(root), "--plain", "--tag", "t", "-n", "0", env={"SLOW_SECONDS": "0"})
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr
    # The server gets the test's PATH and PYTHONPATH (a checkout other than the installed one, the SDK).
    pythonpath = request.getfixturevalue("mcp_1x") if sdk == "1.x" else os.environ.get("PYTHONPATH", "")
    paths = f'"PATH": {os.environ["PATH"]!r}, "PYTHONPATH": {pythonpath!r}'
    (tmp_path / "client.py").write_text(CLIENT.replace('"PATH": ""', paths))
    errlog = tmp_path / "server.err"
    client = subprocess.Popen(
        [sys.executable, str(tmp_path / "client.py"), str(root), str(errlog), "run"],
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    try:
        trainer = training_pid(root)
        server = json.loads((root / ".nightlab" / "harness.lock").read_text())["pid"]
        assert "mcp" in Path(f"/proc/{server}/cmdline").read_bytes().decode()
        started = time.monotonic()
        os.kill(client.pid, signal.SIGKILL)  # no shutdown: the server's stdin just closes
        client.wait(10)
        assert gone(trainer, within=15), "the training outlived the client that asked for it"
        assert gone(server, within=15), "the server stayed after its client had gone"
        assert time.monotonic() - started < 30  # not the 60 s the training would have slept
    finally:
        if client.poll() is None:
            client.kill()
    said = errlog.read_text()
    assert "the client disconnected while the experiment 'wider' was training" in said, said
    assert "Traceback" not in said

    status = nightlab("status", str(root), "--json")
    data = json.loads(status.stdout)
    assert [(e["kind"], e["status"]) for e in data["experiments"]] == [
        ("baseline", "ok"),
        ("candidate", "interrupted"),
    ]
    again = nightlab("run", str(root), "--plain", "--tag", "t", "-n", "1", env={"SLOW_SECONDS": "0"})
    assert again.returncode == 0 and "resuming experiment 2: wider" in again.stdout, (
        again.stdout + again.stderr
    )


@pytest.mark.slow
def test_a_client_killed_while_the_baseline_trains_stops_it_too(tmp_path: Path) -> None:
    root = slow_workspace(tmp_path / "ws", timeout=120)
    paths = f'"PATH": {os.environ["PATH"]!r}, "PYTHONPATH": {os.environ.get("PYTHONPATH", "")!r}'
    (tmp_path / "client.py").write_text(CLIENT.replace('"PATH": ""', paths))
    errlog = tmp_path / "server.err"
    client = subprocess.Popen([sys.executable, str(tmp_path / "client.py"), str(root), str(errlog), "state"])
    try:
        trainer = training_pid(root)
        server = json.loads((root / ".nightlab" / "harness.lock").read_text())["pid"]
        os.kill(client.pid, signal.SIGKILL)
        client.wait(10)
        assert gone(trainer, within=15) and gone(server, within=15)
    finally:
        if client.poll() is None:
            client.kill()
    said = errlog.read_text()
    assert "the client disconnected while the baseline was training" in said, said
    data = json.loads(nightlab("status", str(root), "--json").stdout)
    assert [(e["kind"], e["status"]) for e in data["experiments"]] == [("baseline", "interrupted")]
