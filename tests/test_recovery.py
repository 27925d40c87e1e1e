"""Nothing accepted is lost: decisions survive failures, restarts and a killed process."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import func, select

from app import pipeline
from app.clock import FakeClock
from app.config import Settings
from app.db import events, identities, leads, make_engine, make_sessionmaker
from app.db.migrate import upgrade
from app.ingest.schemas import EVENT_ADAPTER, to_event
from app.policy.store import ensure_default
from tests.support.harness import Spawned, event, receiver, service
from tests.support.scenarios import hot_events


async def test_failed_delivery_is_retried_after_a_restart(
    settings: Settings, clock: FakeClock
) -> None:
    async with receiver() as hook:
        hook.status = 500
        async with service(settings, clock) as svc:
            key = svc.admin_key
            await svc.client.put(
                "/v1/accounts",
                json={
                    "accounts": [
                        {"domain": "acme.com", "tier": "tier_1", "owner": "jo@ours.example"}
                    ]
                },
            )
            await svc.client.post("/v1/destinations", json={"name": "crm", "url": hook.url})
            r = await svc.client.post("/v1/events", json={"events": hot_events("r", clock.now())})
            assert r.status_code == 202
            [failed] = await hook.wait_for(1)
            await asyncio.sleep(0.3)  # let the failed attempt be recorded
        hook.status = 204
        clock.advance(10)  # past the 5 s retry delay
        async with service(settings, clock, key=key) as svc:
            got = await hook.wait_for(2)
            assert got[1].headers["webhook-id"] == failed.headers["webhook-id"]
            decision = (
                await svc.client.get(f"/v1/decisions/{failed.headers['webhook-id']}")
            ).json()
            for _ in range(40):
                if decision["deliveries"][0]["status"] == "delivered":
                    break
                await asyncio.sleep(0.05)
                decision = (
                    await svc.client.get(f"/v1/decisions/{failed.headers['webhook-id']}")
                ).json()
            history = decision["deliveries"][0]["history"]
            assert [a["status_code"] for a in history] == [500, 204]


async def test_sigkill_during_delivery_loses_nothing(database_url: str) -> None:
    """The process dies while its webhook is in flight; after a restart the same decision
    is delivered (same webhook-id) and every accepted event counts exactly once."""
    arrived: list[tuple[str, bytes]] = []
    hang = asyncio.Event()

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from tests.support.harness import serve

    async def handle(request: Request) -> Response:
        arrived.append((request.headers["webhook-id"], await request.body()))
        if not hang.is_set():  # the first attempt never finishes: the sender dies meanwhile
            await asyncio.wait_for(hang.wait(), 30)
        return Response(status_code=204)

    app = Starlette(routes=[Route("/{p:path}", handle, methods=["POST"])])
    async with serve(app) as hook_url:
        env = {
            "INTENT_DATABASE_URL": database_url,
            "INTENT_DELIVERY_ALLOWED_HOSTS": "127.0.0.1",
            "INTENT_DELIVERY_LEASE_SECONDS": "2",
        }
        proc = Spawned(env)
        try:
            proc.start()
            key = proc.read_key()
            async with httpx.AsyncClient(
                base_url=proc.url, timeout=10, headers={"authorization": f"Bearer {key}"}
            ) as c:
                await c.put(
                    "/v1/accounts",
                    json={
                        "accounts": [
                            {"domain": "acme.com", "tier": "tier_1", "owner": "jo@ours.example"}
                        ]
                    },
                )
                await c.post("/v1/destinations", json={"name": "crm", "url": hook_url})
                import time

                now = time.time()
                events = hot_events("k", now) + [
                    event(f"k-extra-{i}", "site_visit", now, email=f"p{i}@other.io")
                    for i in range(50)
                ]
                r = await c.post("/v1/events", json={"events": events})
                assert r.json()["accepted"] == 52
            for _ in range(200):  # generous: CI machines are busy
                if arrived:
                    break
                await asyncio.sleep(0.05)
            assert len(arrived) == 1
            proc.kill()
            await asyncio.sleep(0)
            hang.set()

            proc.start()  # same database; the lease of the killed process expires after 2 s
            for _ in range(300):
                if len(arrived) >= 2:
                    break
                await asyncio.sleep(0.1)
            assert len(arrived) == 2
            assert arrived[0][0] == arrived[1][0]
            assert arrived[0][1] == arrived[1][1]
            async with httpx.AsyncClient(
                base_url=proc.url, timeout=10, headers={"authorization": f"Bearer {key}"}
            ) as c:
                # resending everything after the crash changes nothing
                r = await c.post("/v1/events", json={"events": events})
                assert r.json()["duplicates"] == 52
                dana = (await c.get("/v1/leads/dana@acme.com")).json()
                assert abs(dana["score"]["intent"] - 35.0) < 0.01
                assert len(dana["decisions"]) == 1
                for i in range(50):
                    lead = (await c.get(f"/v1/leads/p{i}@other.io")).json()
                    assert abs(lead["score"]["intent"] - 5.0) < 0.01
        finally:
            proc.stop()


class _Abort(Exception):
    pass


async def test_a_failed_batch_leaves_no_trace(settings: Settings, clock: FakeClock) -> None:
    """Every write of a pipeline batch is in the batch's one transaction: when it fails
    after the pipeline ran, no event is recorded as seen, so the retry scores them all."""
    engine = make_engine(settings)
    try:
        await upgrade(engine)
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker() as session, session.begin():
            policy = await ensure_default(session, clock.now())
        raw = [
            event(f"x-{i}", "pricing_page_view", clock.now(), email="ann@acme.com")
            for i in range(3)
        ]
        batch = [
            to_event(
                EVENT_ADAPTER.validate_python(r), received_at=clock.now(), transport="http", raw=r
            )
            for r in raw
        ]

        async def run() -> list[str]:
            async with sessionmaker() as session, session.begin():
                result = await pipeline.process(
                    session,
                    batch,
                    policy=policy,
                    destinations={},
                    now=clock.now(),
                    lease_until=None,
                )
                if not aborted:
                    raise _Abort
                return [s.status for s in result.statuses]

        aborted = False
        with pytest.raises(_Abort):
            await run()
        aborted = True
        async with sessionmaker() as session:
            for table in (events, leads, identities):
                count = await session.scalar(select(func.count()).select_from(table))
                assert count == 0, table.name
        assert await run() == ["accepted"] * 3
        async with sessionmaker() as session:
            lead = (
                await session.execute(select(leads).where(leads.c.lead_id == "ann@acme.com"))
            ).one()
            assert lead.lead_id == "ann@acme.com"
    finally:
        await engine.dispose()
