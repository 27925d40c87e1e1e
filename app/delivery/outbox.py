"""The outbox: delivery rows written in the same transaction as the decisions.

Each delivery belongs to a *lane*: one destination and one lead (or account). A lane's
deliveries go out one at a time in ``seq`` order, so a CRM sees a lead's decisions in
the order they were made, retries included. A delivery whose lane still has an earlier
one pending is written unclaimed; the dispatcher's poller sends it when its turn comes.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import new_id
from app.db import deliveries
from app.db import destinations as destinations_table
from app.db.bulk import Bulk
from app.delivery.destinations import Destination, destination_from_row


@dataclass(frozen=True)
class NewDelivery:
    """A delivery this process claimed at commit time and may send at once."""

    id: str
    decision_id: str
    destination_id: str
    body: bytes
    event_received_at: float | None
    order_key: str
    lease_until: float | None


@dataclass(frozen=True, slots=True)
class Routed:
    """A decision made in this transaction, on its way to the outbox."""

    row: dict[str, Any]  # the decisions row
    body: bytes  # the webhook body
    destinations: list[str] | None  # the rule's destinations; None: every matching one


@dataclass
class Enqueued:
    claimed: list[NewDelivery]
    # Lanes (destination id, order key) with a delivery left waiting behind an earlier one.
    waiting: set[tuple[str, str]]


DESTINATION_COLUMNS = tuple(c.name for c in destinations_table.columns)
# Attribute access on a driver tuple, as ``destination_from_row`` expects of a Row.
_DestinationRow = namedtuple("_DestinationRow", DESTINATION_COLUMNS)  # type: ignore[misc]

_last_seq = 0


def next_seqs(now: float, n: int) -> range:
    """``n`` sequence numbers, increasing across calls (microseconds since the epoch)."""
    global _last_seq
    start = max(_last_seq + 1, int(now * 1_000_000))
    _last_seq = start + n - 1
    return range(start, start + n)


def order_key(decision: dict[str, Any]) -> str:
    """The lane of a decision: its lead, or its account for an account decision."""
    if decision.get("lead_id"):
        return str(decision["lead_id"])
    return f"account:{decision.get('account_domain') or ''}"


async def enqueue(
    session: AsyncSession,
    decisions: list[Routed],
    destinations: dict[str, Destination] | None,
    *,
    now: float,
    lease_until: float | None,
) -> Enqueued:
    """One delivery per (decision, matching destination).

    With ``lease_until`` set, the head of each lane is claimed by this process until
    then, so another dispatcher's poller leaves it alone while we deliver it directly.
    A disabled destination's deliveries are parked: kept, not sent, resumed on enable.
    ``destinations`` None: read them in the session.
    """
    if not decisions:
        return Enqueued([], set())
    bulk = await Bulk.of(session)
    if destinations is None:
        # Read in the transaction: a destination added a moment ago by another replica
        # gets this decision too (a cache could be seconds behind).
        found = await bulk.select_all(destinations_table, DESTINATION_COLUMNS)
        destinations = {r[0]: destination_from_row(_DestinationRow(*r)) for r in found}
    planned: list[tuple[dict[str, Any], bytes, Destination]] = [
        (r.row, r.body, dest)
        for r in decisions
        for dest in destinations.values()
        if dest.matches(r.row, r.destinations)
    ]
    if not planned:
        return Enqueued([], set())
    keys = {order_key(d) for d, _, _ in planned}
    pending = await bulk.select_distinct_in(
        deliveries,
        ("destination_id", "order_key"),
        {
            "destination_id": sorted({dest.id for _, _, dest in planned}),
            "order_key": sorted(keys),
        },
        {"status": "pending"},
    )
    busy = {(r[0], r[1]) for r in pending}
    rows: list[dict[str, Any]] = []
    claimed: list[NewDelivery] = []
    waiting: set[tuple[str, str]] = set()
    for (decision, body, dest), seq in zip(planned, next_seqs(now, len(planned)), strict=True):
        delivery_id = new_id("dlv", now)
        key = order_key(decision)
        lane = (dest.id, key)
        send_now = dest.enabled and lease_until is not None and lane not in busy
        if dest.enabled:
            if not send_now:
                waiting.add(lane)
            busy.add(lane)
        rows.append(
            {
                "id": delivery_id,
                "decision_id": decision["id"],
                "destination_id": dest.id,
                "status": "pending" if dest.enabled else "parked",
                "attempts": 0,
                "next_attempt_at": now,
                "locked_until": lease_until if send_now else None,
                "event_received_at": decision["event_received_at"],
                "created_at": now,
                "order_key": key,
                "seq": seq,
            }
        )
        if send_now:
            claimed.append(
                NewDelivery(
                    delivery_id,
                    decision["id"],
                    dest.id,
                    body,
                    decision["event_received_at"],
                    key,
                    lease_until,
                )
            )
    await bulk.insert_rows(deliveries, rows)
    return Enqueued(claimed, waiting)
