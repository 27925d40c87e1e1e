"""Everything held about a person, as one JSON document (a subject access request).

The document has the lead (and any leads merged into it), its identity keys, its events
with their payloads as received, its decisions with their webhook bodies, each
decision's deliveries with every attempt, and the dispositions sales recorded. Times
are ISO 8601 (UTC); JSON columns are parsed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import iso
from app.db import (
    decisions,
    deliveries,
    delivery_attempts,
    dispositions,
    events,
    identities,
    leads,
    loads,
)
from app.privacy.person import Person

JSON_COLUMNS = {"payload", "attributes", "signals"}


def _row(r: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in r._asdict().items():
        if k in JSON_COLUMNS and isinstance(v, str):
            v = loads(v)
        elif k.endswith("_at") and isinstance(v, float):
            v = iso(v)
        out[str(k)] = v  # a plain str: column names are quoted_name
    return out


async def _all(session: AsyncSession, q: Select[Any]) -> list[dict[str, Any]]:
    return [_row(r) for r in (await session.execute(q)).all()]


async def export_person(session: AsyncSession, person: Person) -> dict[str, Any]:
    """The person's data as stored, in one document."""
    lead_rows = await _all(
        session,
        select(leads).where(leads.c.lead_id.in_(person.lead_ids)).order_by(leads.c.first_seen_at),
    )
    decision_rows = await _all(
        session,
        select(decisions)
        .where(decisions.c.lead_id.in_(person.lead_ids))
        .order_by(decisions.c.created_at),
    )
    decision_ids = [d["id"] for d in decision_rows]
    delivery_rows = await _all(
        session,
        select(deliveries)
        .where(deliveries.c.decision_id.in_(decision_ids))
        .order_by(deliveries.c.created_at),
    )
    attempts = await _all(
        session,
        select(delivery_attempts)
        .where(delivery_attempts.c.delivery_id.in_([d["id"] for d in delivery_rows]))
        .order_by(delivery_attempts.c.delivery_id, delivery_attempts.c.attempt),
    )
    by_delivery: dict[str, list[dict[str, Any]]] = {}
    for a in attempts:
        by_delivery.setdefault(a["delivery_id"], []).append(a)
    for d in delivery_rows:
        d["attempts"] = by_delivery.get(d["id"], [])
    return {
        "lead_id": person.lead_id,
        "email": person.email,
        "leads": lead_rows,
        "identities": await _all(
            session,
            select(identities)
            .where(identities.c.lead_id.in_(person.lead_ids))
            .order_by(identities.c.identifier),
        ),
        "events": await _all(
            session,
            select(events)
            .where(events.c.lead_id.in_(person.keys))
            .order_by(events.c.occurred_at, events.c.event_id),
        ),
        "decisions": decision_rows,
        "deliveries": delivery_rows,
        "dispositions": await _all(
            session,
            select(dispositions)
            .where(
                (dispositions.c.lead_id.in_(person.lead_ids))
                | (dispositions.c.decision_id.in_(decision_ids))
            )
            .order_by(dispositions.c.created_at),
        ),
    }
