"""Admin API: webhook destinations (create, change, test, rotate the secret)."""

from __future__ import annotations

import time
from typing import Any, Literal

import httpx
import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select, update

from app.api.body import body_model
from app.api.deps import RuntimeDep, SessionDep, after_commit
from app.api.read import ERRORS
from app.auth import AdminKey
from app.clock import iso, new_id
from app.db import deliveries, destinations, dumps
from app.delivery import dispatcher as dispatch
from app.delivery import formats, signing
from app.delivery.destinations import FILTER_KEYS, destination_from_row
from app.errors import Conflict, NotFound, error_responses

router = APIRouter()
MAX_ADMIN_BODY = 32 * 1024 * 1024
# Routes that read a body also answer 400 (not JSON/YAML) and 413 (too large).
BODY_ERRORS = {**ERRORS, **error_responses(400, 413)}


class DestinationFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    band: list[str] | None = None
    tier: list[str] | None = None
    team: list[str] | None = None
    type: list[str] | None = None


class DestinationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=2000)
    enabled: bool = True
    format: Literal["json", "slack"] = "json"
    filter: DestinationFilter = DestinationFilter()


class DestinationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    url: str | None = Field(default=None, min_length=1, max_length=2000)
    enabled: bool | None = None
    format: Literal["json", "slack"] | None = None
    filter: DestinationFilter | None = None


class DestinationView(BaseModel):
    id: str
    name: str
    url: str
    enabled: bool
    format: str
    filter: dict[str, list[str]]
    created_at: str | None
    disabled_reason: str | None = Field(
        default=None,
        description='why it is off: "http_410" (the endpoint answered 410), "failing" (every '
        'attempt failed for INTENT_DELIVERY_DISABLE_AFTER_SECONDS), "admin"',
    )
    disabled_at: str | None = None
    failing_since: str | None = Field(
        default=None, description="start of the current run of failed attempts; null when healthy"
    )
    previous_secret_expires_at: str | None = Field(
        default=None, description="until then webhooks carry the previous secret's signature too"
    )
    secret: str | None = Field(default=None, description="shown only when created or rotated")


class DestinationList(BaseModel):
    destinations: list[DestinationView]


def _dest_view(r: Any, secret: str | None = None) -> DestinationView:
    return DestinationView(
        id=r.id,
        name=r.name,
        url=r.url,
        enabled=r.enabled,
        format=r.format,
        filter=orjson.loads(r.filter),
        created_at=iso(r.created_at),
        disabled_reason=r.disabled_reason,
        disabled_at=iso(r.disabled_at),
        failing_since=iso(r.failing_since),
        previous_secret_expires_at=iso(r.previous_secret_expires_at),
        secret=secret,
    )


def _filter_json(f: DestinationFilter) -> str:
    return dumps({k: v for k, v in f.model_dump().items() if v is not None and k in FILTER_KEYS})


