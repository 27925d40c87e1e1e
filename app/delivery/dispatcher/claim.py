"""Claiming due deliveries: lane heads only, per destination up to the room its queue has.

A claim is a lease (``locked_until``): until it lapses no other process's poller takes
the delivery, and after it does (a crashed process) any poller may. On PostgreSQL the
candidates are locked ``FOR UPDATE SKIP LOCKED``, so two pollers never claim one row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import decisions, deliveries, dialect_of
from app.delivery.transition import Job


async def claim_due(
    session: AsyncSession, rooms: Mapping[str, int], *, now: float, lease: float
) -> list[Job]:
    """Claim, for each destination, up to ``rooms[destination]`` deliveries due at ``now``
    whose lane has no earlier one pending; the jobs, oldest first per destination."""
    pg = dialect_of(session) == "postgresql"
    earlier = deliveries.alias("earlier")
    jobs: list[Job] = []
    for dest_id, room in rooms.items():
        heads = (
            select(deliveries.c.id)
            .where(
                deliveries.c.destination_id == dest_id,
                deliveries.c.status == "pending",
                deliveries.c.next_attempt_at <= now,
                or_(deliveries.c.locked_until.is_(None), deliveries.c.locked_until < now),
                ~exists().where(
                    earlier.c.destination_id == deliveries.c.destination_id,
                    earlier.c.order_key == deliveries.c.order_key,
                    earlier.c.status == "pending",
                    earlier.c.seq < deliveries.c.seq,
                ),
            )
            .order_by(deliveries.c.next_attempt_at)
            .limit(room)
        )
        if pg:
            heads = heads.with_for_update(skip_locked=True)
        claimed = (
            await session.scalars(
                update(deliveries)
                .where(deliveries.c.id.in_(heads.scalar_subquery()))
                .values(locked_until=now + lease)
                .returning(deliveries.c.id)
            )
        ).all()
        if claimed:
            jobs += await _jobs(session, claimed, now + lease)
    return jobs


async def _jobs(session: AsyncSession, ids: Sequence[str], lease_until: float) -> list[Job]:
    rows = await session.execute(
        select(
            deliveries.c.id,
            deliveries.c.decision_id,
            deliveries.c.destination_id,
            deliveries.c.event_received_at,
            deliveries.c.attempts,
            deliveries.c.order_key,
            decisions.c.payload,
        )
        .join(decisions, decisions.c.id == deliveries.c.decision_id)
        .where(deliveries.c.id.in_(ids))
        .order_by(deliveries.c.created_at)
    )
    return [
        Job(
            r.id,
            r.decision_id,
            r.destination_id,
            r.payload.encode(),
            r.event_received_at,
            r.attempts,
            r.order_key,
            lease_until,
        )
        for r in rows
    ]


async def release(session: AsyncSession, ids: Sequence[str]) -> None:
    """Give claims back: the deliveries wait, unclaimed, for any poller."""
    await session.execute(
        update(deliveries).where(deliveries.c.id.in_(ids)).values(locked_until=None)
    )
