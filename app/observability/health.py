"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from app.migrate import at_head
from app.runtime import Runtime

router = APIRouter()


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, Any]


@router.get(
    "/healthz", operation_id="healthz", summary="The process is alive", response_model=Health
)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="Ready to take traffic",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
)
async def readyz(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    checks: dict[str, Any] = {}
    try:
        async with runtime.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
        checks["migrations"] = "ok" if await at_head(runtime.engine) else "behind"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    checks["policy_version"] = runtime.policy.version if runtime.policy else None
    checks["dispatcher"] = "running" if runtime.dispatcher and runtime.dispatcher.running else "off"
    ready = (
        checks["database"] == "ok"
        and checks.get("migrations") == "ok"
        and (runtime.policy is not None)
    )
    body = Readiness(ready=ready, checks=checks).model_dump()
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
