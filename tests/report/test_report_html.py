"""The HTML report: written by `nightlab report`, self-contained, escaped, and free of secrets."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import edit, make_workspace, nightlab
from nightlab.report.dashboard.page import unpacked_details


def test_report_html_is_self_contained_escaped_and_redacted(tmp_path: Path) -> None:
    planted = "sk-planted-html-0123456789"
    root = make_workspace(
        tmp_path / "ws",
        proposals=[
            edit("LR = 0.1", "LR = 0.3", "<script>alert(1)</script> LR 0.3"),
            edit("WIDTH = 64", "WIDTH = 8", f"WIDTH 8 {planted}"),
        ],
    )
    env = {"OPENAI_API_KEY": planted}
    assert nightlab("run", str(root), "--plain", env=env).returncode == 0
    res = nightlab("report", str(root), env=env)
    assert res.returncode == 0, res.stderr
    page = (root / ".nightlab" / "report.html").read_text()
    assert "data:image/png;base64," in page  # the plot is inlined
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; LR 0.3" in page
    assert planted not in page and "[redacted]" in page
    data = json.loads(page.split('<script id="data" type="application/json">')[1].split("</script>")[0])
    assert [e["id"] for e in data["snapshot"]["experiments"]] == [1, 2, 3]  # baseline and two candidates
    details = unpacked_details(data["details_gz"])  # packed: 1/10 of the page at 10,000 experiments
    assert sorted(details) == ["1", "2", "3"] and "+LR = 0.3" in details["2"]["diff"]
    assert planted not in json.dumps(details) and "[redacted]" in details["3"]["description"]
    assert "report: " in res.stdout


def test_report_out_elsewhere_embeds_the_workspaces_plot_not_a_file_beside_it(tmp_path: Path) -> None:
    import base64

    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")])
    assert nightlab("run", str(root), "--plain").returncode == 0
    elsewhere = tmp_path / "shared"
    elsewhere.mkdir()
    stranger = b"\x89PNG not this workspace's plot"
    (elsewhere / "progress.png").write_bytes(stranger)
    res = nightlab("report", str(root), "--out", str(elsewhere / "night.html"))
    assert res.returncode == 0, res.stderr
    page = (elsewhere / "night.html").read_text()
    ours = base64.b64encode((root / ".nightlab" / "progress.png").read_bytes()).decode()
    assert ours in page and base64.b64encode(stranger).decode() not in page


def test_report_out_into_a_pipe_writes_into_it_and_never_replaces_it(tmp_path: Path) -> None:
    # `--out /dev/null` replaced the machine's /dev/null by a regular file (found in review: every
    # later `> /dev/null` then wrote into it); a FIFO stands for any file that is not a regular one.
    import os
    import stat
    import threading

    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")])
    assert nightlab("run", str(root), "--plain").returncode == 0
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    reader.start()
    res = nightlab("report", str(root), "--out", str(pipe))
    reader.join(timeout=30)
    assert res.returncode == 0, res.stderr
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)  # still the pipe
    assert got and b"<html" in got[0][:500].lower(), got[:1]
    assert not list(tmp_path.glob(".pipe*"))


def test_report_out_dash_is_the_page_on_stdout_and_an_empty_out_is_refused(tmp_path: Path) -> None:
    """`--out -` wrote a file named "-" into the current folder; `--out /dev/stdout` into a pipe
    said "No such file or directory" (resolved to /proc/PID/fd/pipe:[N]); `--out ""` read as the
    current folder ("--out .: is a folder"). Now: the page alone on stdout, the summary on
    stderr, and an empty value is one usage line."""
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")])
    assert nightlab("run", str(root), "--plain").returncode == 0
    for out in ("-", "/dev/stdout"):
        res = nightlab("report", str(root), "--out", out, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("<!doctype html>") and res.stdout.rstrip().endswith("</html>"), out
        assert res.stdout.count("<!doctype html>") == 1 and "results: " not in res.stdout
        assert "Baseline" in res.stderr and "results: " in res.stderr
    assert not (tmp_path / "-").exists()
    empty = nightlab("report", str(root), "--out", "", cwd=tmp_path)
    lines = empty.stderr.strip().splitlines()
    assert empty.returncode == 2 and empty.stdout == "" and "Traceback" not in empty.stderr
    assert lines[0].startswith("error: ") and "'--out'" in lines[0] and "empty" in lines[0], lines


def test_report_out_dash_on_a_terminal_is_refused(tmp_path: Path) -> None:
    """130 kB of HTML onto a screen is never what `--out -` at a terminal meant: one line."""
    import os
    import pty
    import subprocess
    import sys

    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")])
    assert nightlab("run", str(root), "--plain").returncode == 0
    main, child = pty.openpty()
    try:
        res = subprocess.run(
            [sys.executable, "-m", "nightlab.cli", "report", str(root), "--out", "-"],
            stdout=child,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            text=True,
            timeout=120,
        )
        os.set_blocking(main, False)
        try:
            shown = os.read(main, 65536)
        except BlockingIOError:
            shown = b""
    finally:
        os.close(main)
        os.close(child)
    assert res.returncode == 2 and b"<html" not in shown.lower(), shown[:200]
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith("error: --out -: standard output is a terminal"), line
