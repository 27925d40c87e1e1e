"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from app.db.migrate import at_head
from app.runtime.service import Runtime

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
    roles = set(runtime.settings.roles)
    dispatcher_ok = True
    if "dispatcher" in roles:
        dispatcher_ok = runtime.dispatcher is not None and runtime.dispatcher.running
        checks["dispatcher"] = "running" if dispatcher_ok else "stopped"
    consumer_ok = True
    if runtime.settings.kafka_bootstrap and "consumer" in roles:
        consumer = runtime.consumer
        assigned = sorted(tp.partition for tp in consumer.assigned) if consumer else []
        consumer_ok = bool(assigned)
        checks["consumer"] = {"partitions": assigned} if consumer_ok else "not assigned"
    ready = (
        checks["database"] == "ok"
        and checks.get("migrations") == "ok"
        and (runtime.policy is not None)
        and dispatcher_ok
        and consumer_ok
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
