"""Sources as first-class objects: write keys for Segment's SDKs at the root paths, the
browser SDK's settings, short routes and CORS, Segment semantics (clock skew, context,
ids), Segment's limits, and the source debugger that shows every message not stored."""

from __future__ import annotations

import asyncio
import base64
import gzip
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from app.clock import FakeClock
from app.db import events
from tests.support.gate import HeldRead
from tests.support.harness import Service, ts
from tests.support.scenarios import lead, new_key

ORIGIN = "https://www.acme-shop.example"


def basic(key: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def make_source(svc: Service, name: str = "website", **body: Any) -> dict[str, Any]:
    r = await svc.client.post("/v1/sources", json={"name": name, "kind": "segment", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def stored(svc: Service, event_id: str) -> Any:
    async with svc.runtime.sessionmaker() as s:
        return (await s.execute(select(events).where(events.c.event_id == event_id))).first()


async def recent(svc: Service, name: str) -> list[dict[str, Any]]:
    r = await svc.client.get(f"/v1/sources/{name}/recent")
    assert r.status_code == 200, r.text
    return list(r.json()["messages"])


def not_stored(code: str) -> float:
    value = REGISTRY.get_sample_value(
        "intent_source_messages_not_stored_total",
        {"transport": "segment", "outcome": "rejected", "code": code},
    )
    return value or 0.0


# -- the source object ----------------------------------------------------------------------


async def test_a_source_created_while_the_cache_was_being_read_is_found_at_once(
    svc: Service,
) -> None:
    """The gauge sampler reloads the source cache in the background; a load that read the
    table before a create committed must not stand for the cache's second afterwards (what
    made a fresh write key answer 401 on PostgreSQL)."""
    store = svc.runtime.sources
    store.invalidate()
    held = HeldRead(store._sessionmaker)
    store._sessionmaker = held  # type: ignore[assignment]
    background = asyncio.create_task(store.names())
    await held.read.wait()  # it read the table before the source existed
    created = await make_source(svc)
    held.release.set()
    assert "website" not in await background
    r = await svc.client.post(
        "/v1/identify",
        json={"userId": "u1", "messageId": "m1"},
        headers=basic(created["write_key"]),
    )
    assert r.status_code == 200, r.text


async def test_create_list_get_rotate_delete(svc: Service, clock: FakeClock) -> None:
    created = await make_source(svc, allowed_origins=[ORIGIN + "/", "HTTP://Localhost:3000"])
    key = created["write_key"]
    assert key.startswith("wk_") and created["write_key_prefix"] == key[:10]
    assert created["allowed_origins"] == [ORIGIN, "http://localhost:3000"]
    assert created["hook_url"] is None

    listed = (await svc.client.get("/v1/sources")).json()["sources"]
    assert [s["name"] for s in listed] == ["website"]
    assert listed[0]["write_key"] is None and key not in orjson.dumps(listed).decode()

    msg = {"userId": "u1", "event": "Demo Requested", "messageId": "m-rot-1"}
    assert (await svc.client.post("/v1/track", json=msg, headers=basic(key))).status_code == 200
    row = await stored(svc, "m-rot-1")
    assert row.source == "website" and row.type == "demo_request"

    rotated = await svc.client.post("/v1/sources/website/rotate-key")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["write_key"]
    assert new != key
    msg["messageId"] = "m-rot-2"
    old = await svc.client.post("/v1/track", json=msg, headers=basic(key))
    assert old.status_code == 401 and old.json()["field"] == "writeKey"
    assert (await svc.client.post("/v1/track", json=msg, headers=basic(new))).status_code == 200

    assert (await svc.client.delete("/v1/sources/website")).status_code == 204
    msg["messageId"] = "m-rot-3"
    assert (await svc.client.post("/v1/track", json=msg, headers=basic(new))).status_code == 401
    assert (await svc.client.get("/v1/sources/website")).status_code == 404
    assert await stored(svc, "m-rot-3") is None


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"name": "Web Site", "kind": "segment"}, 422, "name"),
        ({"name": "web", "kind": "pigeon"}, 422, "kind"),
        (
            {"name": "web", "kind": "segment", "allowed_origins": ["ftp://x.example"]},
            422,
            "allowed_origins[0]",
        ),
        (
            {"name": "web", "kind": "segment", "allowed_origins": ["https://x.example/path"]},
            422,
            "allowed_origins[0]",
        ),
        ({"name": "web", "kind": "segment", "secret": "s3cret-s3cret"}, 422, "secret"),
        ({"name": "chat", "kind": "intercom"}, 422, "secret"),
        ({"name": "forms", "kind": "typeform", "signal": "carrier_pigeon"}, 422, "signal"),
        (
            {"name": "forms", "kind": "typeform", "allowed_origins": [ORIGIN]},
            422,
            "allowed_origins",
        ),
        ({"name": "web", "kind": "segment", "colour": "red"}, 422, "colour"),
    ],
)
async def test_bad_sources_are_422_naming_the_field(
    svc: Service, body: dict[str, Any], status: int, field: str
) -> None:
    r = await svc.client.post("/v1/sources", json=body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


async def test_duplicate_name_is_409_and_scopes_hold(svc: Service) -> None:
    await make_source(svc)
    again = await svc.client.post("/v1/sources", json={"name": "website", "kind": "segment"})
    assert again.status_code == 409 and again.json()["code"] == "source_exists"
    reader = await new_key(svc, "dash", ["read"])
    async with svc.as_key(reader) as c:
        assert (await c.get("/v1/sources")).status_code == 200
        made = await c.post("/v1/sources", json={"name": "other", "kind": "segment"})
        assert made.status_code == 403
        assert (await c.delete("/v1/sources/website")).status_code == 403


# -- Segment's SDK paths at the root ----------------------------------------------------------


async def test_write_key_in_body_as_text_plain(svc: Service, clock: FakeClock) -> None:
    key = (await make_source(svc))["write_key"]
    body = {
        "writeKey": key,
        "anonymousId": "anon-tp",
        "messageId": "ajs-next-1",
        "properties": {"path": "/pricing"},
        "context": {
            "ip": "203.0.113.9",
            "userAgent": "Mozilla/5.0",
            "page": {
                "path": "/pricing",
                "referrer": "https://news.example/x",
                "url": "https://acme.example/pricing?utm_source=news",
            },
            "campaign": {
                "source": "news",
                "medium": "email",
                "name": "q4",
                "term": "crm",
                "content": "b",
            },
        },
        "integrations": {"All": False},
        "timestamp": ts(clock.now()),
    }
    r = await svc.client.post(
        "/v1/p",
        content=orjson.dumps(body),
        headers={"content-type": "text/plain", "authorization": ""},
    )
    assert r.status_code == 200, r.text
    row = await stored(svc, "ajs-next-1")
    assert row.source == "website" and row.type == "pricing_page_view"
    ev = await svc.client.get("/v1/leads/anon:anon-tp")
    assert ev.status_code == 200
    props = orjson.loads(row.payload)["properties"]
    assert props["ip"] == "203.0.113.9" and props["user_agent"] == "Mozilla/5.0"
    assert props["referrer"] == "https://news.example/x"
    assert {k: props[k] for k in props if k.startswith("utm_")} == {
        "utm_source": "news",
        "utm_medium": "email",
        "utm_campaign": "q4",
        "utm_term": "crm",
        "utm_content": "b",
    }
    assert "integrations" not in props


async def test_batch_sent_at_corrects_clock_skew(svc: Service, clock: FakeClock) -> None:
    key = (await make_source(svc))["write_key"]
    now = clock.now()
    # The client's clock runs an hour fast: it stamped the event 10 s before sending.
    skew = 3600.0
    batch = {
        "batch": [
            {
                "type": "track",
                "userId": "u-skew",
                "event": "Demo Requested",
                "messageId": "skew-1",
                "timestamp": ts(now + skew - 10),
            },
        ],
        "sentAt": ts(now + skew),
    }
    r = await svc.client.post("/v1/batch", json=batch, headers=basic(key))
    assert r.status_code == 200, r.text
    row = await stored(svc, "skew-1")
    assert row.occurred_at == pytest.approx(now - 10, abs=0.01)


async def test_message_without_id_is_the_same_event_when_resent(
    svc: Service, clock: FakeClock
) -> None:
    key = (await make_source(svc))["write_key"]
    msg = {"userId": "u-noid", "event": "Demo Requested", "timestamp": ts(clock.now())}
    for _ in range(2):
        r = await svc.client.post("/v1/track", json=msg, headers=basic(key))
        assert r.status_code == 200
    outcomes = [m["outcome"] for m in await recent(svc, "website")]
    assert outcomes == ["duplicate", "accepted"]
    ids = {m["event_id"] for m in await recent(svc, "website")}
    assert len(ids) == 1 and ids.pop().startswith("seg_")


async def test_api_key_still_sends_and_native_events_take_the_key_name(
    svc: Service, clock: FakeClock
) -> None:
    key = await new_key(svc, "crm-sync", ["ingest"])
    msg = {"userId": "u-api", "event": "Demo Requested", "messageId": "api-1"}
    r = await svc.client.post("/v1/track", json=msg, headers=basic(key))
    assert r.status_code == 200
    assert (await stored(svc, "api-1")).source == "crm-sync"
    native = {
        "event_id": "nat-1",
        "type": "demo_request",
        "occurred_at": ts(clock.now()),
        "lead": {"email": "ana@hooli.com"},
    }
    async with svc.as_key(key) as c:
        r = await c.post("/v1/events", json=native)
        assert r.status_code == 202, r.text
        r = await c.post("/v1/events", json={"events": [{**native, "event_id": "nat-2"}]})
        assert r.status_code == 202, r.text
    assert (await stored(svc, "nat-1")).source == "crm-sync"
    assert (await stored(svc, "nat-2")).source == "crm-sync"


# -- the browser SDK ---------------------------------------------------------------------------


async def test_settings_document_points_the_sdk_back_here(svc: Service) -> None:
    key = (await make_source(svc, allowed_origins=[ORIGIN]))["write_key"]
    r = await svc.client.get(f"/v1/projects/{key}/settings", headers={"origin": ORIGIN})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    doc = r.json()
    host = svc.url.removeprefix("http://")
    assert doc["integrations"] == {
        "Segment.io": {
            "apiKey": key,
            "apiHost": f"{host}/v1",
            "protocol": "http",
            "unbundledIntegrations": [],
            "addBundledMetadata": True,
            "maybeBundledConfigIds": {},
        }
    }
    assert doc["metrics"]["sampleRate"] == 0
    assert (await svc.client.get("/v1/projects/wk_nope/settings")).status_code == 404
    refused = await svc.client.get(
        f"/v1/projects/{key}/settings", headers={"origin": "https://evil.example"}
    )
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers


async def test_preflight_and_origins(svc: Service, clock: FakeClock) -> None:
    key = (await make_source(svc, allowed_origins=[ORIGIN]))["write_key"]
    await make_source(svc, "partner-site", allowed_origins=["https://partner.example"])
    preflight = {
        "origin": ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type, x-retry-count",
    }
    r = await svc.client.options("/v1/t", headers=preflight)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "x-retry-count" in r.headers["access-control-allow-headers"]
    evil = await svc.client.options(
        "/v1/t", headers={**preflight, "origin": "https://evil.example"}
    )
    assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers

    msg = {
        "anonymousId": "anon-cors",
        "event": "Demo Requested",
        "messageId": "cors-1",
        "timestamp": ts(clock.now()),
    }
    ok = await svc.client.post("/v1/t", json=msg, headers={**basic(key), "origin": ORIGIN})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    # Another source's origin passes the preflight but not this source's own check.
    other = await svc.client.post(
        "/v1/t",
        json={**msg, "messageId": "cors-2"},
        headers={**basic(key), "origin": "https://partner.example"},
    )
    assert other.status_code == 403 and other.json()["code"] == "origin_not_allowed"
    assert await stored(svc, "cors-2") is None
    # Server-side SDKs send no Origin and are not asked.
    assert (
        await svc.client.post("/v1/t", json={**msg, "messageId": "cors-3"}, headers=basic(key))
    ).status_code == 200


async def test_short_routes_batch_and_metrics(svc: Service, clock: FakeClock) -> None:
    key = (await make_source(svc))["write_key"]
    now = ts(clock.now())
    r = await svc.client.post(
        "/v1/i",
        json={
            "anonymousId": "anon-s",
            "userId": "u-s",
            "messageId": "i-s",
            "traits": {"email": "sam@hooli.com", "title": "VP Sales"},
            "timestamp": now,
        },
        headers=basic(key),
    )
    assert r.status_code == 200
    r = await svc.client.post(
        "/v1/b",
        json={
            "writeKey": key,
            "sentAt": now,
            "batch": [
                {
                    "type": "track",
                    "userId": "u-s",
                    "event": "Demo Requested",
                    "messageId": "b-1",
                    "timestamp": now,
                },
                {
                    "type": "page",
                    "userId": "u-s",
                    "messageId": "b-2",
                    "timestamp": now,
                    "context": {"page": {"path": "/pricing"}},
                },
            ],
        },
    )
    assert r.status_code == 200, r.text
    view = await lead(svc, "sam@hooli.com")
    assert {s["signal"] for s in view["intent_breakdown"]} >= {"demo_request", "pricing_page_view"}
    for path in ("/v1/m", "/m"):
        m = await svc.client.post(
            path,
            content=b'{"series": []}',
            headers={"content-type": "text/plain", "authorization": ""},
        )
        assert m.status_code == 200


# -- nothing dropped silently; Segment's limits ---------------------------------------------------


async def test_debugger_shows_every_message_not_stored(svc: Service, clock: FakeClock) -> None:
    key = (await make_source(svc))["write_key"]
    before = not_stored("missing_identity")
    now = clock.now()
    batch = {
        "batch": [
            {"type": "track", "event": "Demo Requested", "messageId": "no-who"},
            {
                "type": "track",
                "userId": "u-f",
                "event": "Demo Requested",
                "messageId": "future",
                "timestamp": ts(now + 86400),
            },
            {"type": "launch", "userId": "u-f", "messageId": "odd-type"},
            "not a message",
            {
                "type": "track",
                "userId": "u-f",
                "event": "Demo Requested",
                "messageId": "big",
                "properties": {"blob": "x" * 40_000},
            },
            {
                "type": "track",
                "userId": "u-f",
                "event": "Demo Requested",
                "messageId": "fine",
                "timestamp": ts(now),
            },
        ]
    }
    r = await svc.client.post("/v1/batch", json=batch, headers=basic(key))
    assert r.status_code == 200 and r.json() == {"success": True}
    by_id = {m["message_id"]: m for m in await recent(svc, "website")}
    assert by_id["no-who"]["code"] == "missing_identity"
    assert by_id["future"]["code"] == "occurred_in_future"
    assert by_id["future"]["reason"] == "timestamp: more than 5 minutes in the future"
    assert by_id["odd-type"]["code"] == "unsupported_type"
    assert by_id["big"]["code"] == "message_too_large"
    assert by_id["fine"]["outcome"] == "accepted" and by_id["fine"]["event_type"] == "demo_request"
    assert sum(m["outcome"] == "rejected" for m in by_id.values()) == 5
    assert any(m["code"] == "invalid_message" for m in await recent(svc, "website"))
    assert not_stored("missing_identity") == before + 1
    assert await stored(svc, "future") is None and await stored(svc, "fine") is not None


async def test_segment_batch_limits(svc: Service, clock: FakeClock) -> None:
    key = (await make_source(svc))["write_key"]
    msg = {"type": "track", "userId": "u", "event": "x"}
    many = await svc.client.post("/v1/batch", json={"batch": [msg] * 2501}, headers=basic(key))
    assert many.status_code == 400 and many.json()["code"] == "too_many_messages"
    assert "2500" in many.json()["message"]
    big = [{**msg, "properties": {"p": "y" * 1000}} for _ in range(600)]
    large = await svc.client.post("/v1/batch", json={"batch": big}, headers=basic(key))
    assert large.status_code == 400 and large.json()["code"] == "batch_too_large"
    assert str(500 * 1024) in large.json()["message"]
    # Gzipped (as SDKs may send it), it is refused as it is unpacked, before any parsing.
    packed = gzip.compress(orjson.dumps({"batch": big}))
    assert len(packed) < 500 * 1024
    r = await svc.client.post(
        "/v1/batch",
        content=packed,
        headers={**basic(key), "content-encoding": "gzip", "content-type": "application/json"},
    )
    assert r.status_code == 413 and str(500 * 1024) in r.json()["message"]


async def test_unknown_source_debugger_is_404(svc: Service) -> None:
    r = await svc.client.get("/v1/sources/nope/recent")
    assert r.status_code == 404 and r.json()["code"] == "unknown_source"