@router.post(
    "/v1/destinations",
    operation_id="createDestination",
    status_code=201,
    summary="Add a webhook destination; its signing secret is shown once",
    response_model=DestinationView,
    responses={**BODY_ERRORS, **error_responses(409)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/DestinationIn"}}
            },
        }
    },
)
async def create_destination(
    request: Request, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> DestinationView:
    body: DestinationIn = await body_model(request, DestinationIn)
    await runtime.guard.check_url(body.url)
    now = runtime.clock.now()
    secret = signing.new_secret()
    exists = (
        await session.execute(select(destinations.c.id).where(destinations.c.name == body.name))
    ).first()
    if exists:
        raise Conflict(
            f'a destination named "{body.name}" exists', field="name", code="destination_exists"
        )
    dest_id = new_id("dst", now)
    await session.execute(
        destinations.insert().values(
            id=dest_id,
            name=body.name,
            url=body.url,
            secret=secret,
            enabled=body.enabled,
            disabled_reason=None if body.enabled else "admin",
            disabled_at=None if body.enabled else now,
            format=body.format,
            filter=_filter_json(body.filter),
            created_at=now,
            updated_at=now,
        )
    )
    after_commit(session, runtime.destinations.invalidate)
    row = (await session.execute(select(destinations).where(destinations.c.id == dest_id))).one()
    return _dest_view(row, secret)


@router.get(
    "/v1/destinations",
    operation_id="listDestinations",
    summary="Webhook destinations",
    response_model=DestinationList,
    responses=ERRORS,
)
async def list_destinations(key: AdminKey, session: SessionDep) -> DestinationList:
    rows = await session.execute(select(destinations).order_by(destinations.c.created_at))
    return DestinationList(destinations=[_dest_view(r) for r in rows])


async def destination_row(session: Any, dest_id: str) -> Any:
    row = (await session.execute(select(destinations).where(destinations.c.id == dest_id))).first()
    if row is None:
        raise NotFound(
            f'no destination "{dest_id}"', field="destination_id", code="destination_not_found"
        )
    return row


@router.get(
    "/v1/destinations/{destination_id}",
    operation_id="getDestination",
    summary="One webhook destination",
    response_model=DestinationView,
    responses=ERRORS,
)
async def get_destination(
    destination_id: str, key: AdminKey, session: SessionDep
) -> DestinationView:
    return _dest_view(await destination_row(session, destination_id))


@router.patch(
    "/v1/destinations/{destination_id}",
    operation_id="updateDestination",
    summary="Change a destination's name, url, format, filter or enabled flag",
    response_model=DestinationView,
    responses=BODY_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/DestinationPatch"}}
            },
        }
    },
)
async def update_destination(
    destination_id: str, request: Request, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> DestinationView:
    await destination_row(session, destination_id)
    body: DestinationPatch = await body_model(request, DestinationPatch)
    now = runtime.clock.now()
    values: dict[str, Any] = {"updated_at": now}
    if body.url is not None:
        await runtime.guard.check_url(body.url)
        values["url"] = body.url
    if body.name is not None:
        values["name"] = body.name
    if body.format is not None:
        values["format"] = body.format
    if body.filter is not None:
        values["filter"] = _filter_json(body.filter)
    conn = await session.connection()
    await conn.execute(
        update(destinations).where(destinations.c.id == destination_id).values(**values)
    )
    resumed = 0
    if body.enabled is True:
        resumed = await dispatch.enable(conn, destination_id, now=now)
    elif body.enabled is False:
        await dispatch.disable(conn, [destination_id], reason="admin", now=now)
    after_commit(session, runtime.destinations.invalidate)
    if resumed and runtime.dispatcher is not None:
        after_commit(session, runtime.dispatcher.poke)
    return _dest_view(await destination_row(session, destination_id))


@router.delete(
    "/v1/destinations/{destination_id}",
    operation_id="deleteDestination",
    status_code=204,
    summary="Remove a destination",
    responses=ERRORS,
)
async def delete_destination(
    destination_id: str, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> Response:
    await destination_row(session, destination_id)
    await session.execute(delete(destinations).where(destinations.c.id == destination_id))
    # Nothing will ever send what it still had queued: close it out, visibly.
    await session.execute(
        update(deliveries)
        .where(
            deliveries.c.destination_id == destination_id,
            deliveries.c.status.in_(("pending", "parked")),
        )
        .values(status="dead", last_error="destination_deleted", locked_until=None)
    )
    after_commit(session, runtime.destinations.invalidate)
    return Response(status_code=204)


class TestSendResult(BaseModel):
    delivered: bool
    status_code: int | None
    latency_ms: float
    error: str | None


@router.post(
    "/v1/destinations/{destination_id}/test",
    operation_id="testDestination",
    summary="Send a signed test.ping webhook now",
    response_model=TestSendResult,
    responses=ERRORS,
)
async def test_destination(
    destination_id: str, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> TestSendResult:
    row = await destination_row(session, destination_id)
    target = await runtime.guard.resolve(row.url)
    now = runtime.clock.now()
    msg_id = new_id("msg", now)
    body = formats.render(
        row.format,
        orjson.dumps(
            {
                "type": "test.ping",
                "timestamp": iso(now),
                "data": {"destination_id": row.id, "name": row.name},
            }
        ),
    )
    headers = signing.headers(destination_from_row(row).secrets(now), msg_id, int(now), body)
    headers.update(target.headers)
    t0 = time.perf_counter()
    try:
        async with httpx.AsyncClient(
            timeout=runtime.settings.delivery_timeout_seconds, follow_redirects=False
        ) as client:
            resp = await client.post(
                target.url, content=body, headers=headers, extensions=target.extensions
            )
    except httpx.HTTPError as exc:
        return TestSendResult(
            delivered=False,
            status_code=None,
            latency_ms=(time.perf_counter() - t0) * 1000,
            error=f"{type(exc).__name__}: {exc}"[:300],
        )
    return TestSendResult(
        delivered=200 <= resp.status_code < 300,
        status_code=resp.status_code,
        latency_ms=(time.perf_counter() - t0) * 1000,
        error=None if resp.is_success else f"http_{resp.status_code}",
    )


# -- secret rotation and bulk redrive -------------------------------------------------
DAY = 86400


class RotateSecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int = Field(
        default=DAY,
        ge=0,
        le=7 * DAY,
        description="how long webhooks keep carrying the old secret's signature too",
    )


@router.post(
    "/v1/destinations/{destination_id}/rotate-secret",
    operation_id="rotateDestinationSecret",
    summary="Replace the signing secret (shown once); the old one keeps signing for a while",
    response_model=DestinationView,
    responses=BODY_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": RotateSecretIn.model_json_schema()}},
        }
    },
)
async def rotate_destination_secret(
    destination_id: str, request: Request, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> DestinationView:
    """During the overlap each webhook carries both signatures, so receivers can switch to
    the new secret at their own pace. Rotating again drops the older previous secret."""
    row = await destination_row(session, destination_id)
    body: RotateSecretIn = await body_model(request, RotateSecretIn, optional=True)
    now = runtime.clock.now()
    secret = signing.new_secret()
    overlap = body.overlap_seconds
    await session.execute(
        update(destinations)
        .where(destinations.c.id == destination_id)
        .values(
            secret=secret,
            previous_secret=row.secret if overlap else None,
            previous_secret_expires_at=now + overlap if overlap else None,
            updated_at=now,
        )
    )
    after_commit(session, runtime.destinations.invalidate)
    return _dest_view(await destination_row(session, destination_id), secret)
