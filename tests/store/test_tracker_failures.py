"""Trackers that fail: a tracking server down, one answering errors, one that never answers.

Each with MLflow's real client against a real port on this machine: a closed one (nothing
listens), a server answering 503, and a socket that accepts and never replies. What is checked
is what a user sees: seconds rather than minutes, one line naming the server and what to fix,
the exit code, and a run that ends when its research does.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import edit, git, make_workspace, nightlab

pytest.importorskip("mlflow")

PROPOSALS = [edit("LR = 0.1", "LR = 0.3", "LR 0.3"), edit("WIDTH = 64", "WIDTH = 8", "WIDTH 8")]
# A run of the CLI that outlives this has waited on the server: MLflow's own retries take ~4 min.
SECONDS = 60


def _closed_port() -> int:
    """A port nothing listens on: bound, then closed (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_workspace(tmp_path_factory.mktemp("failing") / "ws", proposals=PROPOSALS)
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 0, res.stderr
    return root


class _Failing(http.server.BaseHTTPRequestHandler):
    """Every request answered 503, which MLflow's client retries with backoff."""

    calls = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).calls += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def failing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_export_to_a_server_that_is_down_fails_in_seconds_on_one_line(night: Path) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    res = nightlab("export", str(night), "--to", "mlflow", "-o", f"tracking_uri={uri}", timeout=SECONDS)
    assert time.monotonic() - started < 30
    assert res.returncode == 2  # the address is the user's to fix
    line = _one_line(res.stderr)
    assert line.startswith(f"error: mlflow: cannot reach the tracking server {uri} (")
    assert "tracking_uri" in line and "MLFLOW_TRACKING_URI" in line


def test_export_to_a_server_answering_errors_gives_up_in_seconds_on_one_line(
    night: Path, failing_server: str
) -> None:
    started = time.monotonic()
    res = nightlab(
        "export", str(night), "--to", "mlflow", "-o", f"tracking_uri={failing_server}", timeout=SECONDS
    )
    assert time.monotonic() - started < 45
    assert res.returncode == 1
    line = _one_line(res.stderr)
    assert line.startswith("error: mlflow export failed (MlflowException: ")
    assert f"[{failing_server}]" in line and "`nightlab export --to mlflow` again" in line
    assert _Failing.calls >= 2  # MLflow's client retried: bounded, not switched off


@contextlib.contextmanager
def _silent_server() -> Iterator[str]:
    """A loopback port that accepts connections (the kernel does, from its backlog) and never
    sends a byte: a hung server, or a port forward to nothing."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


def test_export_to_a_server_that_never_answers_fails_in_seconds_on_one_line(night: Path) -> None:
    """It used to cost MLflow's client two minutes (30 s a try, three retries) before failing."""
    with _silent_server() as uri:
        started = time.monotonic()
        res = nightlab("export", str(night), "--to", "mlflow", "-o", f"tracking_uri={uri}", timeout=SECONDS)
        took = time.monotonic() - started
    assert took < 15, f"{took:.1f} s"  # the probe's 5 s and the start-up
    assert res.returncode == 2  # the address is the user's to fix, as for a server that is down
    line = _one_line(res.stderr)
    assert line.startswith(
        f"error: mlflow: cannot reach the tracking server {uri} (it accepts connections but sent no "
        "answer within 5 s): "
    ), line
    assert "MLFLOW_TRACKING_URI" in line


def test_an_unknown_option_names_the_option_not_the_file(night: Path) -> None:
    res = nightlab("export", str(night), "--to", "mlflow", "-o", "bogus=1")
    assert res.returncode == 2
    line = _one_line(res.stderr)
    assert line.startswith("error: -o mlflow.bogus: the mlflow tracker has no setting 'bogus'")
    assert "nightlab.toml" not in line
    res = nightlab("export", str(night), "--to", "mlflow", "-o", "tracking_ur=x")
    assert "did you mean 'tracking_uri'?" in _one_line(res.stderr)


