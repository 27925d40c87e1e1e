"""Erasure of a person, in one transaction.

What goes and what stays:

- ``leads``: the person's lead row and every lead merged into it are deleted;
  ``identities``: their identity keys are deleted.
- ``events``: the rows stay with their non-personal columns (type, source, transport,
  occurred_at, received_at, account_domain, policy_version), so counts, scorecards and
  dedupe by ``event_id`` hold; ``lead_id`` becomes the erasure's pseudonym and the
  payload ``{"erased": true}``.
- ``decisions`` (and so every webhook body, which is built from a decision's stored
  payload): the row stays for counts and scorecards; ``lead_id`` becomes the pseudonym,
  the payload's ``data.lead`` is replaced by ``{"lead_id": <pseudonym>, "erased": true}``
  and every identifier or attribute value of the person left in the payload or the
  reason is replaced.
- ``delivery_attempts``: the response bodies of the person's deliveries are cleared.
- ``dispositions``: notes cleared, ``lead_id`` becomes the pseudonym.
- ``replay_decisions`` (what a replay or shadow policy would have decided) of the person
  are deleted, and the person is scrubbed from the diffs' examples in ``replays``.
- ``accounts`` are not touched: an account's intent is an aggregate of its leads'
  accumulators and stays as it was (its stored ``active_leads`` too; the read API's
  count of active leads *now* is taken from the remaining leads).

The pseudonym (``erased:<random>``) is new for each erasure and recorded nowhere else:
it ties the person's remaining rows together for counting and to nothing outside them.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import (
    decisions,
    deliveries,
    delivery_attempts,
    dispositions,
    events,
    identities,
    replay_decisions,
    replays,
)
from app.db import leads as leads_table
from app.delivery import lifecycle
from app.privacy.person import Person, Scrubber

ERASED_PAYLOAD = '{"erased":true}'


def new_pseudonym() -> str:
    return "erased:" + secrets.token_hex(8)


def redact_decision(payload: str, scrub: Scrubber, pseudonym: str) -> str:
    """A decision's webhook body without the person: ``data.lead`` replaced, every other
    trace of their identifiers and attribute values scrubbed."""
    body: Any = orjson.loads(payload) if payload else {}
    if isinstance(body, dict) and isinstance(body.get("data"), dict):
        if body["data"].get("lead") is not None:
            body["data"]["lead"] = {"lead_id": pseudonym, "erased": True}
    return orjson.dumps(scrub.doc(body)).decode()


async def _rowcount(session: AsyncSession, stmt: Any) -> int:
    result: Any = await session.execute(stmt)
    return int(result.rowcount or 0)


async def _decisions(
    session: AsyncSession, person: Person, scrub: Scrubber, pseudonym: str
) -> list[str]:
    rows = (
        await session.execute(
            select(decisions.c.id, decisions.c.payload, decisions.c.reason).where(
                decisions.c.lead_id.in_(person.lead_ids)
            )
        )
    ).all()
    if rows:
        await session.execute(
            update(decisions)
            .where(decisions.c.id == bindparam("b_id"))
            .values(
                lead_id=pseudonym,
                payload=bindparam("b_payload"),
                reason=bindparam("b_reason"),
            )
            .execution_options(synchronize_session=False),
            [
                {
                    "b_id": r.id,
                    "b_payload": redact_decision(r.payload, scrub, pseudonym),
                    "b_reason": scrub.text(r.reason),
                }
                for r in rows
            ],
        )
    return [r.id for r in rows]


async def erase_person(session: AsyncSession, person: Person, *, pseudonym: str) -> dict[str, int]:
    """Erase ``person`` in the caller's transaction; rows changed per table."""
    scrub = person.scrubber(pseudonym)
    keys = person.keys
    counts: dict[str, int] = {}
    counts["events"] = await _rowcount(
        session,
        update(events)
        .where(events.c.lead_id.in_(keys))
        .values(lead_id=pseudonym, payload=ERASED_PAYLOAD),
    )
    decision_ids = await _decisions(session, person, scrub, pseudonym)
    counts["decisions"] = len(decision_ids)
    counts["deliveries"] = await lifecycle.rename_lanes(session, person.lead_ids, pseudonym)
    counts["delivery_attempts"] = (
        await _rowcount(
            session,
            update(delivery_attempts)
            .where(
                delivery_attempts.c.delivery_id.in_(
                    select(deliveries.c.id).where(deliveries.c.decision_id.in_(decision_ids))
                ),
                delivery_attempts.c.response_body.is_not(None),
            )
            .values(response_body=None),
        )
        if decision_ids
        else 0
    )
    counts["dispositions"] = await _rowcount(
        session,
        update(dispositions)
        .where(
            or_(
                dispositions.c.lead_id.in_(person.lead_ids),
                dispositions.c.decision_id.in_(decision_ids),
            )
        )
        .values(lead_id=pseudonym, note=None),
    )
    counts["identities"] = await _rowcount(
        session,
        delete(identities).where(
            or_(
                identities.c.lead_id.in_(person.lead_ids),
                identities.c.identifier.in_(person.identifiers),
            )
        ),
    )
    counts["leads"] = await _rowcount(
        session, delete(leads_table).where(leads_table.c.lead_id.in_(person.lead_ids))
    )
    counts["replay_decisions"] = await _rowcount(
        session,
        delete(replay_decisions).where(replay_decisions.c.lead_id.in_(person.lead_ids)),
    )
    counts["replays"] = await _replays(session, person, scrub)
    return counts


async def _replays(session: AsyncSession, person: Person, scrub: Scrubber) -> int:
    """Scrub the person out of replay diffs (their examples name leads)."""
    if not person.lead_ids:
        return 0
    mentions = or_(*(replays.c.result.contains(i) for i in person.lead_ids))
    rows = (await session.execute(select(replays.c.id, replays.c.result).where(mentions))).all()
    for r in rows:
        scrubbed = orjson.dumps(scrub.doc(orjson.loads(r.result))).decode()
        await session.execute(update(replays).where(replays.c.id == r.id).values(result=scrubbed))
    return len(rows)
