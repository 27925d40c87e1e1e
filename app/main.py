"""create_app(): the lifespan opens the engine, the batcher and the dispatcher."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from app.api import (
    accounts,
    browser,
    decisions,
    deliveries,
    destinations,
    events,
    feedback,
    health,
    hooks,
    keys,
    policy,
    privacy,
    read,
    replays,
    reports,
    segment,
    shadow,
    sources,
)
from app.api.errors import install_error_handlers
from app.api.openapi import install_openapi
from app.clock import Clock
from app.config import Settings
from app.observability.logging import RequestLog
from app.observability.logging import configure as configure_logging
from app.runtime.service import Runtime

log = logging.getLogger("app")

# Each router with the tag its operations carry in the OpenAPI document.
ROUTERS: list[tuple[APIRouter, str]] = [
    (events.router, "ingest"),
    (segment.router, "ingest"),
    (browser.router, "ingest"),
    (hooks.router, "ingest"),
    (sources.router, "admin"),
    (keys.router, "admin"),
    (read.router, "read"),
    (privacy.router, "admin"),
    (decisions.router, "read"),
    (policy.router, "admin"),
    (replays.router, "admin"),
    (shadow.router, "admin"),
    (accounts.router, "admin"),
    (destinations.router, "admin"),
    (deliveries.router, "admin"),
    (feedback.router, "feedback"),
    (reports.router, "reports"),
    (health.router, "operations"),
]


def print_bootstrap_key(key: str | None) -> None:
    """Printed once, on the first start of an empty database; only its hash is kept."""
    if key:
        print(
            "\n  First start: an admin API key was created (all scopes). It is shown "
            f"only now:\n\n    {key}\n",
            flush=True,
        )


def serve_app(settings: Settings | None = None) -> FastAPI:
    """The app as ``intent-router serve`` runs it: JSON logs configured first."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    return create_app(settings, tune_gc=True)


def create_app(
    settings: Settings | None = None,
    clock: Clock | None = None,
    *,
    dispatcher: bool = True,
    tune_gc: bool = False,
) -> FastAPI:
    settings = settings or Settings()
    runtime = Runtime(settings, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start(dispatcher=dispatcher)
        if tune_gc:
            # Everything loaded so far (modules, schemas, the policy) lives for good: keep
            # it out of the collector's full passes, which otherwise stop the event loop
            # for ~100 ms every few seconds under load. Young collections run less often.
            gc.collect()
            gc.freeze()
            gc.set_threshold(7000, 20, 20)
        print_bootstrap_key(runtime.bootstrap_key)
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="intent-router",
        version="0.1.0",
        summary="Real-time intent scoring and lead routing",
        lifespan=lifespan,
    )
    app.state.runtime = runtime

    install_error_handlers(app)
    app.add_middleware(events.FastIngest)
    app.add_middleware(browser.BrowserCors)  # the browser SDK's paths only
    app.add_middleware(RequestLog)  # outermost: every request gets an id and a log line
    for router, tag in ROUTERS:
        app.include_router(router, tags=[tag])
    # DestinationIn and DestinationPatch: destinations.py still documents its bodies by hand
    # (a $ref each); drop them here once its routes take RequestBody parameters.
    install_openapi(
        app,
        [router for router, _ in ROUTERS],
    )
    return app
