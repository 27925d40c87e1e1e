"""create_app(): the lifespan opens the engine, the batcher and the dispatcher."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import (
    accounts,
    deliveries,
    destinations,
    events,
    feedback,
    health,
    policy,
    read,
    reports,
    segment,
)
from app.clock import Clock
from app.config import Settings
from app.errors import AppError, error_field
from app.ingest.schemas import EventBatchIn, EventIn
from app.matching.abm import AccountImport
from app.observability.logging import RequestLog
from app.observability.logging import configure as configure_logging
from app.runtime.service import Runtime

log = logging.getLogger("app")


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

    @app.exception_handler(AppError)
    async def app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": error_field(tuple(e["loc"])[1:]) or error_field(tuple(e["loc"])),
                "code": e["type"],
                "message": e["msg"],
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        return JSONResponse(
            {
                "code": "invalid_input",
                "message": f"{first['field']}: {first['message']}",
                "field": first["field"],
                "errors": errors,
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"code": code, "message": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            {"code": "internal_error", "message": "an unexpected error occurred"},
            status_code=500,
        )

    def openapi() -> dict[str, Any]:
        """FastAPI's document plus the request schemas that routes parse by hand."""
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in (
                EventIn,
                EventBatchIn,
                AccountImport,
                destinations.DestinationIn,
                destinations.DestinationPatch,
            ):
                js = model.model_json_schema(
                    ref_template="#/components/schemas/{model}", mode="validation"
                )
                schemas.update(js.pop("$defs", {}))
                schemas[model.__name__] = js
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(events.FastIngest)
    app.add_middleware(RequestLog)  # outermost: every request gets an id and a log line
    app.include_router(events.router, tags=["ingest"])
    app.include_router(segment.router, tags=["ingest"])
    app.include_router(read.router, tags=["read"])
    app.include_router(policy.router, tags=["admin"])
    app.include_router(accounts.router, tags=["admin"])
    app.include_router(destinations.router, tags=["admin"])
    app.include_router(deliveries.router, tags=["admin"])
    app.include_router(feedback.router, tags=["feedback"])
    app.include_router(reports.router, tags=["reports"])
    app.include_router(health.router, tags=["operations"])
    return app
