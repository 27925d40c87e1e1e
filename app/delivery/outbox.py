"""The outbox: delivery rows written in the same transaction as the decisions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import new_id
from app.db import deliveries
from app.delivery.destinations import Destination


@dataclass(frozen=True)
class NewDelivery:
    """A delivery this process claimed at commit time and may send at once."""

    id: str
    decision_id: str
    destination_id: str
    body: bytes
    event_received_at: float | None
    lead_id: str | None


async def enqueue(
    session: AsyncSession,
    decisions: list[tuple[dict[str, Any], bytes, list[str] | None]],
    destinations: dict[str, Destination],
    *,
    now: float,
    lease_until: float | None,
) -> list[NewDelivery]:
    """One pending delivery per (decision, matching destination).

    With ``lease_until`` set, the rows are claimed by this process until then, so the
    poller of another dispatcher leaves them alone while we deliver them directly.
    """
    rows: list[dict[str, Any]] = []
    out: list[NewDelivery] = []
    for decision, body, rule_destinations in decisions:
        for dest in destinations.values():
            if not dest.matches(decision, rule_destinations):
                continue
            delivery_id = new_id("dlv", now)
            rows.append(
                {
                    "id": delivery_id,
                    "decision_id": decision["id"],
                    "destination_id": dest.id,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "locked_until": lease_until,
                    "event_received_at": decision["event_received_at"],
                    "created_at": now,
                }
            )
            out.append(
                NewDelivery(
                    delivery_id,
                    decision["id"],
                    dest.id,
                    body,
                    decision["event_received_at"],
                    decision["lead_id"],
                )
            )
    if rows:
        await session.execute(deliveries.insert(), rows)
    return out
