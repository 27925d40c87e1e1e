"""Retention against the real service (both databases): raw events older than
INTENT_EVENT_RETENTION_DAYS are deleted and webhook response bodies older than
INTENT_DELIVERY_RESPONSE_RETENTION_DAYS cleared, in batches, and no score changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from app.clock import FakeClock
from app.config import Settings
from app.db import batches, delivery_attempts, events
from app.privacy.retention import DAY, Retention
from tests.support.harness import Service, event, eventually, service
from tests.support.scenarios import lead, routed
from tests.test_privacy import delivered, echo_receiver, replay_done, setup


@pytest.fixture
async def kept30(settings: Settings, clock: FakeClock) -> AsyncIterator[Service]:
    """The service keeping events and response bodies for 30 days."""
    limited = settings.model_copy(
        update={"event_retention_days": 30.0, "delivery_response_retention_days": 30.0}
    )
    async with service(limited, clock) as s:
        yield s


async def event_ids(svc: Service) -> set[str]:
    async with svc.runtime.sessionmaker() as s:
        return set((await s.execute(select(events.c.event_id))).scalars())


async def bodies(svc: Service) -> list[str | None]:
    async with svc.runtime.sessionmaker() as s:
        q = select(delivery_attempts.c.response_body).order_by(delivery_attempts.c.started_at)
        return list((await s.execute(q)).scalars())


def sweeper(svc: Service, **options: Any) -> Retention:
    """A sweep over the service's database, writing where the service's own does."""
    rt = svc.runtime
    writes = rt.pipeline_loop.write if rt.pipeline_loop and rt.settings.is_sqlite else None
    return Retention(rt.sessionmaker, rt.clock, rt.settings, writes=writes, **options)


async def test_old_events_and_bodies_go_and_scores_stay(kept30: Service, clock: FakeClock) -> None:
    svc = kept30
    assert svc.runtime.privacy.retention is not None  # started with the dispatcher
    async with echo_receiver() as hook:
        await setup(svc, hook)
        old_decision = await routed(svc, hook, clock, "old@acme.com")
        await delivered(svc, old_decision)
        old = await event_ids(svc)
        assert len(old) == 2
        clock.advance(31 * DAY)
        new_decision = await routed(svc, hook, clock, "new@acme.com")
        await delivered(svc, new_decision)
    assert all(b and "@acme.com" in b for b in await bodies(svc))
    before = {e: await lead(svc, e) for e in ("old@acme.com", "new@acme.com")}

    swept = await svc.runtime.privacy.retention.step()
    assert (swept.events, swept.response_bodies) == (2, 1)
    assert await event_ids(svc) == {"new-1", "new-2"}  # the recent ones kept
    old_body, new_body = await bodies(svc)
    assert old_body is None and new_body is not None and "new@acme.com" in new_body
    # Accumulators need no history: every score, breakdown and decision is as it was.
    assert {e: await lead(svc, e) for e in before} == before
    # Nothing more to do: a second step is empty and changes nothing.
    swept = await svc.runtime.privacy.retention.step()
    assert (swept.events, swept.response_bodies) == (0, 0)
    assert await event_ids(svc) == {"new-1", "new-2"}


async def test_the_sweep_goes_in_batches_until_done(kept30: Service, clock: FakeClock) -> None:
    svc = kept30
    t = clock.now()
    batch = [event(f"b-{i}", "pricing_page_view", t, email=f"p{i}@acme.com") for i in range(7)]
    r = await svc.client.post("/v1/events", json={"events": batch})
    assert r.status_code == 202, r.text
    clock.advance(30 * DAY - 60)  # not yet old
    sweep = sweeper(svc, batch=3, pause=0)
    assert (await sweep.run_once()).events == 0
    clock.advance(120)
    done = await sweep.run_once()
    assert done.events == 7 and await event_ids(svc) == set()
    assert (await lead(svc, "p3@acme.com"))["score"]["intent"] > 0


async def test_the_background_task_sweeps(kept30: Service, clock: FakeClock) -> None:
    svc = kept30
    r = await svc.client.post(
        "/v1/events",
        json={"events": [event("t-1", "demo_request", clock.now(), email="t@acme.com")]},
    )
    assert r.status_code == 202, r.text
    clock.advance(31 * DAY)
    sweep = sweeper(svc, interval=0.05)
    sweep.start()
    try:

        async def gone() -> bool:
            async with svc.runtime.sessionmaker() as s:
                n = await s.scalar(select(func.count()).select_from(events))
            return n == 0

        await eventually(gone)
    finally:
        await sweep.stop()


async def test_zero_days_keeps_everything(svc: Service, clock: FakeClock) -> None:
    kept = svc.runtime.settings.model_copy(
        update={"event_retention_days": 0.0, "delivery_response_retention_days": 0.0}
    )
    r = await svc.client.post(
        "/v1/events",
        json={"events": [event("z-1", "demo_request", clock.now(), email="z@acme.com")]},
    )
    assert r.status_code == 202, r.text
    clock.advance(3650 * DAY)
    sweep = Retention(svc.runtime.sessionmaker, clock, kept)
    assert (await sweep.run_once()).events == 0
    assert await event_ids(svc) == {"z-1"}


async def test_old_replays_and_batch_records_go_account_imports_stay(
    kept30: Service, clock: FakeClock
) -> None:
    svc = kept30
    r = await svc.client.put("/v1/accounts", json=[{"domain": "acme.com", "tier": "tier_1"}])
    assert r.status_code == 200, r.text
    ev = event("e-old", "site_visit", clock.now(), email="a@acme.com")
    assert (await svc.client.post("/v1/events", json=ev)).status_code == 202
    old_job = await replay_done(svc, {"version": 1})
    clock.advance(31 * DAY)
    ev = event("e-new", "site_visit", clock.now(), email="b@acme.com")
    assert (await svc.client.post("/v1/events", json=ev)).status_code == 202
    new_job = await replay_done(svc, {"version": 1})
    async with svc.runtime.sessionmaker() as s:
        assert (await s.execute(select(func.count()).select_from(batches))).scalar() == 3

    swept = await sweeper(svc).run_once()
    assert swept.replays == 1
    assert (await svc.client.get(f"/v1/replays/{old_job['id']}")).status_code == 404
    assert (await svc.client.get(f"/v1/replays/{new_job['id']}")).status_code == 200
    async with svc.runtime.sessionmaker() as s:
        left = (
            await s.execute(select(batches.c.accounts.is_(None)).order_by(batches.c.id))
        ).scalars()
        assert list(left) == [False, True]  # the import, and the new event's batch
    # A replay after the sweep still knows Acme's tier (the import was kept).
    assert (await replay_done(svc, {"version": 1}))["status"] == "done"
