"""app.delivery.lifecycle called directly, on SQLite and PostgreSQL: the outbox, a
destination switched off and on, created, changed, rotated, removed, deliveries sent
again, and a test send through the dispatcher's own sender to a receiver on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import FakeClock, new_id
from app.config import Settings
from app.crypto import SecretBox, generate_key
from app.db import deliveries, destinations, make_engine, make_sessionmaker
from app.db.migrate import upgrade
from app.delivery import lifecycle, signing
from app.delivery.destinations import destination_row
from app.delivery.lifecycle import DestinationSpec, Routed
from app.delivery.send import Sender
from app.delivery.ssrf import SsrfGuard, SsrfRefused
from app.errors import Conflict, NotFound
from tests.support.harness import Receiver

NOW = 1_800_000_000.0
LEASE = NOW + 60
OPEN = SsrfGuard(["127.0.0.1"])  # the loopback receivers are allowed, nothing else private
BOX = SecretBox([generate_key().encode()])  # secrets are stored encrypted

Maker = async_sessionmaker[AsyncSession]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Maker]:
    engine = make_engine(Settings(database_url=database_url))
    await upgrade(engine)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def add(s: AsyncSession, name: str, *, enabled: bool = True, url: str = "") -> str:
    spec = DestinationSpec(name, url or f"http://127.0.0.1:9/{name}")
    row, _ = await lifecycle.create_destination(
        s, spec, enabled=enabled, guard=OPEN, box=BOX, now=NOW
    )
    return str(row.id)


def decision(lead: str, *, rule_destinations: list[str] | None = None) -> Routed:
    row = {"id": new_id("dec", NOW), "lead_id": lead, "event_received_at": NOW - 1}
    return Routed(row, orjson.dumps({"type": "lead.routed", "lead": lead}), rule_destinations)


async def state(db: Maker) -> dict[str, dict[str, Any]]:
    """Every delivery's columns by id."""
    async with db() as s:
        return {r.id: dict(r._mapping) for r in await s.execute(select(deliveries))}


async def enqueue(db: Maker, *routed: Routed, lease_until: float | None = LEASE) -> Any:
    async with db() as s, s.begin():
        return await lifecycle.enqueue(s, list(routed), None, now=NOW, lease_until=lease_until)


# -- the outbox --------------------------------------------------------------------------------


