"""`nightlab serve` and `nightlab export` from the command line: what they print, how they fail."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import edit, make_workspace, nightlab
from nightlab.cli.watch import is_loopback


def _serve(root: Path, *args: str) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nightlab.cli", "serve", str(root), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(line.startswith("Ctrl-C") for line in lines):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
    return proc, lines


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return out


def test_serve_prints_the_address_and_a_fresh_token_and_stops_cleanly(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3", "LR 0.3")])
    proc, lines = _serve(root)  # before any run: it waits for the ledger
    try:
        text = "\n".join(lines)
        base = re.search(
            r"dashboard: (http://127\.0\.0\.1:\d+/)  \(read-only without the token\)", text
        ).group(1)
        token = re.search(r"^token: (\S+)", text, re.M).group(1)
        assert len(token) >= 24 and f"open with control: {base}?token={token}" in text
        state = json.loads(urllib.request.urlopen(base + "api/state", timeout=10).read())
        assert state["experiments"] == [] and state["ledger"] is False
        assert nightlab("run", str(root), "--plain").returncode == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(state["experiments"]) < 2:
            time.sleep(0.2)
            state = json.loads(urllib.request.urlopen(base + "api/state", timeout=10).read())
        assert [e["outcome"] for e in state["experiments"]] == ["baseline", "kept"]
    finally:
        out = _stop(proc)
    assert proc.returncode == 0 and out.strip().endswith("dashboard stopped")
    assert "Traceback" not in out and token not in out  # no access log line carrying the token


def test_serve_beyond_loopback_says_reading_needs_the_token(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    proc, lines = _serve(root, "--host", "0.0.0.0", "--token", "a-long-enough-token-0123")
    try:
        text = "\n".join(lines)
        assert "listens beyond this machine, so every request needs the token, reading too" in text
        port = re.search(r"http://0\.0\.0\.0:(\d+)/", text).group(1)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=10)
            raise AssertionError("read without the token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        ok = urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/state?token=a-long-enough-token-0123", timeout=10
        )
        assert ok.status == 200
    finally:
        _stop(proc)


def test_serve_usage_errors_are_one_line(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    expected = (
        "error: --token (or NIGHTLAB_DASHBOARD_TOKEN): use at least 16 characters (or leave it out for a "
        "random one)"
    )
    res = nightlab("serve", str(root), "--token", "short")
    assert res.returncode == 2 and res.stderr.strip() == expected
    # The same token from the environment: the message names where else it may have come from.
    res = nightlab("serve", str(root), env={"NIGHTLAB_DASHBOARD_TOKEN": "short"})
    assert res.returncode == 2 and res.stderr.strip() == expected
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = nightlab("serve", str(root), "--port", str(port))
    assert res.returncode == 2 and res.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert len(res.stderr.strip().splitlines()) == 1
    res = nightlab("serve", str(tmp_path / "nowhere"))
    assert res.returncode == 2 and "no such directory" in res.stderr


def test_report_html_prints_a_file_address(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3", "LR 0.3")])
    assert nightlab("run", str(root), "--plain").returncode == 0
    out = tmp_path / "mail" / "night.html"
    res = nightlab("report", str(root), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert f"open: {out.resolve().as_uri()}" in res.stdout
    assert out.read_text().startswith("<!doctype html>") and (root / ".nightlab" / "report.html").is_file()


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "::", "example.org"))


def test_serve_and_export_name_a_corrupt_ledger_as_status_does(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    (root / ".nightlab").mkdir()
    (root / ".nightlab" / "ledger.db").write_text("not a database\n")  # a traceback before
    expected = f"error: ledger {root}/.nightlab/ledger.db is corrupt (file is not a database): rebuild it"
    for args in (
        ["serve", str(root), "--port", "0"],
        ["export", str(root), "--to", "mlflow"],
        ["status", str(root)],
    ):
        res = nightlab(*args, timeout=60)
        assert res.returncode == 2 and res.stderr.startswith(expected), (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, (args, res.stderr)


def test_serve_says_when_the_tag_it_shows_has_no_experiments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve --tag nosuch` (a typo) served an empty dashboard without a word; it still serves
    it (a night may start after the page is open), with one note naming the tags there are."""
    from helpers import record_timed_runs
    from nightlab.cli.watch import _workspace

    root = make_workspace(tmp_path / "ws")
    (root / ".nightlab").mkdir()
    record_timed_runs(root / ".nightlab" / "ledger.db")
    assert _workspace(root, "nosuch", strict=False)[2] == "nosuch"
    assert capsys.readouterr().err.splitlines() == [
        "note: no experiments under tag 'nosuch' yet (tags: t); the dashboard shows them once "
        "`nightlab run --tag nosuch` starts"
    ]
    assert _workspace(root, "t", strict=False)[2] == "t"
    assert capsys.readouterr().err == ""
