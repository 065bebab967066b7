"""``nightlab mcp``: the harness as an MCP server over stdio, so any MCP client can do research.

Claude Code, Codex or an IDE connects, reads the state, the history and the best code, and asks
for experiments; nightlab trains, evaluates, decides and records each one exactly as in
``nightlab run``. The client never touches the working tree: an experiment is a set of edits
(SEARCH/REPLACE pairs or whole files) applied to the incumbent of the research branch.

stdout carries the protocol, so nothing here prints; progress goes to stderr.

Every error a client gets is one line it can act on, as a model reads it: arguments that do not
match a tool's schema name the argument and what it takes (not the SDK's pydantic dump with its
links), and what a client sent is echoed only in short (:data:`MAX_ECHO`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nightlab.agents.base import bounded_hypothesis
from nightlab.errors import UserError
from nightlab.executor.process import RunInterrupted
from nightlab.paths import is_editable, normalize
from nightlab.research.session import Session
from nightlab.types import Edit, Proposal

try:  # mcp 2.x renamed FastMCP to MCPServer
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError:  # pragma: no cover - mcp 1.x
    from mcp.server.fastmcp import FastMCP as MCPServer
    from mcp.server.fastmcp.exceptions import ToolError

# The most characters of a client's input quoted back in an error.
MAX_ECHO = 80
# What an argument of each pydantic error type should be, in a model's words.
EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "list_type": "a list",
    "dict_type": "an object",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}

INSTRUCTIONS = """\
nightlab runs machine-learning experiments for you under a fixed budget and keeps a change only
when it beats the best so far by more than the measured noise. Call `state` and `history`, read
the editable files with `read_file`, then call `run_experiment` with one focused change and a
one-line description; read its decision and start the next idea from the best code. Edits apply
to the best code (the incumbent), never to files on disk; frozen files cannot change."""


class Harness:
    """The session and loop behind the tools; one experiment at a time."""

    def __init__(self, root: Path, tag: str | None = None) -> None:
        from nightlab.events import EventSink
        from nightlab.research.tryrun import open_harness

        events = EventSink()
        events.subscribe(_stderr_printer)
        # check_clean=False: experiments are built from commits, the user's tree is never read.
        self.session, self.loop = open_harness(root, tag, "mcp", events=events, check_clean=False)
        self._lock = threading.Lock()
        self._prepared = False
        # What trains now (a tool call holding the lock), and whether the client has gone.
        self.training: str | None = None
        self.disconnected = False
        self.stopped: str | None = None  # what disconnect() stopped

    def disconnect(self) -> None:
        """The client closed the connection (its end of stdin): nobody will read what a run in
        flight returns, so it is stopped with its processes, as Ctrl-C stops it. Its experiment
        stays unfinished in the ledger, every run recorded before it intact: ``status`` shows it
        interrupted and the next ``nightlab run`` (or ``mcp``) repeats it. Called from the event
        loop's thread while a tool may hold the lock on a worker thread."""
        self.disconnected = True
        stop = getattr(getattr(self.loop.runner, "executor", None), "stop", None)
        training = self.training
        if stop is not None and training is not None:
            self.stopped = training
            stop()

    def _unprepared(self) -> str | None:
        """What a question trains: the baseline when it is not measured yet, else nothing."""
        return None if self._prepared else "the baseline"

    @contextlib.contextmanager
    def _busy(self, what: str | None) -> Iterator[None]:
        """The lock, with what it trains named for :meth:`disconnect` and the last line."""
        with self._lock:
            if self.disconnected:  # a call the client sent just before it went: nobody reads it
                raise UserError("the client has disconnected")
            self.training = what
            try:
                yield
            finally:
                self.training = None

    def _prepare(self) -> None:
        """The baseline (on a new tag) before the first experiment or the first question about it."""
        if not self._prepared:
            self.loop.prepare()
            self._prepared = True

    def state(self) -> dict:
        from nightlab.research.tryrun import state_dict

        with self._busy(self._unprepared()):
            self._prepare()
            return state_dict(self.session)

    def read_file(self, path: str) -> str:
        clean = _editable(self.session, path)  # before the baseline: a wrong path costs nothing
        with self._busy(self._unprepared()):
            self._prepare()
            best = self.session.ledger.incumbent(self.session.tag)
            assert best is not None and best.commit is not None
            texts = self.session.workspace.read_files(best.commit, [clean], missing_ok=True)
            if clean not in texts:
                raise UserError(f"{clean} does not exist in the best code (#{best.id})")
            return _utf8_text(clean, texts[clean])

    def history(self, limit: int) -> list[dict]:
        from nightlab.research.tryrun import history_rows

        if limit < 1:
            raise UserError(
                f"history: limit {limit}: give 1 or more, the number of recent experiments to show"
            )
        with self._busy(self._unprepared()):
            self._prepare()
            return history_rows(self.session, limit)

    def run_experiment(self, description: str, edits: list[dict[str, Any]], hypothesis: str) -> str:
        from nightlab.research.tryrun import result_block

        if not description.strip():
            raise UserError("run_experiment: give a one-line description of the change")
        if not edits:
            raise UserError(
                "run_experiment: give at least one edit ({path, search, replace} or {path, content})"
            )
        proposal = Proposal(
            description=description.strip(),
            hypothesis=bounded_hypothesis(hypothesis),
            edits=[_edit(e, i) for i, e in enumerate(edits, 1)],
            meta={"source": "mcp"},
        )
        with self._busy(f"the experiment '{shorten(proposal.description)}'"):
            self._prepared = True  # run_one prepares itself
            row = self.loop.run_one(proposal)
            return result_block(self.session, row)

    def report(self) -> str:
        from nightlab.report.summary import render_summary

        with self._lock:
            cfg = self.session.config
            if (
                self.session.ledger.incumbent(self.session.tag) is None
            ):  # the summary would say `nightlab run`
                return (
                    f"nightlab {self.session.tag}: no baseline yet; the first call of state, read_file, "
                    "history or run_experiment measures it"
                )
            return render_summary(
                self.session.ledger, self.session.tag, cfg.metric.name, cfg.metric.direction
            )