async def test_enqueue_claims_each_lanes_head_and_parks_for_a_destination_that_is_off(
    db: Maker,
) -> None:
    async with db() as s, s.begin():
        on = await add(s, "on")
        off = await add(s, "off", enabled=False)
    dana1, dana2, lee = decision("dana"), decision("dana"), decision("lee")
    out = await enqueue(db, dana1, dana2, lee)

    by_decision = {(d.decision_id, d.destination_id) for d in out.claimed}
    assert by_decision == {(dana1.row["id"], on), (lee.row["id"], on)}
    assert all(d.lease_until == LEASE and d.order_key in ("dana", "lee") for d in out.claimed)
    assert out.waiting == {(on, "dana")}  # dana's second waits behind her first
    rows = await state(db)
    assert len(rows) == 6
    mine = {(r["decision_id"], r["destination_id"]): r for r in rows.values()}
    assert mine[(dana2.row["id"], on)]["locked_until"] is None
    assert mine[(dana2.row["id"], on)]["status"] == "pending"
    assert {mine[(d.row["id"], off)]["status"] for d in (dana1, dana2, lee)} == {"parked"}
    assert all(mine[(d.row["id"], off)]["locked_until"] is None for d in (dana1, dana2, lee))
    seqs = [mine[(d.row["id"], on)]["seq"] for d in (dana1, dana2, lee)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3

    # a lane with a delivery still pending: the next one waits, unclaimed
    later = await enqueue(db, decision("lee"))
    assert later.claimed == [] and later.waiting == {(on, "lee")}


async def test_enqueue_without_a_lease_claims_nothing_and_a_rule_picks_its_destinations(
    db: Maker,
) -> None:
    async with db() as s, s.begin():
        crm = await add(s, "crm")
        await add(s, "slack")
    out = await enqueue(db, decision("dana"), lease_until=None)
    assert out.claimed == [] and len(out.waiting) == 2  # the poller sends them
    named = await enqueue(db, decision("kim", rule_destinations=["crm"]))
    assert [d.destination_id for d in named.claimed] == [crm]
    assert await enqueue(db) == lifecycle.Enqueued([], set())


# -- a destination switched off and on -------------------------------------------------------


async def test_disable_parks_the_pending_and_enable_makes_the_parked_due_now(db: Maker) -> None:
    async with db() as s, s.begin():
        dest = await add(s, "crm")
    await enqueue(db, decision("dana"), decision("lee"))
    delivered = next(iter(await state(db)))
    async with db() as s, s.begin():
        await s.execute(
            update(deliveries).where(deliveries.c.id == delivered).values(status="delivered")
        )
    async with db() as s, s.begin():
        assert await lifecycle.disable(s, [dest], reason="admin", now=NOW + 5) == [dest]
        assert await lifecycle.disable(s, [dest], reason="admin", now=NOW + 6) == []  # off already
    rows = await state(db)
    assert rows.pop(delivered)["status"] == "delivered"
    [parked] = rows.values()
    assert (parked["status"], parked["locked_until"]) == ("parked", None)
    async with db() as s:
        row = (await s.execute(select(destinations))).one()
    assert (row.enabled, row.disabled_reason, row.disabled_at) == (False, "admin", NOW + 5)

    async with db() as s, s.begin():
        assert await lifecycle.enable(s, dest, now=NOW + 100) == 1
    resumed = (await state(db))[parked["id"]]
    assert (resumed["status"], resumed["next_attempt_at"]) == ("pending", NOW + 100)
    async with db() as s:
        row = (await s.execute(select(destinations))).one()
    assert (row.enabled, row.disabled_reason, row.disabled_at, row.failing_since) == (
        True,
        None,
        None,
        None,
    )


# -- created, changed, rotated, removed -----------------------------------------------------


async def test_create_refuses_a_taken_name_and_an_address_the_guard_refuses(db: Maker) -> None:
    async with db() as s, s.begin():
        await add(s, "crm")
        row, secret = await lifecycle.create_destination(
            s,
            DestinationSpec("off", "http://127.0.0.1:9/x"),
            enabled=False,
            guard=OPEN,
            box=BOX,
            now=NOW,
        )
    assert secret.startswith("whsec_") and BOX.decrypt(row.secret) == secret
    assert SecretBox.is_encrypted(row.secret) and secret not in row.secret
    assert (row.enabled, row.disabled_reason, row.disabled_at) == (False, "admin", NOW)
    async with db() as s, s.begin():
        with pytest.raises(Conflict) as taken:
            await add(s, "crm")
        assert (taken.value.code, taken.value.field) == ("destination_exists", "name")
        with pytest.raises(SsrfRefused):
            await add(s, "inside", url="https://10.0.0.1/hook")
    async with db() as s:
        names = (await s.scalars(select(destinations.c.name))).all()
    assert sorted(names) == ["crm", "off"]


async def test_update_switches_a_destination_and_reports_the_deliveries_resumed(
    db: Maker,
) -> None:
    async with db() as s, s.begin():
        dest = await add(s, "crm")
    await enqueue(db, decision("dana"))
    async with db() as s, s.begin():
        row, resumed = await lifecycle.update_destination(
            s, dest, DestinationSpec(name="renamed"), enabled=False, guard=OPEN, now=NOW + 1
        )
    assert (row.name, row.enabled, resumed) == ("renamed", False, 0)
    assert {r["status"] for r in (await state(db)).values()} == {"parked"}
    async with db() as s, s.begin():
        spec = DestinationSpec(format="slack", filter={"band": ["hot"]})
        row, resumed = await lifecycle.update_destination(
            s, dest, spec, enabled=True, guard=OPEN, now=NOW + 2
        )
    assert (row.format, orjson.loads(row.filter), row.enabled, resumed) == (
        "slack",
        {"band": ["hot"]},
        True,
        1,
    )
    async with db() as s, s.begin():
        with pytest.raises(SsrfRefused):
            inside = DestinationSpec(url="https://169.254.169.254/")
            await lifecycle.update_destination(
                s, dest, inside, enabled=None, guard=OPEN, now=NOW + 3
            )
        with pytest.raises(NotFound):
            await lifecycle.update_destination(
                s, "dst_none", DestinationSpec(), enabled=True, guard=OPEN, now=NOW
            )


async def test_rotation_keeps_the_old_secret_for_the_overlap_only(db: Maker) -> None:
    async with db() as s, s.begin():
        dest = await add(s, "crm")
        first = BOX.decrypt((await destination_row(s, dest)).secret)
        row, second = await lifecycle.rotate_secret(s, dest, overlap=60, box=BOX, now=NOW)
        assert (BOX.decrypt(row.secret), BOX.decrypt(row.previous_secret)) == (second, first)
        assert row.previous_secret_expires_at == NOW + 60
        row, third = await lifecycle.rotate_secret(s, dest, overlap=0, box=BOX, now=NOW + 1)
        assert (BOX.decrypt(row.secret), row.previous_secret, row.previous_secret_expires_at) == (
            third,
            None,
            None,
        )


async def test_deleting_closes_out_what_it_had_queued(db: Maker) -> None:
    async with db() as s, s.begin():
        dest = await add(s, "crm")
        other = await add(s, "other")
    await enqueue(db, decision("dana"), decision("dana"), decision("lee"))
    rows = await state(db)
    done = next(i for i, r in rows.items() if r["destination_id"] == dest)
    async with db() as s, s.begin():
        await s.execute(
            update(deliveries).where(deliveries.c.id == done).values(status="delivered")
        )
        await lifecycle.disable(s, [other], reason="admin", now=NOW)  # its queue: parked
    async with db() as s, s.begin():
        await lifecycle.delete_destination(s, dest)
        await lifecycle.delete_destination(s, other)
    for i, r in (await state(db)).items():
        if i == done:
            assert (r["status"], r["last_error"]) == ("delivered", None)
        else:
            assert (r["status"], r["last_error"], r["locked_until"]) == (
                "dead",
                "destination_deleted",
                None,
            )
    async with db() as s, s.begin():
        assert (await s.execute(select(destinations))).all() == []
        with pytest.raises(NotFound) as missing:
            await lifecycle.delete_destination(s, dest)
    assert missing.value.code == "destination_not_found"


# -- sent again --------------------------------------------------------------------------------


async def test_redeliver_starts_a_delivery_afresh(db: Maker) -> None:
    async with db() as s, s.begin():
        await add(s, "crm")
    await enqueue(db, decision("dana"))
    [dead] = await state(db)
    async with db() as s, s.begin():
        await s.execute(
            update(deliveries)
            .where(deliveries.c.id == dead)
            .values(status="dead", attempts=8, last_error="http_500")
        )
    async with db() as s, s.begin():
        await lifecycle.redeliver(s, dead, now=NOW + 50)
        with pytest.raises(NotFound) as missing:
            await lifecycle.redeliver(s, "dlv_none", now=NOW)
    assert (missing.value.code, missing.value.field) == ("delivery_not_found", "delivery_id")
    again = (await state(db))[dead]
    assert (again["status"], again["attempts"], again["next_attempt_at"]) == (
        "pending",
        0,
        NOW + 50,
    )
    assert again["locked_until"] is None


async def test_redrive_sends_a_range_again_and_refuses_a_destination_that_is_off(
    db: Maker,
) -> None:
    async with db() as s, s.begin():
        dest = await add(s, "crm")
    await enqueue(db, decision("a"), decision("b"), decision("c"))
    ids = sorted(await state(db))
    # created an hour apart, dead, dead and delivered
    async with db() as s, s.begin():
        for n, (i, status) in enumerate(zip(ids, ("dead", "dead", "delivered"), strict=True)):
            await s.execute(
                update(deliveries)
                .where(deliveries.c.id == i)
                .values(status=status, created_at=NOW + n * 3600, attempts=8)
            )

    async def redrive(statuses: list[str], since: float, until: float | None = None) -> int:
        async with db() as s, s.begin():
            return await lifecycle.redrive(
                s, dest, statuses=statuses, since=since, until=until, now=NOW + 9000
            )

    assert await redrive(["dead"], NOW + 1800) == 1  # the second only
    assert (await state(db))[ids[1]]["status"] == "pending"
    assert await redrive(["dead"], NOW - 1, NOW + 1) == 1
    assert await redrive(["dead"], NOW - 1) == 0  # none left dead
    assert await redrive(["delivered"], NOW - 1) == 1
    assert {r["attempts"] for r in (await state(db)).values()} == {0}
    async with db() as s, s.begin():
        await lifecycle.disable(s, [dest], reason="admin", now=NOW)
    with pytest.raises(Conflict) as off:
        await redrive(["dead"], NOW - 1)
    assert off.value.code == "destination_disabled"


# -- a test send -----------------------------------------------------------------------------


async def test_a_test_send_goes_out_as_a_webhook_does(db: Maker, hook: Receiver) -> None:
    """Signed with the destination's secret and sent by the dispatcher's ``Sender`` (its
    user agent, the lean transport); a URL the guard refuses at send time is refused."""
    clock = FakeClock(NOW)
    sender = Sender(OPEN, clock, timeout=5.0, box=BOX)
    async with db() as s, s.begin():
        dest = await add(s, "crm", url=hook.url + "/crm")
        secret = BOX.decrypt((await destination_row(s, dest)).secret)
        sent = await lifecycle.test_send(s, dest, sender=sender, now=NOW)
    assert (sent.status_code, sent.error, sent.started_at) == (204, None, NOW)
    [got] = hook.requests
    assert got.path == "/crm" and got.json()["type"] == "test.ping"
    assert got.json()["data"] == {"destination_id": dest, "name": "crm"}
    assert got.headers["user-agent"] == "intent-router/0.1"
    msg_id, stamp = got.headers["webhook-id"], int(got.headers["webhook-timestamp"])
    assert msg_id.startswith("msg_") and stamp == int(NOW)
    assert signing.verify(secret, msg_id, stamp, got.body, got.headers["webhook-signature"])

    hook.status = 503
    async with db() as s, s.begin():
        sent = await lifecycle.test_send(s, dest, sender=sender, now=NOW)
        assert (sent.status_code, sent.error) == (503, "http_503")
        closed = Sender(SsrfGuard([]), clock, timeout=5.0, box=BOX)  # loopback no longer allowed
        with pytest.raises(SsrfRefused):
            await lifecycle.test_send(s, dest, sender=closed, now=NOW)
        with pytest.raises(NotFound):
            await lifecycle.test_send(s, "dst_none", sender=sender, now=NOW)
    assert len(hook.requests) == 2
    await sender.aclose()
