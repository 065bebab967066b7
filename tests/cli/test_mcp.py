"""`nightlab mcp`: the official SDK's client spawns the server over stdio and does research with it."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from helpers import make_workspace

LR_OLD = "LR = 0.1  # learning rate: best at 0.3"
LR_NEW = "LR = 0.3  # learning rate: best at 0.3"


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def is_error(result) -> bool:
    return bool(getattr(result, "is_error", None) or getattr(result, "isError", None))


def data_of(result):
    """A tool's structured result, whichever way the SDK version hands it over."""
    structured = getattr(result, "structuredContent", None) or getattr(result, "structured_content", None)
    if structured is not None:
        return structured.get("result", structured)
    return json.loads(text_of(result))


async def session_run(root: Path, steps, *options: str) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "nightlab.cli", "mcp", str(root), *options],
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")},
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await steps(session)


@pytest.mark.slow
def test_an_mcp_client_reads_the_state_runs_experiments_and_reads_the_report(tmp_path):
    root = make_workspace(tmp_path / "ws")
    seen: dict = {}

    async def steps(session: ClientSession) -> None:
        tools = await session.list_tools()
        seen["tools"] = sorted(t.name for t in tools.tools)
        seen["state"] = data_of(await session.call_tool("state", {}))
        seen["file"] = text_of(await session.call_tool("read_file", {"path": "train.py"}))
        seen["frozen"] = await session.call_tool("read_file", {"path": "evaluate.py"})
        seen["keep"] = text_of(
            await session.call_tool(
                "run_experiment",
                {
                    "description": "LR 0.1 -> 0.3",
                    "hypothesis": "LR is below its optimum",
                    "edits": [{"path": "train.py", "search": LR_OLD, "replace": LR_NEW}],
                },
            )
        )
        whole = seen["file"].replace(LR_OLD, LR_NEW).replace("WIDTH = 64 ", "WIDTH = 4 ")
        seen["discard"] = text_of(
            await session.call_tool(
                "run_experiment",
                {"description": "WIDTH 64 -> 4", "edits": [{"path": "train.py", "content": whole}]},
            )
        )
        seen["outside"] = text_of(
            await session.call_tool(
                "run_experiment",
                {"description": "cheat", "edits": [{"path": "evaluate.py", "content": "print(0)\n"}]},
            )
        )
        seen["history"] = data_of(await session.call_tool("history", {"limit": 10}))
        seen["best_file"] = text_of(await session.call_tool("read_file", {"path": "train.py"}))
        seen["report"] = text_of(await session.call_tool("report", {}))

    anyio.run(session_run, root, steps)

    assert seen["tools"] == ["history", "read_file", "report", "run_experiment", "state"]
    state = seen["state"]
    assert state["metric"] == "val_loss" and state["direction"] == "minimize"
    assert state["best"]["id"] == 1 and state["noise_sd"] is not None  # the baseline ran first
    assert state["editable"] == ["train.py"]
    assert LR_OLD in seen["file"]
    assert is_error(seen["frozen"]) and "not an editable file" in text_of(seen["frozen"])

    assert seen["keep"].startswith("---\n") and re.search(r"^decision:\s+keep$", seen["keep"], re.M)
    assert re.search(r"^improvement:\s+\+0\.4", seen["keep"], re.M)  # > 0 is better
    assert re.search(r"^delta:\s+-0\.4", seen["keep"], re.M)  # val_loss went down: the sign of Δ
    assert re.search(r"^decision:\s+discard$", seen["discard"], re.M)
    assert (
        re.search(r"^decision:\s+invalid$", seen["outside"], re.M)
        and "evaluate.py is frozen" in seen["outside"]
    )
    assert [(h["description"], h["decision"]) for h in seen["history"]] == [
        ("baseline", "baseline"),
        ("LR 0.1 -> 0.3", "keep"),
        ("WIDTH 64 -> 4", "discard"),
        ("cheat", "invalid"),
    ]
    assert LR_NEW in seen["best_file"] and "WIDTH = 64 " in seen["best_file"]
    assert "Kept changes" in seen["report"] and "LR 0.1 -> 0.3" in seen["report"]

    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    agents = [r[0] for r in con.execute("SELECT agent FROM experiments WHERE kind = 'candidate' ORDER BY id")]
    con.close()
    assert agents == ["mcp", "mcp", "mcp"]
    assert (root / "train.py").read_text().count(LR_OLD) == 1  # the user's files are never written