def test_sigterm_during_export_says_the_export_stopped(night: Path) -> None:
    with socket.socket() as silent:  # accepts (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "nightlab.cli", "export", str(night), "--to", "mlflow"],
            env={**os.environ, "MLFLOW_TRACKING_URI": uri},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(4)  # past start-up, into the request the server never answers
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=SECONDS)
    assert proc.returncode == 128 + signal.SIGTERM
    line = _one_line(stderr)
    assert line.startswith("interrupted (SIGTERM): the export stopped")
    assert "training" not in line


def test_a_live_tracker_that_is_down_neither_stops_nor_holds_up_the_run(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    root = make_workspace(tmp_path / "ws", proposals=PROPOSALS)
    toml = root / "nightlab.toml"
    toml.write_text(
        toml.read_text() + f'[trackers]\nlive = ["mlflow"]\n[trackers.mlflow]\ntracking_uri = "{uri}"\n'
    )
    git(root, "commit", "-qam", "live mlflow")
    started = time.monotonic()
    res = nightlab("run", str(root), "--plain", timeout=SECONDS * 2)
    assert time.monotonic() - started < 60
    assert res.returncode == 0, res.stderr
    assert "kept" in res.stdout or "discarded" in res.stdout  # the research went on
    warnings = [line for line in res.stderr.splitlines() if "mlflow" in line]
    assert len(warnings) == 1, res.stderr  # one line however many passes failed
    assert warnings[0].startswith(f"warning: mlflow: cannot reach the tracking server {uri}")
    assert "Traceback" not in res.stderr


def test_a_live_tracker_that_never_answers_neither_stops_nor_holds_up_the_run(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=PROPOSALS)
    with _silent_server() as uri:
        toml = root / "nightlab.toml"
        toml.write_text(
            toml.read_text() + f'[trackers]\nlive = ["mlflow"]\n[trackers.mlflow]\ntracking_uri = "{uri}"\n'
        )
        git(root, "commit", "-qam", "live mlflow")
        started = time.monotonic()
        res = nightlab("run", str(root), "--plain", timeout=SECONDS * 2)
        took = time.monotonic() - started
    assert took < 45, f"{took:.1f} s"  # the end waits for the last pass at most 30 s
    assert res.returncode == 0, res.stderr
    assert "kept" in res.stdout or "discarded" in res.stdout  # the research went on
    warnings = [line for line in res.stderr.splitlines() if "mlflow" in line]
    assert len(warnings) == 1, res.stderr  # one line however many passes failed
    assert warnings[0].startswith(f"warning: mlflow: cannot reach the tracking server {uri} (it accepts")
    assert "still sending" not in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("file:///{tmp}/mlruns", "filesystem tracking backend"),  # MLflow 3 refuses a file store
        ("sqlite:////proc/nowhere/mlflow.db", "No such file or directory"),
    ],
)
def test_a_store_the_client_refuses_is_one_line_naming_it(tmp_path: Path, uri: str, says: str) -> None:
    """`export --to mlflow -o tracking_uri=file:///tmp/mlruns` printed MLflow's traceback (a
    hundred lines) and exited 1: the client refused the store as it was built."""
    from nightlab.errors import UserError
    from nightlab.store.trackers.mlflow import MlflowSettings, MlflowTracker
    from nightlab.store.trackers.registry import TrackerTarget

    uri = uri.format(tmp=str(tmp_path).lstrip("/"))
    with pytest.raises(UserError) as caught:
        MlflowTracker(MlflowSettings(tracking_uri=uri), TrackerTarget(tmp_path, tmp_path / ".nightlab"))
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"mlflow: cannot open the tracking store {uri} ("), line
    assert says in line and "sqlite:///PATH/mlflow.db" in line
    assert ("MLFLOW_ALLOW_FILE_STORE=true" in line) == uri.startswith("file:")
