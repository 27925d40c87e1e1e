"""A shadow policy: a candidate that runs live beside the policy in force.

``PUT /v1/policy?mode=shadow`` (app.api.policy) queues a replay job of kind ``shadow``: its
process replays the history up to the newest batch under the versions then in force (the
live state, rebuilt), then follows every new batch under the candidate in its own scratch
state. Its decisions go to ``replay_decisions`` only: no delivery, no live state touched.
``GET /v1/policy/shadow`` reads its diff against the decisions actually made since it
started (rewritten every few seconds); ``POST /v1/policy/shadow/promote``
(app.api.policy, it makes a policy version) and ``DELETE /v1/policy/shadow`` end it, and
its process stops following within a second. One shadow at a time.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import SessionDep
from app.api.read import ERRORS
from app.api.replays import ReplayView, job_row
from app.auth import AdminKey, ReadKey
from app.db import dialect_of, replays
from app.errors import Conflict, NotFound, error_responses
from app.policy.impact.jobs import ACTIVE, create_job, job_view
from app.policy.schema import PolicyDoc
from app.policy.store import storable

router = APIRouter()

SHADOW = "shadow"
SHADOW_EXAMPLES = 5
SHADOW_LOCK = 0x5AD0  # PostgreSQL advisory lock key: one shadow start at a time
CONFLICTS = {**ERRORS, **error_responses(409)}


class ShadowView(ReplayView):
    url: str = Field(description="the job (GET /v1/replays/{id}; its decisions: …/decisions)")


def shadow_view(row: Any) -> ShadowView:
    return ShadowView(**job_view(row), url=f"/v1/replays/{row.id}")


async def current_shadow(session: AsyncSession) -> Any:
    """The shadow queued or running (``None``: none)."""
    r = replays.c
    return (
        await session.execute(
            select(replays)
            .where(r.kind == SHADOW, r.status.in_(ACTIVE))
            .order_by(r.created_at.desc(), r.id.desc())
            .limit(1)
        )
    ).first()


async def start_shadow(
    session: AsyncSession, doc: PolicyDoc, *, created_by: str, now: float
) -> Any:
    """Queue ``doc`` as the shadow policy (a 409 when one is queued or running already).

    Two starts at once must not both find none and both queue one: each first takes a lock
    held until its transaction ends (PostgreSQL: an advisory lock; SQLite: the write lock,
    by a write that changes nothing), so the second sees the first's shadow."""
    if dialect_of(session) == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SHADOW_LOCK})
    else:
        await session.execute(
            update(replays).where(replays.c.id == "").values(status=replays.c.status)
        )
    running = await current_shadow(session)
    if running is not None:
        raise Conflict(
            f"shadow {running.id} is {running.status}: promote or discard it first "
            "(POST /v1/policy/shadow/promote, DELETE /v1/policy/shadow)",
            code="shadow_running",
        )
    document, _ = storable(doc, 0)
    job_id = await create_job(
        session,
        kind=SHADOW,
        version=None,
        document=document,
        since=None,
        until=None,
        start="history",
        examples=SHADOW_EXAMPLES,
        created_by=created_by,
        now=now,
    )
    return await job_row(session, job_id)


async def end_shadow(session: AsyncSession, status: str) -> Any:
    """Mark the shadow queued or running ``status`` (promoted | discarded): its process sees
    it at its next look (within a second), stops following, writes its last diff and its
    ``finished_at``. A 409 when no shadow is queued or running."""
    row = await current_shadow(session)
    done = None
    if row is not None:
        done = await session.execute(
            update(replays)
            .where(replays.c.id == row.id, replays.c.status.in_(ACTIVE))
            .values(status=status)
        )
    if row is None or not done or not done.rowcount:  # type: ignore[attr-defined]
        raise Conflict("no shadow policy is queued or running", code="no_shadow_running")
    return await job_row(session, row.id)


@router.get(
    "/v1/policy/shadow",
    operation_id="getShadowPolicy",
    summary="The shadow policy (the one running, else the latest) and its live decision diff",
    response_model=ShadowView,
    responses=ERRORS,
)
async def get_shadow(key: ReadKey, session: SessionDep) -> ShadowView:
    """The diff compares the candidate's decisions with those actually made since the
    shadow started (``diff.baseline`` is ``"actual"``); ``progress`` says how far it is."""
    row = await current_shadow(session)
    if row is None:
        r = replays.c
        row = (
            await session.execute(
                select(replays)
                .where(r.kind == SHADOW)
                .order_by(r.created_at.desc(), r.id.desc())
                .limit(1)
            )
        ).first()
    if row is None:
        raise NotFound("no shadow policy was ever started", code="no_shadow")
    return shadow_view(row)


@router.delete(
    "/v1/policy/shadow",
    operation_id="discardShadowPolicy",
    summary="Discard the shadow policy (it stops following the live batches)",
    response_model=ShadowView,
    responses=CONFLICTS,
)
async def discard_shadow(key: AdminKey, session: SessionDep) -> ShadowView:
    return shadow_view(await end_shadow(session, "discarded"))