def _editable(session: Session, path: str) -> str:
    editable = session.config.target.editable
    if len(path) > MAX_ECHO:  # no file of a workspace is named like this: say so without echoing it
        raise UserError(f"{shorten(path)} is not an editable file (editable: {', '.join(editable)})")
    try:
        clean = normalize(path)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not is_editable(clean, editable, session.config.target.frozen):
        shown = clean if clean.isprintable() else repr(clean)  # a NUL or an escape sequence, quoted
        raise UserError(f"{shown} is not an editable file (editable: {', '.join(editable)})")
    return clean


def _edit(data: dict[str, Any], number: int) -> Edit:
    """One edit from the client: ``{path, search, replace}`` or a whole file ``{path, content}``."""
    if not isinstance(data, dict) or not isinstance(data.get("path"), str):
        raise UserError(f"edit {number}: needs a 'path' and either 'search'+'replace' or 'content'")
    if isinstance(data.get("content"), str):
        return Edit(path=data["path"], replace=data["content"])
    if isinstance(data.get("search"), str) and isinstance(data.get("replace"), str):
        return Edit(path=data["path"], search=data["search"], replace=data["replace"])
    raise UserError(
        f"edit {number} ({shorten(data['path'])}): give 'search' and 'replace', or 'content' for a whole file"
    )


