"""Admin API: webhook destinations (create, change, test, rotate the secret, remove).

Thin: each route parses, calls ``app.delivery.lifecycle`` (the owner of destination and
delivery state) and shapes the answer; the request's transaction commits when it returns.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Row

from app.api.body import BODY_ERRORS, RequestBody
from app.api.deps import RuntimeDep, SessionDep, after_commit
from app.api.read import ERRORS
from app.auth import AdminKey
from app.clock import iso
from app.delivery import lifecycle
from app.delivery.destinations import FILTER_KEYS, destination_row, destination_rows
from app.errors import error_responses
from app.events import Name

router = APIRouter()
# Routes that read a body also answer 400 (not JSON/YAML) and 413 (too large).


class DestinationFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    band: list[str] | None = None
    tier: list[str] | None = None
    team: list[str] | None = None
    type: list[str] | None = None


class DestinationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    url: str = Field(min_length=1, max_length=2000)
    enabled: bool = True
    format: Literal["json", "slack"] = "json"
    filter: DestinationFilter = DestinationFilter()


class DestinationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
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


def _dest_view(r: Row[Any], secret: str | None = None) -> DestinationView:
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


def _filter(f: DestinationFilter | None) -> dict[str, list[str]] | None:
    if f is None:
        return None
    return {k: v for k, v in f.model_dump().items() if v is not None and k in FILTER_KEYS}


@router.post(
    "/v1/destinations",
    operation_id="createDestination",
    status_code=201,
    summary="Add a webhook destination; its signing secret is shown once",
    response_model=DestinationView,
    responses={**BODY_ERRORS, **error_responses(409)},
)
async def create_destination(
    key: AdminKey,
    session: SessionDep,
    runtime: RuntimeDep,
    body: Annotated[DestinationIn, RequestBody(DestinationIn)],
) -> DestinationView:
    spec = lifecycle.DestinationSpec(body.name, body.url, body.format, _filter(body.filter))
    row, secret = await lifecycle.create_destination(
        session,
        spec,
        enabled=body.enabled,
        guard=runtime.guard,
        box=runtime.box,
        now=runtime.clock.now(),
    )
    after_commit(session, runtime.destinations.invalidate)
    return _dest_view(row, secret)


@router.get(
    "/v1/destinations",
    operation_id="listDestinations",
    summary="Webhook destinations",
    response_model=DestinationList,
    responses=ERRORS,
)
async def list_destinations(key: AdminKey, session: SessionDep) -> DestinationList:
    return DestinationList(destinations=[_dest_view(r) for r in await destination_rows(session)])


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
)
async def update_destination(
    destination_id: str,
    key: AdminKey,
    session: SessionDep,
    runtime: RuntimeDep,
    body: Annotated[DestinationPatch, RequestBody(DestinationPatch)],
) -> DestinationView:
    spec = lifecycle.DestinationSpec(body.name, body.url, body.format, _filter(body.filter))
    row, resumed = await lifecycle.update_destination(
        session,
        destination_id,
        spec,
        enabled=body.enabled,
        guard=runtime.guard,
        now=runtime.clock.now(),
    )
    after_commit(session, runtime.destinations.invalidate)
    if resumed and runtime.dispatcher is not None:
        after_commit(session, runtime.dispatcher.poke)
    return _dest_view(row)


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
    await lifecycle.delete_destination(session, destination_id)
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
    # Signed, SSRF-pinned and sent exactly as a webhook is (the dispatcher's sender);
    # nothing is recorded.
    sent = await lifecycle.test_send(
        session, destination_id, sender=runtime.sender, now=runtime.clock.now()
    )
    return TestSendResult(
        delivered=sent.error is None,
        status_code=sent.status_code,
        latency_ms=sent.latency_ms,
        error=sent.error,
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
)
async def rotate_destination_secret(
    destination_id: str,
    key: AdminKey,
    session: SessionDep,
    runtime: RuntimeDep,
    body: Annotated[RotateSecretIn, RequestBody(RotateSecretIn, optional=True)],
) -> DestinationView:
    """During the overlap each webhook carries both signatures, so receivers can switch to
    the new secret at their own pace. Rotating again drops the older previous secret."""
    row, secret = await lifecycle.rotate_secret(
        session,
        destination_id,
        overlap=body.overlap_seconds,
        box=runtime.box,
        now=runtime.clock.now(),
    )
    after_commit(session, runtime.destinations.invalidate)
    return _dest_view(row, secret)
