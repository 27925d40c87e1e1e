"""A person's data: erasure (``DELETE /v1/leads/{id}``, optionally suppressing them)
and export (``GET /v1/leads/{id}/export``). The lead is named by any of its identifiers:
email, ``anon:<id>``, ``user:<id>``, or its lead id. The work is ``app.privacy``'s: an
erasure runs in its own write transaction (under SQLite's one writer), not the request's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from app.api.deps import RuntimeDep
from app.api.views import ERRORS
from app.auth import AdminKey
from app.errors import NotFound

router = APIRouter()

LeadRef = Annotated[
    str, Path(description="email, anon:<anonymous_id>, user:<user_id>, or the lead id")
]


class ErasedCounts(BaseModel):
    """Rows erased or redacted, per table."""

    leads: int = Field(description="lead rows deleted (the lead and leads merged into it)")
    identities: int = Field(description="identity keys deleted")
    events: int = Field(description="events kept for counts, payload and lead id redacted")
    decisions: int = Field(description="decisions kept for counts, lead removed from body")
    delivery_attempts: int = Field(description="webhook response bodies cleared")
    dispositions: int = Field(description="dispositions kept, note cleared")
    suppressions: int = Field(description="identifier hashes stored (suppress=true)")
    replay_decisions: int = Field(description="decisions replays would have made, deleted")
    replays: int = Field(description="replay diffs whose examples named the person, scrubbed")


class ErasureView(BaseModel):
    erased: ErasedCounts
    suppressed: bool = Field(description="later events naming the person are dropped")


class PersonExport(BaseModel):
    """Everything held about a person, as stored (times ISO 8601, JSON columns parsed)."""

    lead_id: str
    email: str | None
    leads: list[dict[str, Any]]
    identities: list[dict[str, Any]]
    events: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    deliveries: list[dict[str, Any]] = Field(description="each with its attempts")
    dispositions: list[dict[str, Any]]


def _not_found() -> NotFound:
    # The identifier is not echoed: it is personal data and the answer may be logged.
    return NotFound("no lead has this identifier", field="lead_id", code="lead_not_found")


@router.delete(
    "/v1/leads/{lead_id}",
    operation_id="eraseLead",
    summary="Erase a person (optionally suppressing later events for them)",
    response_model=ErasureView,
    responses=ERRORS,
)
async def erase_lead(
    lead_id: LeadRef,
    key: AdminKey,
    runtime: RuntimeDep,
    suppress: Annotated[
        bool, Query(description="keep a keyed hash of each identifier; drop later events")
    ] = False,
) -> ErasureView:
    """One transaction: lead, identities, event payloads, decision bodies, response bodies
    and notes; account aggregates unchanged. A second erasure is a 404."""
    done = await runtime.privacy.erase(lead_id, suppress=suppress)
    if done is None:
        raise _not_found()
    runtime.debugger.forget_mentions(done.mentions)  # its samples may quote the person
    return ErasureView(erased=ErasedCounts(**done.erased), suppressed=suppress)


@router.get(
    "/v1/leads/{lead_id}/export",
    operation_id="exportLead",
    summary="Everything held about a person, as one JSON document",
    response_model=PersonExport,
    responses=ERRORS,
)
async def export_lead(lead_id: LeadRef, key: AdminKey, runtime: RuntimeDep) -> PersonExport:
    doc = await runtime.privacy.export(lead_id)
    if doc is None:
        raise _not_found()
    return PersonExport(**doc)
