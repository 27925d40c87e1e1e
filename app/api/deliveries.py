"""Admin API: send deliveries again (one, or a destination's range), through
``app.delivery.lifecycle``; the dispatcher is poked once the request has committed."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.api.body import BODY_ERRORS, RequestBody
from app.api.deps import RuntimeDep, SessionDep, after_commit
from app.api.read import ERRORS
from app.auth import AdminKey
from app.delivery import lifecycle
from app.delivery.destinations import destination_row
from app.errors import InvalidInput, error_responses

router = APIRouter()
# Routes that read a body also answer 400 (not JSON/YAML) and 413 (too large).


class Redelivered(BaseModel):
    id: str
    status: str


@router.post(
    "/v1/deliveries/{delivery_id}/redeliver",
    operation_id="redeliver",
    summary="Send a delivery again (dead-lettered or delivered)",
    response_model=Redelivered,
    status_code=202,
    responses=ERRORS,
)
async def redeliver(
    delivery_id: str, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> Redelivered:
    await lifecycle.redeliver(session, delivery_id, now=runtime.clock.now())
    if runtime.dispatcher is not None:
        after_commit(session, runtime.dispatcher.poke)
    return Redelivered(id=delivery_id, status="pending")


class RedriveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime = Field(description="deliveries created at or after this time")
    until: AwareDatetime | None = Field(default=None, description="and before this time")
    status: list[Literal["dead", "delivered"]] = Field(default=["dead"], min_length=1)


class Redriven(BaseModel):
    redriven: int


@router.post(
    "/v1/destinations/{destination_id}/redrive",
    operation_id="redriveDestination",
    summary="Send a destination's dead-lettered deliveries of a time range again",
    response_model=Redriven,
    status_code=202,
    responses={**BODY_ERRORS, **error_responses(409)},
)
async def redrive_destination(
    destination_id: str,
    key: AdminKey,
    session: SessionDep,
    runtime: RuntimeDep,
    body: Annotated[RedriveIn, RequestBody(RedriveIn)],
) -> Redriven:
    # An unknown destination is a 404 before the range is checked (lifecycle would say so
    # only after).
    await destination_row(session, destination_id)
    since = body.since.timestamp()
    until = body.until.timestamp() if body.until is not None else None
    if until is not None and until <= since:
        raise InvalidInput("until must be after since", field="until")
    n = await lifecycle.redrive(
        session,
        destination_id,
        statuses=body.status,
        since=since,
        until=until,
        now=runtime.clock.now(),
    )
    if n and runtime.dispatcher is not None:
        after_commit(session, runtime.dispatcher.poke)
    return Redriven(redriven=n)
