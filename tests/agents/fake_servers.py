"""Loopback chat servers that speak the real wire protocols, scripted request by request.

They let the official ``openai`` and ``anthropic`` SDKs talk to something real (HTTP, JSON,
status codes, headers) without a network or a key. Usage::

    with fake_llm_server("openai", [Status(429, headers={"Retry-After": "1"}),
                                    Answer(answer_text("raise LR", "too low", block("train.py", "LR = 1", "LR = 2")))]) as server:
        config = LLMSettings(provider="openai", model="fake", base_url=server.base_url)
        ...
        assert len(server.requests) == 2

A script is a list of responses, used in order (a request past its end gets a 500 saying so),
or a callable ``(request) -> response`` for servers that answer by content. Responses:
:class:`Answer` (a completion, optionally after a delay), :class:`Status` (an HTTP error with
the provider's error body and any headers), :class:`Hang` (say nothing, so the client times
out), :class:`Trickle` (a byte now and then, so no read ever times out), :class:`Raw` (a body sent as it is: an HTML page, JSON that is no answer). ``api_key`` makes the server reject any other key with 401; ``models`` makes it answer
404 for any other model, as the real APIs do.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    """A successful completion carrying ``text``, with the usage the server reports."""

    text: str
    tokens_in: int = 1000
    tokens_out: int = 200
    delay: float = 0.0
    truncated: bool = False  # report that the output limit stopped the answer


@dataclass
class Status:
    """An HTTP error response (429, 500, 401, ...) with the provider's error body."""

    code: int
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    """Accept the request and say nothing for ``seconds``, then drop the connection.

    ``Hang(0)`` drops the connection at once: the client sees a connection reset.
    """

    seconds: float = 30.0


@dataclass
class Trickle:
    """Send the headers of a long body, then one space every ``interval`` seconds for ``seconds``:
    a proxy's keep-alive, or a server stuck half-way, that never lets a read time out."""

    seconds: float = 30.0
    interval: float = 0.2


@dataclass
class Raw:
    """A body sent as given, for a server whose HTTP 200 carries no answer (a proxy's HTML page)."""

    body: str | bytes
    content_type: str = "application/json"
    code: int = 200


Response = Answer | Status | Hang | Trickle | Raw


@dataclass
class Request:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict
    time: float

    @property
    def messages(self) -> list[dict]:
        return list(self.body.get("messages", []))

    @property
    def last_user_text(self) -> str:
        """The text of the last user message (string or content blocks)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def block(path: str, search: str, replace: str) -> str:
    """One SEARCH/REPLACE block in the common form (an empty ``search`` replaces the whole file)."""
    old = search if not search or search.endswith("\n") else search + "\n"
    new = replace if not replace or replace.endswith("\n") else replace + "\n"
    return f"{path}\n<<<<<<< SEARCH\n{old}=======\n{new}>>>>>>> REPLACE\n"


def answer_text(description: str, hypothesis: str, *blocks: str) -> str:
    """A whole answer in the protocol's format."""
    return f"Description: {description}\nHypothesis: {hypothesis}\n\n" + "\n".join(blocks)