def test_tool_argument_errors_are_one_line_naming_the_argument(tmp_path):
    root = make_workspace(tmp_path / "ws")
    calls = {
        "no path": ("read_file", {}),
        "path a number": ("read_file", {"path": 5}),
        "long path": ("read_file", {"path": "x" * 100_000}),
        "no arguments": ("run_experiment", {}),
        "edits a string": ("run_experiment", {"description": "d", "edits": "LR=0.2"}),
        "edit a string": ("run_experiment", {"description": "d", "edits": ["x"]}),
        "limit a word": ("history", {"limit": "abc"}),
        "limit negative": ("history", {"limit": -1}),
        "limit zero": ("history", {"limit": 0}),
    }
    seen: dict = {}

    async def steps(session: ClientSession) -> None:
        for label, (tool, arguments) in calls.items():
            seen[label] = await session.call_tool(tool, arguments)

    anyio.run(session_run, root, steps)

    for label, result in seen.items():
        text = text_of(result)
        assert is_error(result), label
        assert "\n" not in text.strip() and "pydantic" not in text and len(text) < 300, (label, text)
    assert text_of(seen["no path"]).endswith(
        "read_file: 'path' is missing (the tool's input schema lists its arguments)"
    )
    assert "read_file: 'path' should be a string" in text_of(seen["path a number"])
    assert "xxx... (100000 characters) is not an editable file (editable: train.py)" in text_of(
        seen["long path"]
    )
    assert "run_experiment: 'description' is missing; 'edits' is missing" in text_of(seen["no arguments"])
    assert "'edits' should be a list" in text_of(seen["edits a string"])
    assert "'edits.0' should be an object" in text_of(seen["edit a string"])
    assert "history: 'limit' should be a whole number" in text_of(seen["limit a word"])
    assert "history: limit -1: give 1 or more" in text_of(seen["limit negative"])
    assert "history: limit 0: give 1 or more" in text_of(seen["limit zero"])
    assert not (root / ".nightlab" / "runs").exists()  # no argument error cost a baseline


def test_a_tag_becomes_the_last_used_only_once_something_is_recorded_under_it(tmp_path):
    root = make_workspace(tmp_path / "ws")
    tags: list[str] = []

    async def state(session: ClientSession) -> None:
        tags.append(data_of(await session.call_tool("state", {}))["tag"])

    async def nothing(session: ClientSession) -> None:
        await session.list_tools()

    anyio.run(session_run, root, state, "--tag", "first")  # its baseline is recorded
    anyio.run(session_run, root, nothing, "--tag", "typo")  # opened and left: nothing recorded
    anyio.run(session_run, root, state)  # no --tag: the last used
    assert tags == ["first", "first"]
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    recorded = {r[0] for r in con.execute("SELECT DISTINCT tag FROM experiments")}
    current = con.execute("SELECT value FROM meta WHERE key = 'current_tag'").fetchone()[0]
    con.close()
    assert recorded == {"first"} and current == "first"