def shorten(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` as an error quotes it: whole when short, else its start and its length."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}... ({len(text)} characters)"


def argument_error(tool: str, exc: ValidationError) -> str:
    """A tool's arguments that fail its schema, as one line naming each argument and what it takes."""
    problems = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error.get("loc", ())) or "arguments"
        kind = str(error.get("type", ""))
        if kind == "missing":
            problems.append(f"'{name}' is missing")
            continue
        expected = EXPECTED.get(kind) or str(error.get("msg", "invalid")).removeprefix("Input should be ")
        problems.append(f"'{name}' should be {expected}")
    return f"{tool}: {'; '.join(problems)} (the tool's input schema lists its arguments)"


def _stderr_printer(event) -> None:
    if event.kind in ("run", "run_done", "decision", "resume"):
        from nightlab.formatting import terminal_safe  # stderr is often the user's terminal

        print(f"nightlab: {terminal_safe(event.message)}", file=sys.stderr, flush=True)


def build_server(root: Path, tag: str | None = None) -> MCPServer:
    """The MCP server with its five tools, bound to the workspace at ``root``."""
    harness = Harness(root, tag)
    server = _Server("nightlab", instructions=INSTRUCTIONS)
    server.harness = harness  # serve() stops what it trains when the client disconnects

    @server.tool()
    async def state() -> dict:
        """The research state: metric and direction, the best so far, the noise floor (sd of one
        run), experiments done and left, the training budget per run, editable and frozen files."""
        return await _off_loop(harness.state)

    @server.tool()
    async def read_file(path: str) -> str:
        """The current best version of an editable file (e.g. train.py): edit against this text."""
        return await _off_loop(lambda: harness.read_file(path))

    @server.tool()
    async def history(limit: int = 50) -> list[dict]:
        """Finished experiments, oldest first: description, metric, improvement over the best of the
        time (> 0 is better), runs, status, decision and reason. `limit` (1 or more) keeps the most
        recent."""
        return await _off_loop(lambda: harness.history(limit))

    @server.tool()
    async def run_experiment(description: str, edits: list[dict[str, Any]], hypothesis: str = "") -> str:
        """Train, evaluate and decide one experiment (this takes the training budget, or more when
        the policy asks for confirmation runs). `edits` apply to the best code, in order: each is
        {"path", "search", "replace"} (search must match exactly one place) or {"path", "content"}
        (the whole new file). Only editable files. Returns the result block: metric, delta (> 0 is
        better), decision (keep/discard/crash/invalid), reason, experiment id, commit."""
        return await _off_loop(lambda: harness.run_experiment(description, edits, hypothesis))

    @server.tool()
    async def report() -> str:
        """The research summary: baseline, best, improvement, noise floor, the kept changes."""
        return await _off_loop(harness.report)

    return server


class _Server(MCPServer):
    """The SDK's server, with arguments that fail a tool's schema reported in one line."""

    harness: Harness

    async def call_tool(self, name: str, arguments: dict[str, Any], *rest: Any, **options: Any) -> Any:
        try:
            return await super().call_tool(name, arguments, *rest, **options)
        except ToolError as exc:
            cause = exc.__cause__
            if type(exc) is ToolError and isinstance(cause, ValidationError):
                raise ToolError(argument_error(name, cause)) from cause
            raise


def _utf8_text(path: str, text: str) -> str:
    """A file's text as MCP can carry it: git hands bytes that are not UTF-8 over as lone
    surrogates, which the SDK could not serialize (the server died with a traceback)."""
    bad = next((i for i, c in enumerate(text) if "\udc80" <= c <= "\udcff"), None)
    if bad is None:
        return text
    line = text.count("\n", 0, bad) + 1
    byte = ord(text[bad]) - 0xDC00
    raise UserError(
        f"{path} is not UTF-8 text (byte 0x{byte:02x} on line {line}): MCP carries UTF-8 only; "
        "convert the file to UTF-8 and commit it"
    )


async def _off_loop(call):
    """:func:`_guard` of ``call`` on a worker thread. The tools are async so that no SDK version
    runs them on the event loop (mcp 1.x called a sync tool there): the loop keeps reading
    stdin while an experiment trains, so a client that disconnects is noticed at once
    (:meth:`Harness.disconnect`), not when the run has trained its whole budget."""
    import anyio

    return await anyio.to_thread.run_sync(_guard, call)


def _guard(call):
    """A user error becomes a tool error with its one-line message (the client shows it to the model)."""
    try:
        result = call()
    except UserError as exc:
        raise ToolError(str(exc)) from None
    except RunInterrupted:  # the client disconnected (Harness.disconnect): an answer nobody reads
        raise ToolError("the run was stopped: the client disconnected") from None
    try:  # what the SDK will serialize: a lone surrogate anywhere would end the server
        json.dumps(result, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ToolError("the answer holds text that is not UTF-8 and cannot be sent") from None
    return result


def serve(root: Path, tag: str | None = None) -> None:
    """Serve over stdio until the client disconnects; what trains then is stopped (one line on
    stderr says what, and that `nightlab run` repeats it)."""
    import anyio

    server = build_server(root, tag)
    harness: Harness = server.harness
    anyio.run(_serve_stdio, server)
    if harness.stopped is not None:
        print(
            f"nightlab mcp: the client disconnected while {harness.stopped} was training; it was stopped "
            "with its processes, every run recorded before stays in the ledger, and `nightlab run` "
            "repeats it",
            file=sys.stderr,
            flush=True,
        )


async def _serve_stdio(server: MCPServer) -> None:
    """The SDK's stdio transport, reading through :class:`_Lines`: the SDK drops a line it cannot
    read without a reply, so a client waiting on that request's id would wait forever."""
    import anyio
    from mcp.server.stdio import stdio_server

    # The wire is read from a copy of fd 0, and fd 0 itself becomes the null device (as the SDK
    # does when it reads stdin itself): a git or training process started meanwhile must not
    # read the client's messages.
    wire = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    harness = getattr(server, "harness", None)
    lines = _Lines(
        anyio.wrap_file(os.fdopen(wire, "rb", closefd=False)),
        on_eof=harness.disconnect if harness is not None else None,
    )
    low = getattr(server, "_lowlevel_server", None) or server._mcp_server  # mcp 2.x, 1.x
    try:
        async with stdio_server(stdin=lines) as (read_stream, write_stream):  # type: ignore[arg-type]
            lines.replies = write_stream
            lines.ready.set()
            await low.run(read_stream, write_stream, low.create_initialization_options())
    finally:
        os.dup2(wire, 0)


class _Lines:
    """stdin's lines for the SDK; a line it would drop gets a JSON-RPC error reply instead.

    A request holding a lone surrogate escape (``"\\ud800"``, valid JSON that is not Unicode) or
    a shape the SDK rejects is answered with an error carrying its id; a line that is not JSON at
    all gets the parse error JSON-RPC defines (id null). Notifications get no reply, as always.
    """

    def __init__(self, source: Any, on_eof: Callable[[], None] | None = None) -> None:
        import anyio

        self.source = source
        self.ready = anyio.Event()
        self.replies: Any = None
        # The client closed its end: the SDK would wait for a tool call in flight to return
        # (a run of the whole budget, on a worker thread no cancellation reaches) before exiting.
        self.on_eof = on_eof

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        while True:
            raw = await self.source.readline()
            if not raw:
                if self.on_eof is not None:
                    self.on_eof()
                raise StopAsyncIteration
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            reply = unreadable_reply(line)
            if reply is None:
                return line
            await self.ready.wait()
            await self.replies.send(_session_message(reply))


def unreadable_reply(line: str) -> dict | None:
    """The JSON-RPC error reply to a line the SDK cannot read; None when it can read it (or when
    the line is a notification or a response, which get no reply)."""
    if _sdk_reads(line):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return _error(None, -32700, "Parse error: the line is not JSON (one JSON-RPC message per line)")
    if not isinstance(message, dict) or "method" not in message:
        return None if isinstance(message, dict) else _error(None, -32600, "Invalid Request: not an object")
    ident = message.get("id")
    if not isinstance(ident, (int, str)) or isinstance(ident, bool):
        return None  # a notification: nothing to answer
    if _has_lone_surrogate(message):
        why = (
            "a string holds a lone surrogate escape (e.g. \\ud800), which is not Unicode text: "
            "send the character itself or a complete surrogate pair"
        )
        return _error(ident, -32700, f"Parse error: {why}")
    return _error(ident, -32600, "Invalid Request: not a JSON-RPC request the server can read")


def _sdk_reads(line: str) -> bool:
    try:
        import mcp_types

        mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ImportError:  # pragma: no cover - mcp 1.x
        from mcp.types import JSONRPCMessage

        try:
            JSONRPCMessage.model_validate_json(line)
        except ValueError:
            return False
    except ValueError:
        return False
    return True


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _error(ident: int | str | None, code: int, message: str) -> dict:
    return {"jsonrpc": "2.0", "id": ident, "error": {"code": code, "message": message}}


def _session_message(reply: dict) -> Any:
    """``reply`` as the SDK's write stream takes it."""
    from mcp.shared.message import SessionMessage

    try:
        import mcp_types

        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_python(reply))
    except ImportError:  # pragma: no cover - mcp 1.x
        from mcp.types import JSONRPCMessage

        return SessionMessage(JSONRPCMessage.model_validate(reply))