class FakeLLMServer:
    """A scripted OpenAI chat-completions or Anthropic messages server on 127.0.0.1."""

    def __init__(
        self,
        protocol: str,
        script: Sequence[Response] | Callable[[Request], Response],
        api_key: str | None = None,
        models: Sequence[str] | None = None,
    ) -> None:
        if protocol not in ("openai", "anthropic"):
            raise ValueError(f"protocol must be 'openai' or 'anthropic', not {protocol!r}")
        self.protocol = protocol
        self.script = script if callable(script) else list(script)
        self.api_key = api_key
        self.models = set(models) if models else None
        self.requests: list[Request] = []
        self.key_checks = 0  # GET /v1/models calls (the key check before a night)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        # A short poll interval: shutdown() waits up to one interval, and tests stop many servers.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        """What to give the SDK as ``base_url`` (OpenAI's includes ``/v1``, Anthropic's does not)."""
        port = self._httpd.server_address[1]
        return f"http://127.0.0.1:{port}/v1" if self.protocol == "openai" else f"http://127.0.0.1:{port}"

    def start(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _next(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(request)
            if callable(self.script):
                return self.script(request)
            if not self.script:
                return Status(500, "fake server: no scripted response left")
            return self.script.pop(0)

    # -- wire formats ---------------------------------------------------------------------------

    def _path_ok(self, path: str) -> bool:
        wanted = "/v1/chat/completions" if self.protocol == "openai" else "/v1/messages"
        return path.split("?")[0] == wanted

    def _key_of(self, headers: dict[str, str]) -> str:
        # Anthropic's API takes x-api-key; recent anthropic SDKs send a bearer token instead.
        if self.protocol == "anthropic" and "x-api-key" in headers:
            return headers["x-api-key"].strip()
        return headers.get("authorization", "").removeprefix("Bearer ").strip()

    def error_body(self, code: int, message: str) -> dict:
        kinds = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
            529: "overloaded_error",
        }
        kind = kinds.get(code, "api_error")
        if self.protocol == "openai":
            return {"error": {"message": message, "type": kind, "param": None, "code": kind}}
        return {"type": "error", "error": {"type": kind, "message": message}}

    def success_body(self, request: Request, answer: Answer) -> dict:
        model = request.body.get("model", "fake")
        if self.protocol == "openai":
            return {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.text},
                        "finish_reason": "length" if answer.truncated else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": answer.tokens_in,
                    "completion_tokens": answer.tokens_out,
                    "total_tokens": answer.tokens_in + answer.tokens_out,
                },
            }
        return {
            "id": f"msg_{len(self.requests)}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": answer.text}],
            "stop_reason": "max_tokens" if answer.truncated else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": answer.tokens_in, "output_tokens": answer.tokens_out},
        }


def _handler_for(server: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            pass

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            """``GET /v1/models`` (the key check before a night), not counted in ``requests``."""
            headers = {k.lower(): v for k, v in self.headers.items()}
            if self.path.split("?")[0] != "/v1/models":
                self._send(404, server.error_body(404, f"no route {self.path}"))
            elif server.api_key is not None and server._key_of(headers) != server.api_key:
                server.key_checks += 1
                self._send(401, server.error_body(401, "invalid api key"))
            else:
                server.key_checks += 1
                listed = [{"id": m, "object": "model", "type": "model"} for m in (server.models or ["fake"])]
                self._send(200, {"object": "list", "data": listed, "has_more": False})

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            length = int(self.headers.get("Content-Length", "0") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = Request(path=self.path, headers=headers, body=body, time=time.monotonic())
            if not server._path_ok(self.path):
                self._send(404, server.error_body(404, f"no route {self.path}"))
                return
            if server.api_key is not None and server._key_of(headers) != server.api_key:
                with server._lock:
                    server.requests.append(request)
                self._send(401, server.error_body(401, "invalid api key"))
                return
            if server.models is not None and body.get("model") not in server.models:
                with server._lock:
                    server.requests.append(request)
                self._send(404, server.error_body(404, f"model {body.get('model')!r} not found"))
                return
            response = server._next(request)
            if isinstance(response, Hang):
                server._stopping.wait(response.seconds)
                self.close_connection = True
                return
            if isinstance(response, Trickle):
                self._trickle(response)
                return
            if isinstance(response, Raw):
                data = response.body if isinstance(response.body, bytes) else response.body.encode()
                self._send_bytes(response.code, data, response.content_type)
                return
            if isinstance(response, Status):
                self._send(
                    response.code, server.error_body(response.code, response.message), response.headers
                )
                return
            if response.delay:
                server._stopping.wait(response.delay)
            self._send(200, server.success_body(request, response))

        def _trickle(self, response: Trickle) -> None:
            self.close_connection = True
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                deadline = time.monotonic() + response.seconds
                while time.monotonic() < deadline and not server._stopping.wait(response.interval):
                    self.wfile.write(b" ")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, as it should

        def _send(self, code: int, payload: dict, headers: dict[str, str] | None = None) -> None:
            self._send_bytes(code, json.dumps(payload).encode(), "application/json", headers)

        def _send_bytes(
            self, code: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
        ) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test); nothing to tell it

    return Handler


@contextmanager
def fake_llm_server(
    protocol: str = "openai",
    script: Sequence[Response] | Callable[[Request], Response] = (),
    *,
    api_key: str | None = None,
    models: Sequence[str] | None = None,
) -> Iterator[FakeLLMServer]:
    """A running :class:`FakeLLMServer` for the duration of the block."""
    server = FakeLLMServer(protocol, script, api_key=api_key, models=models).start()
    try:
        yield server
    finally:
        server.stop()
