"""Recording a batch of outcomes in one transaction: an attempt row for each attempt
made, each delivery's new state (``transition``), each destination's failure clock
(``health``), and the destinations that go off (410 Gone, or failing past the grace)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import deliveries, delivery_attempts, destinations
from app.db.bulk import Bulk
from app.delivery import lifecycle
from app.delivery.transition import Health, Outcome, State


@dataclass
class Rows:
    """What a batch writes: attempt rows and the deliveries' new columns."""

    attempts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)


def rows(batch: Sequence[Outcome], states: Sequence[State]) -> Rows:
    out = Rows()
    for o, st in zip(batch, states, strict=True):
        job, sent = o.job, o.sent
        if sent is not None:
            out.attempts.append(
                {
                    "delivery_id": job.id,
                    "attempt": st.attempts,
                    "started_at": sent.started_at,
                    "status_code": sent.status_code,
                    "latency_ms": sent.latency_ms,
                    "error": sent.error,
                    "response_body": sent.response_body,
                }
            )
        out.updates.append(
            {
                "id": job.id,
                "status": st.status,
                "attempts": st.attempts,
                "next_attempt_at": st.next_attempt_at,
                "last_status_code": st.last_status_code,
                "last_error": st.last_error,
                "delivered_at": st.delivered_at,
                "locked_until": st.locked_until,
            }
        )
    return out


@dataclass(frozen=True)
class Switched:
    """Destinations this batch switched off, by why."""

    gone: list[str]  # answered 410
    failing: list[str]  # every attempt failed for longer than the grace period


async def record(session: AsyncSession, written: Rows, health: Health, *, now: float) -> Switched:
    """Write the batch (the caller's transaction; SQLite's write lock is held throughout,
    so it goes at the driver, a statement per chunk)."""
    bulk = await Bulk.of(session)
    await bulk.insert_rows(delivery_attempts, written.attempts)
    await bulk.update_rows(deliveries, "id", written.updates)
    if health.healed:
        await session.execute(
            update(destinations)
            .where(destinations.c.id.in_(health.healed))
            .values(failing_since=None)
        )
    for dest_id, first in health.failing.items():
        await session.execute(
            update(destinations)
            .where(destinations.c.id == dest_id, destinations.c.failing_since.is_(None))
            .values(failing_since=first)
        )
    return Switched(
        gone=await lifecycle.disable(session, health.gone, reason="http_410", now=now),
        failing=await lifecycle.disable(session, health.over, reason="failing", now=now),
    )
