"""``nightlab serve``'s application: the page, its data, a server-sent event stream, the controls.

Who may do what (every comparison of a token goes through :func:`secrets.compare_digest`):

* reading (the page, ``/api/state``, ``/api/experiments/N``, ``/api/events``): anyone who can
  reach a loopback address, unless the server listens beyond this machine; then only requests
  that carry the token (``?token=``, ``Authorization: Bearer``, or ``X-Nightlab-Token``);
* holdout values: only requests that carry the token, for the reason ``status --json`` hides
  them (an agent working in the workspace can reach loopback too);
* control (``POST /api/control``): only with the token in a header, never from a cookie or the
  address bar, so another site open in the same browser cannot forge a click (403 otherwise).

On loopback the ``Host`` header must name loopback too, which stops a DNS-rebinding page from
reading the dashboard through the user's browser.

One background task looks at the workspace (:class:`~nightlab.report.dashboard.live.Watcher`)
a few times a second and pushes what changed to every open page.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from nightlab.report.dashboard import control
from nightlab.report.dashboard.data import View, details, without_holdout
from nightlab.report.dashboard.live import Watcher
from nightlab.report.dashboard.page import LIVE_HEADERS, json_text, live_page

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


@dataclass
class ServeSettings:
    """What one ``nightlab serve`` watches and whom it lets in."""

    state_dir: Path
    view: View  # built with holdout=True; stripped per request without the token
    token: str
    token_for_reading: bool = False  # listening beyond loopback
    command: str = ""
    budget_seconds: float | None = None
    timeout: float | None = None
    poll_seconds: float = 0.25
    workspace: str = ""


class Hub:
    """The one watcher, looked at in a worker thread, and the queues of the open pages."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.watcher = Watcher(
            settings.state_dir, settings.view, settings.command, settings.budget_seconds, settings.timeout
        )
        self.queues: set[asyncio.Queue[dict]] = set()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._texts: dict[tuple[int, bool], str] = {}

    async def start(self) -> None:
        await asyncio.to_thread(self.watcher.poll)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.watcher.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            async with self._lock:
                try:
                    patch = await asyncio.to_thread(self.watcher.poll)
                except Exception:  # noqa: BLE001 - a bad look must not end the stream; look again
                    patch = None
                if patch:
                    for queue in list(self.queues):
                        queue.put_nowait(patch)

    async def subscribe(self) -> asyncio.Queue[dict]:
        """A queue of the changes a new page is to hear of, each numbered (``sequence``)."""
        async with self._lock:
            queue: asyncio.Queue[dict] = asyncio.Queue()
            self.queues.add(queue)
            return queue

    async def snapshot(self, with_holdout: bool) -> str:
        async with self._lock:
            return await asyncio.to_thread(self._snapshot_text, with_holdout)

    def _snapshot_text(self, with_holdout: bool) -> str:
        """The snapshot as JSON, made once per change and shared by every page that opens until
        the next one (10,000 experiments are a few MB of JSON)."""
        key = (self.watcher.sequence, with_holdout)
        if key not in self._texts:
            self._texts = {k: v for k, v in self._texts.items() if k[0] == self.watcher.sequence}
            snap = self.watcher.snapshot()
            self._texts[key] = json_text(snap if with_holdout else without_holdout(snap))
        return self._texts[key]


def _given_token(request: Request, header_only: bool = False) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if request.headers.get("x-nightlab-token"):
        return request.headers["x-nightlab-token"]
    if header_only:
        return None
    return request.query_params.get("token")


def _has_token(settings: ServeSettings, request: Request, header_only: bool = False) -> bool:
    given = _given_token(request, header_only)
    return given is not None and secrets.compare_digest(given.encode(), settings.token.encode())


def _refuse_read(settings: ServeSettings, request: Request) -> Response | None:
    if settings.token_for_reading and not _has_token(settings, request):
        return JSONResponse(
            {
                "error": "this dashboard listens beyond this machine: every request needs the token "
                "that `nightlab serve` printed (open the address it printed, with ?token=...)"
            },
            status_code=401,
        )
    return None


