"""Kafka ingestion against a real broker: consumer group, DLQ, scale-out, crashes."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.clock import Clock, FakeClock
from app.config import Settings
from app.events import Event, EventStatus
from app.ingest.kafka import KafkaIngest, ensure_topics
from app.policy.defaults import default_policy_raw
from app.policy.schema import CompiledPolicy
from app.policy.store import validate_or_raise
from tests.support.harness import Spawned, event, eventually, receiver, service
from tests.support.kafka import dead_letters


async def lead_or_none(client: httpx.AsyncClient, lead_id: str) -> dict[str, Any] | None:
    r = await client.get(f"/v1/leads/{lead_id}")
    return r.json() if r.status_code == 200 else None


async def test_consumer_scores_native_and_cloudevents_and_dead_letters_poison(
    kafka_settings: Settings,
    clock: FakeClock,
    producer: AIOKafkaProducer,
    topic: str,
    bootstrap: str,
) -> None:
    async with service(kafka_settings, clock) as svc:
        t = clock.now()
        native = event("k-1", "pricing_page_view", t, email="ana@kafka.io")
        cloud = {
            "specversion": "1.0",
            "id": "ce-1",
            "source": "/web",
            "type": "intent.event",
            "datacontenttype": "application/json",
            "data": event("k-2", "demo_request", t, email="ana@kafka.io"),
        }
        poison: list[tuple[bytes, list[tuple[str, bytes]], str]] = [
            (b"{not json", [], "decode"),
            (orjson.dumps(event("k-3", "site_visit", t, email="not-an-email")), [], "validate"),
            (
                orjson.dumps(event("k-4", "site_visit", t, email="x@kafka.io")),
                [("schema-version", b"7")],
                "version",
            ),
            (orjson.dumps({**cloud, "specversion": "0.3"}), [], "version"),
            (orjson.dumps(event("k-5", "teleport", t, email="x@kafka.io")), [], "policy"),
        ]
        key = b"kafka.io"  # one partition: the valid events after the poison must still flow
        sent = [
            await producer.send_and_wait(topic, value, key=key, headers=headers)
            for value, headers, _ in poison
        ]
        await producer.send_and_wait(topic, orjson.dumps(native), key=key)
        await producer.send_and_wait(topic, orjson.dumps(cloud), key=key)
        await producer.send_and_wait(topic, orjson.dumps(native), key=key)  # redelivered

        async def scored() -> Any:
            ana = await lead_or_none(svc.client, "ana@kafka.io")
            return ana if ana and len(ana["intent_breakdown"]) == 2 else None

        ana = await eventually(scored)
        assert abs(ana["score"]["intent"] - 35.0) < 1e-3  # the duplicate counted once
        dlq = await dead_letters(bootstrap, topic, len(poison))
        assert len(dlq) == len(poison)
        for rec, (value, _, stage), meta in zip(dlq, poison, sent, strict=True):
            headers = dict(rec.headers)
            assert rec.value == value
            assert headers["error-stage"].decode() == stage
            assert headers["error"]
            assert headers["original-topic"].decode() == topic
            assert int(headers["original-partition"]) == meta.partition
            assert int(headers["original-offset"]) == meta.offset
        assert dict(dlq[1].headers)["error-field"] == b"lead.email"


@pytest.mark.parametrize("follow_up_ms", [0, 5_000])
async def test_a_poll_also_takes_what_reached_the_broker_while_the_last_batch_was_applied(
    bootstrap: str, topic: str, producer: AIOKafkaProducer, follow_up_ms: int
) -> None:
    """aiokafka fetches nothing more from a broker while records it fetched are untaken:
    without the second getmany, a batch is one transaction behind (follow_up_ms=0 shows
    the fetcher's behaviour the poll works around)."""
    await ensure_topics(bootstrap, topic, 1)

    async def unused(events: list[Event]) -> list[EventStatus]:
        raise AssertionError("the poll alone is under test")

    ingest = KafkaIngest(
        unused,
        policy=lambda: CompiledPolicy(1, validate_or_raise(default_policy_raw())),
        clock=Clock(),
        bootstrap=bootstrap,
        topic=topic,
        group="unused",
        follow_up_ms=follow_up_ms,
    )
    consumer = AIOKafkaConsumer(  # started once the first ten are on the broker
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    for i in range(10):
        await producer.send_and_wait(topic, b"a%d" % i)
    await consumer.start()
    ingest.consumer = consumer
    try:
        first = await consumer.getone()  # one fetch brought all ten; nine wait in the buffer
        assert first.value == b"a0"
        for i in range(10):
            await producer.send_and_wait(topic, b"b%d" % i)
        await asyncio.sleep(0.5)  # as if applying a batch
        batches = await ingest._poll()
        values = [r.value for records in batches.values() for r in records]
        earlier = [b"a%d" % i for i in range(1, 10)]
        if follow_up_ms:
            assert values == earlier + [b"b%d" % i for i in range(10)]
        else:
            assert values == earlier
    finally:
        await consumer.stop()


async def test_http_ingest_produces_to_kafka_and_the_consumer_scores(
    kafka_settings: Settings,
    clock: FakeClock,
) -> None:
    async with receiver() as hook, service(kafka_settings, clock) as svc:
        await svc.client.put(
            "/v1/accounts",
            json={
                "accounts": [{"domain": "acme.com", "tier": "tier_1", "owner": "jo@ours.example"}]
            },
        )
        await svc.client.post("/v1/destinations", json={"name": "crm", "url": hook.url})
        from tests.support.scenarios import hot_events

        r = await svc.client.post("/v1/events", json={"events": hot_events("h", clock.now())})
        assert r.status_code == 202
        assert [x["status"] for x in r.json()["results"]] == ["accepted", "accepted"]
        [got] = await hook.wait_for(1, within=20)
        assert got.json()["data"]["lead"]["email"] == "dana@acme.com"
        assert got.json()["data"]["trigger_event_id"] == "h-2"


def account_events(n_accounts: int, per_account: int, t: float) -> list[dict[str, Any]]:
    kinds = ["site_visit", "pricing_page_view", "email_open", "content_download"]
    out = []
    for a in range(n_accounts):
        for i in range(per_account):
            out.append(
                event(f"s-{a}-{i}", kinds[i % len(kinds)], t - i * 60, email=f"p{i % 5}@acct{a}.io")
            )
    return out


def expected_account_intent(events: list[dict[str, Any]], t: float) -> dict[str, float]:
    spec = {
        "site_visit": (5, 3),
        "pricing_page_view": (15, 7),
        "email_open": (5, 5),
        "content_download": (10, 10),
    }
    from datetime import datetime

    out: dict[str, float] = {}
    for ev in events:
        points, days = spec[ev["type"]]
        te = datetime.fromisoformat(ev["occurred_at"].replace("Z", "+00:00")).timestamp()
        domain = ev["lead"]["email"].split("@")[1]
        out[domain] = out.get(domain, 0.0) + points * 2 ** (-(t - te) / (days * 86400))
    return out


async def test_two_processes_share_the_partitions_and_one_stops_mid_stream(
    database_url: str,
    bootstrap: str,
    topic: str,
) -> None:
    """Two service processes, a 4-partition topic; one is killed halfway. Per-account
    scores are exactly what the events imply: none lost, none double-counted."""
    env = {
        "INTENT_DATABASE_URL": database_url,
        "INTENT_KAFKA_BOOTSTRAP": bootstrap,
        "INTENT_KAFKA_TOPIC": topic,
        "INTENT_KAFKA_GROUP": f"g-{uuid.uuid4().hex[:8]}",
        "INTENT_KAFKA_PARTITIONS": "4",
    }
    a, b = Spawned(env), Spawned(env)
    try:
        a.start()
        key = a.read_key()
        b.start()
        t = time.time()
        events = account_events(40, 25, t)  # 1,000 events over 40 accounts
        half = len(events) // 2
        async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {key}"}) as c:
            for i in range(0, half, 50):
                target = a.url if (i // 50) % 2 else b.url
                r = await c.post(f"{target}/v1/events", json={"events": events[i : i + 50]})
                assert r.status_code == 202, r.text
            a.kill()  # mid-stream: its partitions move to b
            for i in range(half, len(events), 50):
                r = await c.post(f"{b.url}/v1/events", json={"events": events[i : i + 50]})
                assert r.status_code == 202, r.text
            # and everything again: redelivery must not double-count
            for i in range(0, len(events), 100):
                await c.post(f"{b.url}/v1/events", json={"events": events[i : i + 100]})

            expected = expected_account_intent(events, time.time())

            async def settled() -> Any:
                got = {}
                for domain in expected:
                    r = await c.get(f"{b.url}/v1/accounts/{domain}")
                    if r.status_code != 200:
                        return None
                    got[domain] = r.json()["intent"]
                return got if all(abs(got[d] - expected[d]) < 0.01 for d in expected) else None

            got = await eventually(settled, within=60)
            for domain, value in expected.items():
                assert abs(got[domain] - value) < 0.01, domain
    finally:
        a.stop()
        b.stop()


async def test_sigkill_mid_batch_counts_every_event_once(
    database_url: str,
    bootstrap: str,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    """The consumer process is SIGKILLed while it works through a backlog; after a restart
    every event counts exactly once and every decision is delivered, same webhook-id."""
    async with receiver() as hook:
        env = {
            "INTENT_DATABASE_URL": database_url,
            "INTENT_KAFKA_BOOTSTRAP": bootstrap,
            "INTENT_KAFKA_TOPIC": topic,
            "INTENT_KAFKA_GROUP": f"g-{uuid.uuid4().hex[:8]}",
            "INTENT_DELIVERY_ALLOWED_HOSTS": "127.0.0.1",
            "INTENT_BATCH_MAX_EVENTS": "200",
            "INTENT_DELIVERY_LEASE_SECONDS": "2",
        }
        proc = Spawned(env)
        try:
            proc.start()
            key = proc.read_key()
            headers = {"authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(base_url=proc.url, timeout=30, headers=headers) as c:
                await c.post("/v1/destinations", json={"name": "crm", "url": hook.url})
            t = time.time()
            # 300 hot leads (fit 50 + 20 + 15) among 6,000 events in total
            hot = [
                e
                for i in range(300)
                for e in (
                    event(
                        f"h-{i}-p",
                        "pricing_page_view",
                        t,
                        email=f"vp{i}@big{i % 30}.io",
                        title="VP Sales",
                        account={
                            "domain": f"big{i % 30}.io",
                            "industry": "software",
                            "employees": 1200,
                            "country": "US",
                            "annual_revenue": 5e7,
                        },
                    ),
                    event(f"h-{i}-d", "demo_request", t, email=f"vp{i}@big{i % 30}.io"),
                )
            ]
            filler = [
                event(f"f-{i}", "site_visit", t, email=f"f{i}@big{i % 30}.io") for i in range(5400)
            ]
            for ev in hot + filler:
                await producer.send(
                    topic, orjson.dumps(ev), key=ev["lead"]["email"].split("@")[1].encode()
                )
            await producer.flush()

            async def some_applied() -> bool:
                async with httpx.AsyncClient(base_url=proc.url, headers=headers) as c:
                    r = await c.get("/metrics")
                    for line in r.text.splitlines():
                        if line.startswith("intent_pipeline_batch_events_count"):
                            return float(line.split()[-1]) >= 3
                return False

            try:
                await eventually(some_applied, within=60)
            except AssertionError:
                raise AssertionError("".join(proc.output[-80:])) from None
            proc.kill()
            proc.start()
            async with httpx.AsyncClient(base_url=proc.url, timeout=30, headers=headers) as c:

                async def all_routed() -> bool:
                    return len({r.headers["webhook-id"] for r in hook.requests}) >= 300

                try:
                    await eventually(all_routed, within=120)
                except AssertionError:
                    raise AssertionError("".join(proc.output[-80:])) from None
                for i in range(0, 300, 37):
                    r = await c.get(f"/v1/leads/vp{i}@big{i % 30}.io")
                    assert r.status_code == 200, r.text
                    vp = r.json()
                    assert abs(vp["score"]["intent"] - 35.0) < 0.01
                    assert len(vp["decisions"]) == 1
                for i in range(0, 5400, 271):
                    lead_id = f"f{i}@big{i % 30}.io"
                    try:
                        f = await eventually(lambda lead_id=lead_id: lead_or_none(c, lead_id), 60)
                    except AssertionError:
                        raise AssertionError(lead_id + "".join(proc.output[-80:])) from None
                    assert abs(f["score"]["intent"] - 5.0) < 0.01
            ids = {r.headers["webhook-id"] for r in hook.requests}
            assert len(ids) == 300  # every decision delivered; repeats share their id
            leads = {r.json()["data"]["lead"]["email"] for r in hook.requests}
            assert len(leads) == 300
        finally:
            proc.stop()


async def test_roles_split_api_from_consumer_and_dispatcher(
    database_url: str,
    bootstrap: str,
    topic: str,
) -> None:
    """An api-only process produces; a consumer+dispatcher process applies and delivers."""
    async with receiver() as hook:
        base = {
            "INTENT_DATABASE_URL": database_url,
            "INTENT_KAFKA_BOOTSTRAP": bootstrap,
            "INTENT_KAFKA_TOPIC": topic,
            "INTENT_KAFKA_GROUP": f"g-{uuid.uuid4().hex[:8]}",
            "INTENT_DELIVERY_ALLOWED_HOSTS": "127.0.0.1",
        }
        api = Spawned({**base, "INTENT_ROLES": "api"})
        worker = Spawned({**base, "INTENT_ROLES": "consumer,dispatcher"})
        try:
            api.start()
            key = api.read_key()
            worker.start()
            async with httpx.AsyncClient(
                base_url=api.url, timeout=30, headers={"authorization": f"Bearer {key}"}
            ) as c:
                ready = (await c.get("/readyz")).json()["checks"]
                # this process only takes HTTP: no dispatcher or consumer to be ready
                assert "dispatcher" not in ready and "consumer" not in ready
                worker_ready = (await c.get(worker.url + "/readyz")).json()["checks"]
                assert worker_ready["dispatcher"] == "running"
                assert worker_ready["consumer"]["partitions"] == [0, 1, 2, 3]
                await c.put(
                    "/v1/accounts",
                    json={
                        "accounts": [
                            {"domain": "acme.com", "tier": "tier_1", "owner": "jo@ours.example"}
                        ]
                    },
                )
                await c.post("/v1/destinations", json={"name": "crm", "url": hook.url})
                from tests.support.scenarios import hot_events

                r = await c.post("/v1/events", json={"events": hot_events("roles", time.time())})
                assert r.status_code == 202
            [got] = await hook.wait_for(1, within=30)
            async with httpx.AsyncClient() as plain:
                scraped = (await plain.get(worker.url + "/metrics")).text
            lag = [ln for ln in scraped.splitlines() if ln.startswith("intent_kafka_consumer_lag{")]
            assert lag and all(f'topic="{topic}"' in ln for ln in lag), lag
            assert all(float(ln.split()[-1]) == 0 for ln in lag), lag  # caught up
            assert got.json()["data"]["trigger_event_id"] == "roles-2"
        finally:
            api.stop()
            worker.stop()