def test_a_report_asked_first_and_a_path_with_control_characters_are_answered_in_one_clean_line(tmp_path):
    """In-process (no stdio): `report` before anything else told an MCP client to run `nightlab
    run`; a path holding a NUL or an escape sequence was echoed raw into the error."""
    from nightlab.cli.mcp import Harness
    from nightlab.errors import UserError

    harness = Harness(make_workspace(tmp_path / "ws"))
    assert harness.report().endswith(
        "no baseline yet; the first call of state, read_file, history or run_experiment measures it"
    )
    for path in ("train.py\x00", "\x1b[31mtrain.py"):
        with pytest.raises(UserError) as caught:
            harness.read_file(path)
        assert str(caught.value).startswith(f"{path!r} is not an editable file"), caught.value
    assert not (tmp_path / "ws" / ".nightlab" / "runs").exists()  # nothing trained


def test_a_request_the_sdk_cannot_read_gets_an_error_reply_with_its_id(tmp_path):
    """Raw stdio: the SDK's transport dropped a request holding a lone surrogate escape (valid
    JSON, not Unicode) without a reply, so a client waited on its id forever; a line that is not
    JSON got no parse error either. The server keeps answering afterwards."""
    import subprocess
    import threading

    root = make_workspace(tmp_path / "ws")
    server = subprocess.Popen(
        [sys.executable, "-m", "nightlab.cli", "mcp", str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")},
    )
    replies: dict = {}

    def read() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            message = json.loads(line)
            replies[message.get("id")] = message
            if message.get("id") == 9:
                return

    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    lines = [
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}),
        json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        '{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"\\ud800"}}}',
        "not json",
        '{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"\\udfff"}}',
        json.dumps({"jsonrpc": "2.0", "id": 9, "method": "ping"}),
    ]
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert server.stdin is not None
    server.stdin.write("".join(line + "\n" for line in lines).encode())
    server.stdin.flush()
    reader.join(20)
    server.stdin.close()
    server.wait(20)

    assert 9 in replies, replies  # still answering
    assert replies[5]["error"]["code"] == -32700
    assert "lone surrogate escape" in replies[5]["error"]["message"]
    assert replies[None]["error"]["message"].startswith("Parse error: the line is not JSON")
    assert set(replies) == {1, 5, None, 9}  # the notification got no reply


def test_unreadable_lines_and_their_replies():
    from nightlab.cli.mcp import unreadable_reply

    assert unreadable_reply('{"jsonrpc":"2.0","id":3,"method":"ping"}') is None
    assert unreadable_reply('{"jsonrpc":"2.0","method":"x","params":{"a":"\\ud800"}}') is None
    assert unreadable_reply('{"jsonrpc":"2.0","id":"a","method":"ping","params":{"\\ud800":1}}')["id"] == "a"
    assert unreadable_reply('{"jsonrpc":"2.0","id":4,"method":7}')["error"]["code"] == -32600
    assert unreadable_reply('{"jsonrpc":"2.0","method":"ping","params":7}') is None  # a notification
    assert unreadable_reply("[1, 2")["error"]["code"] == -32700


def test_an_editable_file_that_is_not_utf8_is_a_one_line_tool_error_not_a_dead_server(tmp_path):
    """read_file of a Latin-1 train.py (with its coding line, so it runs) handed the SDK a lone
    surrogate it could not serialize: the server died with a traceback, the call unanswered."""
    from helpers import git
    from nightlab.cli.mcp import Harness, ToolError, _guard
    from nightlab.errors import UserError

    root = make_workspace(tmp_path / "ws")
    train = (root / "train.py").read_bytes().replace(b"# learning rate", b"# caf\xe9 learning rate")
    (root / "train.py").write_bytes(b"# -*- coding: latin-1 -*-\n" + train)
    git(root, "commit", "-qam", "latin-1")
    with pytest.raises(UserError) as caught:
        Harness(root).read_file("train.py")
    assert str(caught.value) == (
        "train.py is not UTF-8 text (byte 0xe9 on line 3): MCP carries UTF-8 only; convert the file to "
        "UTF-8 and commit it"
    )
    with pytest.raises(ToolError, match="the answer holds text that is not UTF-8"):
        _guard(lambda: {"description": "caf\udce9"})