def _json(data: object, status: int = 200) -> Response:
    return Response(
        data if isinstance(data, str) else json_text(data),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def create_app(settings: ServeSettings) -> Starlette:
    """The Starlette application for ``settings`` (tests drive it with Starlette's TestClient)."""
    hub = Hub(settings)
    static_dir = Path(__file__).resolve().parent / "static"

    async def index(request: Request) -> Response:
        refused = _refuse_read(settings, request)
        if refused is not None:
            return HTMLResponse(
                "<!doctype html><title>nightlab</title><p>This dashboard listens beyond this machine: "
                "open it with the address <code>nightlab serve</code> printed (it ends in "
                "<code>?token=...</code>).</p>",
                status_code=401,
            )
        boot = {
            "mode": "live",
            "tag": settings.view.tag,
            "metric_name": settings.view.metric_name,
            "direction": settings.view.direction.value,
            "workspace": settings.workspace,
            "token_for_reading": settings.token_for_reading,
        }
        return HTMLResponse(live_page(boot), headers=LIVE_HEADERS)

    async def state(request: Request) -> Response:
        refused = _refuse_read(settings, request)
        if refused is not None:
            return refused
        return _json(await hub.snapshot(_has_token(settings, request)))

    async def experiment(request: Request) -> Response:
        refused = _refuse_read(settings, request)
        if refused is not None:
            return refused
        ledger = hub.watcher.ledger()
        if ledger is None:
            return _json({"error": "no ledger yet"}, 404)
        view = View(
            settings.view.tag,
            settings.view.metric_name,
            settings.view.direction,
            holdout=_has_token(settings, request),
            secrets=settings.view.secrets,
        )
        try:
            found = await asyncio.to_thread(
                details, ledger, int(request.path_params["id"]), view, settings.state_dir
            )
        except KeyError:
            return _json({"error": f"no experiment {request.path_params['id']}"}, 404)
        return _json(found)

    async def events(request: Request) -> Response:
        refused = _refuse_read(settings, request)
        if refused is not None:
            return refused
        with_holdout = _has_token(settings, request)
        queue = await hub.subscribe()

        async def stream() -> AsyncIterator[dict]:
            try:
                # The page fetches /api/state when this opens; changes follow here, numbered.
                yield {"event": "hello", "data": json_text({"sequence": hub.watcher.sequence})}
                while True:
                    patch = await queue.get()
                    yield {
                        "event": "patch",
                        "data": json_text(patch if with_holdout else without_holdout(patch)),
                    }
            finally:
                hub.queues.discard(queue)

        return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})

    async def control_view(request: Request) -> Response:
        if not _has_token(settings, request, header_only=True):
            return _json(
                {"error": "control needs the token `nightlab serve` printed, sent as Authorization: Bearer"},
                403,
            )
        try:
            body = await request.json()
            action = body.get("action") if isinstance(body, dict) else None
        except ValueError:
            action = None
        if action not in control.ACTIONS:
            return _json({"error": f"action must be one of {', '.join(control.ACTIONS)}"}, 400)
        control.request(settings.state_dir, action)
        return _json({"requested": action, "loop": control.loop_state(settings.state_dir)})

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    async def check(request: Request) -> Response:
        """Whether a token is right, so the page can say so before anyone clicks pause."""
        return _json({"token": _has_token(settings, request, header_only=True)})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()

    hosts = ["*"] if settings.token_for_reading else LOOPBACK_HOSTS
    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", state),
            Route("/api/experiments/{id:int}", experiment),
            Route("/api/events", events),
            Route("/api/control", control_view, methods=["POST"]),
            Route("/api/token", check, methods=["POST"]),
            Route("/favicon.ico", favicon),
            Mount("/static", StaticFiles(directory=static_dir), name="static"),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        lifespan=lifespan,
    )
    app.state.hub = hub
    return app
