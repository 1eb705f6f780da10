"""``create_app(settings)``: the FastAPI app, its shared state opened in the lifespan."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from animate import __version__
from animate.settings import Settings
from server import probe
from server.deps import AppState, RateLimiter
from server.errors import install_error_handlers
from server.files import JobFiles
from server.queue import JobQueue
from server.routes import health, jobs, web
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
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(web.router)
    return app
