"""Liveness, readiness and the Prometheus exposition (behind a bearer token when
``INTENT_METRICS_TOKEN`` is set)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from app.db.migrate import at_head
from app.errors import Unauthenticated, error_responses
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
    # Newer applied versions the service cannot load run nobody's traffic: say which, and
    # why, while the version in force keeps the service ready.
    checks["policy"] = {
        "version": checks["policy_version"],
        "skipped": [
            {"version": v, "reason": reason} for v, reason in sorted(runtime.policy_skipped.items())
        ],
    }
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
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **error_responses(401),
    },
)
async def metrics(request: Request) -> Response:
    """Open, unless ``INTENT_METRICS_TOKEN`` is set: then ``Authorization: Bearer <token>``."""
    runtime: Runtime = request.app.state.runtime
    token = runtime.settings.metrics_token
    if token:
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            sent.strip().encode(), token.encode()
        ):
            raise Unauthenticated(
                "/metrics needs Authorization: Bearer <INTENT_METRICS_TOKEN>",
                field="authorization",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
