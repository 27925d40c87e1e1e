"""Quotas against the real service: a token bucket per API key and per source (a Segment
write key's, a webhook's), one token per event, 429 ``rate_limited`` with ``Retry-After``
and the ``RateLimit-*`` fields, then recovery as the runtime's clock moves; and the
32 KB cap on one event (rejected alone in a batch, 413 alone).

Issue 13's finding "No rate limit" is held here."""

from __future__ import annotations

import asyncio
import base64
import copy
import time
from typing import Any

import httpx
import orjson
from sqlalchemy import func, select

from app.api.ratelimit import RateLimiter
from app.clock import FakeClock
from app.config import Settings
from app.db import events
from app.ingest.schemas import MAX_EVENT_BYTES
from tests.support.harness import Service, event, service, ts
from tests.test_hooks import CALENDLY_BOOKING, calendly_headers

HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def basic(key: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def limited_key(svc: Service, rate: float, burst: int) -> str:
    r = await svc.client.post(
        "/v1/keys",
        json={"name": "etl", "scopes": ["ingest"], "rate_limit": rate, "rate_burst": burst},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


async def stored(svc: Service) -> int:
    async with svc.runtime.sessionmaker() as s:
        return int((await s.execute(select(func.count()).select_from(events))).scalar_one())


def one(clock: FakeClock, event_id: str, **extra: Any) -> dict[str, Any]:
    return {**event(event_id, "site_visit", clock.now(), email="ada@acme.com"), **extra}


def assert_limited(r: httpx.Response, remaining: int = 0, payable: bool = True) -> int:
    """A 429 as documented; its Retry-After (``payable``: the request could pass later)."""
    assert r.status_code == 429, r.text
    assert r.json()["code"] == "rate_limited"
    retry_after = int(r.headers["Retry-After"])
    assert retry_after >= 1
    assert int(r.headers["RateLimit-Remaining"]) == remaining
    assert int(r.headers["RateLimit-Reset"]) >= (retry_after if payable else 0)
    return retry_after


# -- per API key ----------------------------------------------------------------------------


async def test_a_key_over_its_quota_is_429_then_recovers(svc: Service, clock: FakeClock) -> None:
    key = await limited_key(svc, rate=5, burst=10)
    async with svc.as_key(key) as c:
        for i in range(10):
            r = await c.post("/v1/events", json=one(clock, f"q-{i}"))
            assert r.status_code == 202, r.text
            assert [r.headers[h] for h in HEADERS] == ["10", str(9 - i), str(-(-(i + 1) // 5))]
        r = await c.post("/v1/events", json=one(clock, "q-10"))
        assert assert_limited(r) == 1  # one token short, 5 a second: within the second
        assert r.headers["RateLimit-Limit"] == "10" and r.headers["RateLimit-Reset"] == "2"
        assert "5 events per second" in r.json()["message"]
        assert await stored(svc) == 10
        # Another key has its own bucket.
        assert (await svc.client.post("/v1/events", json=one(clock, "admin-1"))).status_code == 202

        clock.advance(1.0)  # 5 tokens back
        for i in range(5):
            assert (await c.post("/v1/events", json=one(clock, f"q-a-{i}"))).status_code == 202
        assert_limited(await c.post("/v1/events", json=one(clock, "q-a-5")))

        # A batch costs one token per event and is refused whole.
        clock.advance(1.0)
        batch = {"events": [one(clock, f"b-{i}") for i in range(6)]}
        r = await c.post("/v1/events", json=batch)
        assert_limited(r, remaining=5)
        clock.advance(10.0)  # full again: 10 tokens
        r = await c.post("/v1/events", json={"events": [one(clock, f"b-{i}") for i in range(11)]})
        assert_limited(r, remaining=10, payable=False)  # more than the burst can ever pay
        assert "burst of 10" in r.json()["message"]
        r = await c.post("/v1/events", json={"events": [one(clock, f"b-{i}") for i in range(10)]})
        assert r.status_code == 202 and r.json()["accepted"] == 10
        assert r.headers["RateLimit-Remaining"] == "0"
    assert await stored(svc) == 10 + 1 + 5 + 10


async def test_the_defaults_come_from_the_settings(svc: Service, clock: FakeClock) -> None:
    r = await svc.client.post("/v1/events", json=one(clock, "d-1"))
    settings = svc.runtime.settings
    assert r.headers["RateLimit-Limit"] == str(settings.rate_limit_burst)
    assert r.headers["RateLimit-Remaining"] == str(settings.rate_limit_burst - 1)
    # A key's own quota changes on the fly (PATCH; null is the default again).
    key_id = (await svc.client.get("/v1/keys")).json()["keys"][0]["id"]
    r = await svc.client.patch(f"/v1/keys/{key_id}", json={"rate_burst": 3})
    assert r.status_code == 200 and r.json()["rate_burst"] == 3
    r = await svc.client.post("/v1/events", json={"events": [one(clock, "d-2")] * 4})
    assert_limited(r, remaining=3, payable=False)
    await svc.client.patch(f"/v1/keys/{key_id}", json={"rate_burst": None})
    clock.advance(1.0)  # the tokens lowering the burst took come back at the rate
    r = await svc.client.post("/v1/events", json={"events": [one(clock, "d-2")] * 4})
    assert r.status_code == 202, r.text


async def test_a_flood_from_one_key_gets_its_burst_and_429s(
    settings: Settings, clock: FakeClock
) -> None:
    # The finding: 5,000 posts from one key at 64 in flight were 5,000 × 202. With the
    # defaults at 50/s and a burst of 200 and the clock held still, exactly 200 pass.
    quota = settings.model_copy(
        update={"rate_limit_events_per_second": 50.0, "rate_limit_burst": 200}
    )
    async with service(quota, clock) as svc:
        gate = asyncio.Semaphore(64)

        async def post(i: int) -> int:
            async with gate:
                r = await svc.client.post("/v1/events", json=one(clock, f"f-{i}"))
                return r.status_code

        codes = await asyncio.gather(*(post(i) for i in range(600)))
        assert (codes.count(202), codes.count(429)) == (200, 400)
        assert await stored(svc) == 200
        clock.advance(1.0)
        codes = await asyncio.gather(*(post(1000 + i) for i in range(60)))
        assert (codes.count(202), codes.count(429)) == (50, 10)


def test_the_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    buckets = RateLimiter(rate=2.0, burst=4)
    assert buckets.take("k", 4, 100.0).remaining == 0
    refused = buckets.take("k", 3, 100.5)  # 1 token back; 2 more take a second
    assert (refused.allowed, refused.remaining, refused.retry_after) == (False, 1, 1)
    assert refused.headers()["Retry-After"] == "1" and refused.reset == 2
    assert buckets.take("k", 3, 101.5).allowed
    assert buckets.take("k", 1, 1000.0).remaining == 3  # never more than the burst
    assert buckets.take("k", 1, 10.0).remaining == 2  # a clock moved back adds nothing
    assert buckets.take("other", 10, 0.0, rate=1, burst=10).allowed
    slow = buckets.take("other", 1, 0.0, rate=0.1, burst=10)
    assert (slow.allowed, slow.retry_after, slow.reset) == (False, 10, 100)


def test_full_buckets_are_dropped_when_there_are_too_many(monkeypatch: Any) -> None:
    from app.api import ratelimit

    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 3)
    buckets = RateLimiter(rate=1.0, burst=10)
    buckets.take("busy", 10, 0.0)
    buckets.take("slow", 1, 0.0, rate=0.001, burst=10)
    buckets.take("idle", 1, 0.0)
    buckets.take("new", 1, 5.0)  # idle is full again by now: dropped; the others are kept
    assert sorted(buckets._buckets) == ["busy", "new", "slow"]  # a full bucket is no bucket
    assert buckets.take("busy", 10, 5.0).allowed is False
    assert buckets.take("slow", 10, 5.0, rate=0.001, burst=10).allowed is False


# -- per source -----------------------------------------------------------------------------


async def test_a_segment_source_over_its_quota_is_429(svc: Service, clock: FakeClock) -> None:
    r = await svc.client.post(
        "/v1/sources", json={"name": "web", "kind": "segment", "rate_limit": 1, "rate_burst": 3}
    )
    assert r.status_code == 201, r.text
    assert (r.json()["rate_limit"], r.json()["rate_burst"]) == (1, 3)
    wk = basic(r.json()["write_key"])

    def msg(n: int) -> dict[str, Any]:
        return {"type": "track", "userId": "u1", "event": "Demo Requested", "messageId": f"m{n}"}

    r = await svc.client.post("/v1/batch", json={"batch": [msg(1), msg(2), msg(3)]}, headers=wk)
    assert r.status_code == 200 and r.headers["RateLimit-Remaining"] == "0", r.text
    assert assert_limited(await svc.client.post("/v1/batch", json={"batch": [msg(4)]}, headers=wk))
    assert_limited(await svc.client.post("/segment/v1/track", json=msg(5), headers=wk))
    assert await stored(svc) == 3

    clock.advance(1.0)
    assert (await svc.client.post("/v1/track", json=msg(6), headers=wk)).status_code == 200
    r = await svc.client.patch("/v1/sources/web", json={"rate_burst": 50, "rate_limit": None})
    assert r.status_code == 200 and (r.json()["rate_limit"], r.json()["rate_burst"]) == (None, 50)
    clock.advance(1.0)  # at the default rate, well past 10 tokens
    r = await svc.client.post(
        "/v1/batch", json={"batch": [msg(10 + i) for i in range(10)]}, headers=wk
    )
    assert r.status_code == 200 and r.headers["RateLimit-Limit"] == "50", r.text
    bad = await svc.client.patch("/v1/sources/web", json={"rate_limit": -1})
    assert bad.status_code == 422 and bad.json()["field"] == "rate_limit"


async def test_a_hook_source_over_its_quota_is_429(svc: Service, clock: FakeClock) -> None:
    r = await svc.client.post(
        "/v1/sources",
        json={
            "name": "calendly",
            "kind": "calendly",
            "secret": "calendly-signing-key",
            "rate_limit": 1,
            "rate_burst": 1,
        },
    )
    assert r.status_code == 201, r.text

    async def post(invitee: str, key: str = "calendly-signing-key") -> httpx.Response:
        booking = copy.deepcopy(CALENDLY_BOOKING)
        booking["payload"]["created_at"] = ts(clock.now())
        booking["payload"]["uri"] = booking["payload"]["uri"] + invitee
        body = orjson.dumps(booking)
        headers = calendly_headers(key, int(time.time()), body)
        return await svc.client.post(
            "/v1/hooks/calendly",
            content=body,
            headers={"content-type": "application/json", "authorization": "", **headers},
        )

    forged = await post("-0", key="not-the-key")
    assert forged.status_code == 401  # an unsigned request takes nothing from the bucket
    first = await post("-1")
    assert first.status_code == 200 and first.headers["RateLimit-Remaining"] == "0", first.text
    assert_limited(await post("-2"))
    clock.advance(1.0)
    assert (await post("-3")).status_code == 200
    assert await stored(svc) == 2


# -- the size of one event ------------------------------------------------------------------


async def test_an_event_over_32_kb_is_rejected_alone_or_413(svc: Service, clock: FakeClock) -> None:
    big = one(clock, "big-1", properties={"blob": "x" * MAX_EVENT_BYTES})
    assert len(orjson.dumps(big)) > MAX_EVENT_BYTES
    near = one(clock, "near-1", properties={"blob": "y" * (MAX_EVENT_BYTES - 1000)})
    assert len(orjson.dumps(near)) <= MAX_EVENT_BYTES
    bad_email = one(clock, "bad-1")
    bad_email["lead"] = {"email": "not-an-email"}
    batch = {"events": [one(clock, "ok-1"), big, bad_email, near]}
    r = await svc.client.post("/v1/events", json=batch)
    assert r.status_code == 202, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["accepted", "rejected", "rejected", "accepted"]
    assert (results[1]["code"], results[1]["field"], results[1]["event_id"]) == (
        "event_too_large",
        "events[1]",
        "big-1",
    )
    assert results[2]["field"].startswith("events[2].")  # numbered as the batch was sent
    assert await stored(svc) == 2

    alone = await svc.client.post("/v1/events", json=big)
    assert alone.status_code == 413, alone.text
    assert (alone.json()["code"], alone.json()["field"]) == ("event_too_large", "body")
    assert await stored(svc) == 2
