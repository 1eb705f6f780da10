"""``create_app(settings)``: the FastAPI app, its shared state opened in the lifespan."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from animate import __version__
from animate.settings import Settings
from server import probe
from server.deps import AppState, RateLimiter
from server.errors import install_error_handlers
from server.files import JobFiles
from server.queue import JobQueue
from server.routes import engines, health, jobs, web
from server.routes.docs import install_docs
from server.store import JobStore
from server.worker import database_url


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=probe.warm_up, name="probe-warm-up", daemon=True).start()
        store = JobStore(database_url(settings))
        queue = JobQueue(settings)
        app.state.animate = AppState(
            settings=settings,
            store=store,
            files=JobFiles(settings.data_dir),
            queue=queue,
            limiter=RateLimiter(settings.server.rate_limit_per_minute),
            auth_failures=RateLimiter(
                settings.server.auth_failures_per_minute,
                "too_many_auth_failures",
                "too many wrong API keys from this address; wait",
            ),
            probes=probe.ProbeSlots(
                settings.server.probe_slots or probe.default_slots(settings.server.probe_memory_bytes),
                settings.server.probe_wait_seconds,
            ),
        )
        try:
            yield
        finally:
            queue.close()
            store.close()

    app = FastAPI(
        title="animate",
        version=__version__,
        summary="Animate a reference photo of a person with the motion of a driving video.",
        description=(
            'Every error is JSON `{"error": {"code", "message"}}`. Besides the statuses each route lists, '
            "`animate serve` may answer any request before it reaches a route: `400 invalid_http` (not valid "
            "HTTP/1.1), `400 unsupported_transfer_encoding`, `408 request_timeout` (headers not sent in time), "
            "`431 headers_too_large`; these close the connection."
        ),
        lifespan=lifespan,
        docs_url=None,  # /docs: server.routes.docs, its assets served here (no CDN); no /redoc
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(CloseUnreadBody)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(engines.router)
    app.include_router(web.router)
    install_docs(app)
    return app


class CloseUnreadBody:
    """A response sent before its request body was read to the end says ``Connection: close``.

    The server then closes the connection after the response instead of reading (and dropping) the rest
    of the body for keep-alive: a refused 1 TB upload costs its headers, not its bytes.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ())) if scope["type"] == "http" else {}
        if b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") == b"0":
            await self.app(scope, receive, send)
            return
        read = False

        async def receive_body() -> Message:
            nonlocal read
            message = await receive()
            read = read or message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and not read:
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive_body, send_closing)
