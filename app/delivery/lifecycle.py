"""The life of deliveries and destinations: besides the dispatcher (which claims, sends
and records attempts), the only code that changes them.

- ``enqueue``: the outbox, written in the transaction that made the decisions (the
  pipeline's, the SLA timer's), one delivery per (decision, matching destination);
- a destination created, changed, switched off (its pending deliveries parked) or on
  again (its parked ones due now), its secret rotated, removed (its queue closed out);
- a delivery sent again (``redeliver``), or a destination's range of them (``redrive``);
- a test send, through the dispatcher's own ``Sender``: signed, SSRF-pinned, on the
  lean transport, exactly as a webhook goes.

Each function takes the caller's session and never commits: the caller's unit of work
(a request's, a batch's) does, and pokes the dispatcher afterwards.

Each delivery belongs to a *lane*: one destination and one lead (or account). A lane's
deliveries go out one at a time in ``seq`` order, so a CRM sees a lead's decisions in
the order they were made, retries included. A delivery whose lane still has an earlier
one pending is written unclaimed; the dispatcher's poller sends it when its turn comes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Row, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import iso, new_id
from app.crypto import SecretBox
from app.db import deliveries, destinations, dumps
from app.db.bulk import Bulk
from app.delivery import signing
from app.delivery.destinations import Destination, destination, destination_row, read_all
from app.delivery.send import Sender
from app.delivery.ssrf import SsrfGuard
from app.delivery.transition import Sent
from app.errors import Conflict, NotFound

# -- the outbox ---------------------------------------------------------------------------


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
    known: dict[str, Destination] | None,
    *,
    now: float,
    lease_until: float | None,
) -> Enqueued:
    """One delivery per (decision, matching destination).

    With ``lease_until`` set, the head of each lane is claimed by this process until
    then, so another dispatcher's poller leaves it alone while we deliver it directly.
    A disabled destination's deliveries are parked: kept, not sent, resumed on enable.
    ``known`` None: the destinations are read in the session.
    """
    if not decisions:
        return Enqueued([], set())
    bulk = await Bulk.of(session)
    if known is None:
        # Read in the transaction: a destination added a moment ago by another replica
        # gets this decision too (a cache could be seconds behind).
        known = await read_all(bulk)
    planned = [
        (r, dest)
        for r in decisions
        for dest in known.values()
        if dest.matches(r.row, r.destinations)
    ]
    if not planned:
        return Enqueued([], set())
    pending = await bulk.select_distinct_in(
        deliveries,
        ("destination_id", "order_key"),
        {
            "destination_id": sorted({dest.id for _, dest in planned}),
            "order_key": sorted({order_key(r.row) for r, _ in planned}),
        },
        {"status": "pending"},
    )
    busy = {(r[0], r[1]) for r in pending}
    rows: list[dict[str, Any]] = []
    out = Enqueued([], set())
    for (routed, dest), seq in zip(planned, next_seqs(now, len(planned)), strict=True):
        decision = routed.row
        lane = (dest.id, order_key(decision))
        send_now = dest.enabled and lease_until is not None and lane not in busy
        if dest.enabled:
            if not send_now:
                out.waiting.add(lane)
            busy.add(lane)
        new = NewDelivery(
            new_id("dlv", now),
            decision["id"],
            dest.id,
            routed.body,
            decision["event_received_at"],
            lane[1],
            lease_until if send_now else None,
        )
        rows.append(_delivery_row(new, "pending" if dest.enabled else "parked", seq, now))
        if send_now:
            out.claimed.append(new)
    await bulk.insert_rows(deliveries, rows)
    return out


def _delivery_row(new: NewDelivery, status: str, seq: int, now: float) -> dict[str, Any]:
    return {
        "id": new.id,
        "decision_id": new.decision_id,
        "destination_id": new.destination_id,
        "status": status,
        "attempts": 0,
        "next_attempt_at": now,
        "locked_until": new.lease_until,
        "event_received_at": new.event_received_at,
        "created_at": now,
        "order_key": new.order_key,
        "seq": seq,
    }


# -- destinations: on, off, created, changed, removed -------------------------------------


async def disable(
    session: AsyncSession, ids: Sequence[str], *, reason: str, now: float
) -> list[str]:
    """Switch destinations off (those not off already) and park their pending deliveries;
    returns the ids switched."""
    if not ids:
        return []
    result = await session.execute(
        update(destinations)
        .where(destinations.c.id.in_(ids), destinations.c.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason, disabled_at=now, updated_at=now)
        .returning(destinations.c.id)
    )
    switched = list(result.scalars().all())
    if switched:
        await session.execute(
            update(deliveries)
            .where(deliveries.c.destination_id.in_(switched), deliveries.c.status == "pending")
            .values(status="parked", locked_until=None)
        )
    return switched


async def enable(session: AsyncSession, dest_id: str, *, now: float) -> int:
    """Switch a destination on; its parked deliveries become due now. Returns how many."""
    await session.execute(
        update(destinations)
        .where(destinations.c.id == dest_id)
        .values(
            enabled=True, disabled_reason=None, disabled_at=None, failing_since=None, updated_at=now
        )
    )
    result = await session.execute(
        update(deliveries)
        .where(deliveries.c.destination_id == dest_id, deliveries.c.status == "parked")
        .values(status="pending", next_attempt_at=now, locked_until=None)
        .returning(deliveries.c.id)
    )
    return len(result.all())


@dataclass(frozen=True)
class DestinationSpec:
    """What a destination is, apart from its state: each None where unchanged."""

    name: str | None = None
    url: str | None = None
    format: str | None = None
    filter: dict[str, list[str]] | None = None


async def create_destination(
    session: AsyncSession,
    spec: DestinationSpec,
    *,
    enabled: bool,
    guard: SsrfGuard,
    box: SecretBox,
    now: float,
) -> tuple[Row[Any], str]:
    """Add a destination (its URL checked by the SSRF guard); its row and new secret
    (stored encrypted with ``box``)."""
    assert spec.name is not None and spec.url is not None
    await guard.check_url(spec.url)
    taken = await session.execute(select(destinations.c.id).where(destinations.c.name == spec.name))
    if taken.first():
        raise Conflict(
            f'a destination named "{spec.name}" exists', field="name", code="destination_exists"
        )
    dest_id = new_id("dst", now)
    await session.execute(
        destinations.insert().values(
            id=dest_id,
            name=spec.name,
            url=spec.url,
            secret=box.encrypt(secret := signing.new_secret()),
            enabled=enabled,
            disabled_reason=None if enabled else "admin",
            disabled_at=None if enabled else now,
            format=spec.format or "json",
            filter=dumps(spec.filter or {}),
            created_at=now,
            updated_at=now,
        )
    )
    return await destination_row(session, dest_id), secret


async def update_destination(
    session: AsyncSession,
    dest_id: str,
    spec: DestinationSpec,
    *,
    enabled: bool | None,
    guard: SsrfGuard,
    now: float,
) -> tuple[Row[Any], int]:
    """Change a destination and switch it on or off (an admin's doing); its row and how
    many parked deliveries became due."""
    await destination_row(session, dest_id)
    values: dict[str, Any] = {"updated_at": now}
    if spec.url is not None:
        await guard.check_url(spec.url)
        values["url"] = spec.url
    if spec.name is not None:
        values["name"] = spec.name
    if spec.format is not None:
        values["format"] = spec.format
    if spec.filter is not None:
        values["filter"] = dumps(spec.filter)
    await session.execute(update(destinations).where(destinations.c.id == dest_id).values(values))
    resumed = 0
    if enabled is True:
        resumed = await enable(session, dest_id, now=now)
    elif enabled is False:
        await disable(session, [dest_id], reason="admin", now=now)
    return await destination_row(session, dest_id), resumed


async def rotate_secret(
    session: AsyncSession, dest_id: str, *, overlap: float, box: SecretBox, now: float
) -> tuple[Row[Any], str]:
    """A new signing secret (stored encrypted); the old one keeps signing alongside for
    ``overlap`` seconds."""
    row = await destination_row(session, dest_id)
    await session.execute(
        update(destinations)
        .where(destinations.c.id == dest_id)
        .values(
            secret=box.encrypt(secret := signing.new_secret()),
            previous_secret=box.reencrypt(row.secret) if overlap else None,
            previous_secret_expires_at=now + overlap if overlap else None,
            updated_at=now,
        )
    )
    return await destination_row(session, dest_id), secret


async def delete_destination(session: AsyncSession, dest_id: str) -> None:
    """Remove a destination. Nothing will ever send what it still had queued: its pending
    and parked deliveries are closed out, visibly (dead, ``destination_deleted``)."""
    await destination_row(session, dest_id)
    await session.execute(delete(destinations).where(destinations.c.id == dest_id))
    await session.execute(
        update(deliveries)
        .where(
            deliveries.c.destination_id == dest_id,
            deliveries.c.status.in_(("pending", "parked")),
        )
        .values(status="dead", last_error="destination_deleted", locked_until=None)
    )


# -- sending again ------------------------------------------------------------------------


async def redeliver(session: AsyncSession, delivery_id: str, *, now: float) -> None:
    """Send a delivery again (dead-lettered or delivered), its schedule from the start."""
    result = await session.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id)
        .values(status="pending", attempts=0, next_attempt_at=now, locked_until=None)
        .returning(deliveries.c.id)
    )
    if result.first() is None:
        raise NotFound(
            f'no delivery "{delivery_id}"', field="delivery_id", code="delivery_not_found"
        )


async def redrive(
    session: AsyncSession,
    dest_id: str,
    *,
    statuses: Sequence[str],
    since: float,
    until: float | None,
    now: float,
) -> int:
    """Send again a destination's deliveries in ``statuses`` created in [since, until);
    how many. A destination that is off is refused: it would only park them."""
    if not (await destination_row(session, dest_id)).enabled:
        raise Conflict(
            "the destination is disabled; re-enable it before redriving",
            field="destination_id",
            code="destination_disabled",
        )
    match = [
        deliveries.c.destination_id == dest_id,
        deliveries.c.status.in_(statuses),
        deliveries.c.created_at >= since,
    ]
    if until is not None:
        match.append(deliveries.c.created_at < until)
    result = await session.execute(
        update(deliveries)
        .where(*match)
        .values(status="pending", attempts=0, next_attempt_at=now, locked_until=None)
        .returning(deliveries.c.id)
    )
    return len(result.all())


async def test_send(session: AsyncSession, dest_id: str, *, sender: Sender, now: float) -> Sent:
    """A signed ``test.ping`` to the destination now, as any webhook goes (raises
    ``SsrfRefused`` if its URL may not be reached); nothing is recorded."""
    row = await destination_row(session, dest_id)
    dest = destination(row._mapping)
    ping = {
        "type": "test.ping",
        "timestamp": iso(now),
        "data": {"destination_id": dest.id, "name": dest.name},
    }
    prepared = await sender.prepare(dest, orjson.dumps(ping), msg_id=new_id("msg", now))
    return await sender.post(dest.id, prepared)


async def rename_lanes(session: AsyncSession, lead_ids: Sequence[str], new: str) -> int:
    """An erased person's delivery lanes (keyed by lead id) take the erasure's pseudonym;
    their order (``seq``) is kept."""
    result: Any = await session.execute(
        update(deliveries).where(deliveries.c.order_key.in_(list(lead_ids))).values(order_key=new)
    )
    return int(result.rowcount or 0)
