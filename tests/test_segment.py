"""The Segment-compatible routes, driven by Segment's own Python SDK and by raw HTTP.

The SDK sends from a background thread with ``requests``; the service runs in the test's
event loop, so every blocking SDK call goes through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import segment.analytics.request as seg_request
from segment.analytics import Client
from segment.analytics.request import APIError

from app.clock import FakeClock
from tests.support.harness import Service, ts
from tests.support.scenarios import lead, new_key

# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
async def ingest_key(svc: Service) -> str:
    return await new_key(svc, "segment-web", ["ingest"])


def basic(key: str, password: str = "") -> dict[str, str]:
    token = base64.b64encode(f"{key}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


def at(clock: FakeClock, offset: float = 0.0) -> datetime:
    """The service's (fake) now as an aware datetime, for the SDK's ``timestamp``."""
    return datetime.fromtimestamp(clock.now() + offset, UTC)


class Sdk:
    """A background-thread Segment client that records every on_error callback."""

    def __init__(self, svc: Service, write_key: str, **kw: Any) -> None:
        self.errors: list[tuple[Exception, list[dict[str, Any]]]] = []
        self.client = Client(
            write_key=write_key,
            host=f"{svc.url}/segment",
            on_error=lambda exc, batch: self.errors.append((exc, batch)),
            max_retries=0,
            upload_interval=0.05,
            timeout=10,
            **kw,
        )

    async def send(self, *calls: Callable[[Client], Any]) -> None:
        """Enqueue ``calls`` then block (in a thread) until the consumer drained the queue."""
        for call in calls:
            ok, _ = call(self.client)
            assert ok, "the SDK queue refused a message"
        await asyncio.to_thread(self.client.flush)


@pytest.fixture
async def sdk_factory(svc: Service) -> AsyncIterator[Callable[..., Sdk]]:
    made: list[Sdk] = []

    def make(write_key: str, **kw: Any) -> Sdk:
        s = Sdk(svc, write_key, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        if not s.client.sync_mode:
            await asyncio.to_thread(s.client.join)


def signals(view: dict[str, Any]) -> dict[str, float]:
    return {s["signal"]: s["score"] for s in view["intent_breakdown"] if s["score"]}


def fit_rules(view: dict[str, Any]) -> dict[str, float]:
    return {f["rule"]: f["points"] for f in view["fit_breakdown"]}


async def post_segment(
    svc: Service,
    kind: str,
    message: dict[str, Any] | list[Any] | bytes,
    key: str,
    *,
    gzipped: bool = False,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    body = message if isinstance(message, bytes) else orjson.dumps(message)
    hdrs = {"content-type": "application/json", **(headers or basic(key))}
    if gzipped:
        body = gzip.compress(body)
        hdrs["content-encoding"] = "gzip"
    async with httpx.AsyncClient(base_url=svc.url, timeout=30) as c:
        return await c.post(f"/segment/v1/{kind}", content=body, headers=hdrs)


# -- the SDK --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "page_props",
    [
        pytest.param({"url": "https://example.com/pricing"}, id="url"),
        pytest.param({"path": "/pricing", "url": "https://example.com/pricing"}, id="path"),
    ],
)
async def test_sdk_journey_is_accepted_scored_and_stitched(
    svc: Service,
    clock: FakeClock,
    ingest_key: str,
    sdk_factory: Callable[..., Sdk],
    page_props: dict[str, Any],
) -> None:
    sdk = sdk_factory(ingest_key)
    now = at(clock)
    # Anonymous browsing first: a pricing page view before the visitor is known.
    await sdk.send(
        lambda c: c.page(
            anonymous_id="anon-dana",
            name="Pricing",
            properties=page_props,
            timestamp=now,
        )
    )
    assert sdk.errors == []
    anon = await lead(svc, "anon:anon-dana")
    assert anon["email"] is None
    assert signals(anon) == {"pricing_page_view": pytest.approx(15, abs=1e-3)}

    await sdk.send(
        lambda c: c.identify(
            user_id="u-dana",
            anonymous_id="anon-dana",
            traits={
                "email": "Dana@Acme.com",
                "title": "VP Sales",
                "firstName": "Dana",
                "country": "US",
                "company": {"name": "Acme Inc"},
            },
            timestamp=now,
        ),
        lambda c: c.group(
            user_id="u-dana",
            group_id="acme",
            traits={
                "name": "Acme Inc",
                "website": "https://www.acme.com",
                "industry": "Software",
                "employees": 1200,
            },
            timestamp=now,
        ),
        lambda c: c.track(
            user_id="u-dana",
            event="Demo Requested",
            properties={"plan": "enterprise"},
            timestamp=now,
        ),
    )
    assert sdk.errors == []

    view = await lead(svc, "dana@acme.com")
    assert view["lead_id"] == "dana@acme.com"
    assert "anon-dana" in view["anonymous_ids"]
    assert view["account"]["domain"] == "acme.com"
    # Intent: the anonymous pricing view (stitched) plus the demo request, and nothing else
    # (identify and group calls carry no signal).
    assert signals(view) == {
        "demo_request": pytest.approx(20, abs=1e-3),
        "pricing_page_view": pytest.approx(15, abs=1e-3),
    }
    assert view["score"]["intent"] == pytest.approx(35, abs=1e-3)
    # Fit: title and country from identify, size and industry from the group call.
    rules = fit_rules(view)
    assert rules.get("decision_maker_title") == 15
    assert rules.get("location_in_service_area") == 10
    assert rules.get("company_size_in_icp") == 10
    assert rules.get("industry_in_icp") == 10
    assert "free_mail_student_or_competitor" not in rules
    assert view["score"]["fit"] == pytest.approx(45)
    assert view["attributes"].get("title") == "VP Sales"

    # The anonymous id now resolves to the email lead.
    assert (await lead(svc, "anon:anon-dana"))["lead_id"] == "dana@acme.com"

    r = await svc.client.get("/v1/accounts/acme.com")
    assert r.status_code == 200, r.text
    acct = r.json()
    assert acct["employees"] == 1200
    assert acct["industry"] == "software"


async def test_sdk_sync_mode_and_gzip(
    svc: Service, clock: FakeClock, ingest_key: str, sdk_factory: Callable[..., Sdk]
) -> None:
    sdk = sdk_factory(ingest_key, sync_mode=True, gzip=True)
    now = at(clock)

    def calls() -> None:
        sdk.client.identify(
            user_id="u-lee",
            traits={"email": "lee@globex.com", "title": "Head of Growth"},
            timestamp=now,
        )
        sdk.client.page(
            user_id="u-lee",
            properties={"url": "https://globex.example/pricing/teams"},
            timestamp=now,
        )
        sdk.client.track(user_id="u-lee", event="Content Downloaded", timestamp=now)

    await asyncio.to_thread(calls)  # raises APIError on anything but 2xx
    view = await lead(svc, "lee@globex.com")
    assert signals(view) == {
        "pricing_page_view": pytest.approx(15, abs=1e-3),
        "content_download": pytest.approx(10, abs=1e-3),
    }
    assert fit_rules(view).get("decision_maker_title") == 15


async def test_sdk_request_gets_200_success(
    svc: Service, clock: FakeClock, ingest_key: str
) -> None:
    """What the SDK's transport sees: 200 and {"success": true}."""
    msg = {
        "type": "track",
        "event": "Demo Requested",
        "userId": "u-raw",
        "messageId": "m-raw-1",
        "timestamp": ts(clock.now()),
        "context": {"traits": {"email": "raw@initech.com"}},
    }
    res = await asyncio.to_thread(
        seg_request.post, ingest_key, f"{svc.url}/segment", batch=[msg], timeout=10
    )
    assert res.status_code == 200
    assert res.json() == {"success": True}
    assert signals(await lead(svc, "raw@initech.com")) == {
        "demo_request": pytest.approx(20, abs=1e-3)
    }


async def test_sdk_wrong_write_key_reports_error(
    svc: Service, clock: FakeClock, sdk_factory: Callable[..., Sdk]
) -> None:
    """The on_error callback does fire when the service refuses (so its silence means
    something in the tests above)."""
    sdk = sdk_factory("ir_not-a-real-key")
    await sdk.send(lambda c: c.track(user_id="u-x", event="Demo Requested", timestamp=at(clock)))
    assert len(sdk.errors) == 1
    exc, batch = sdk.errors[0]
    assert isinstance(exc, APIError)
    assert exc.status == 401
    assert exc.code == "unauthenticated"
    assert batch[0]["event"] == "Demo Requested"

    sync = sdk_factory("ir_not-a-real-key", sync_mode=True)
    with pytest.raises(APIError) as info:
        await asyncio.to_thread(sync.client.track, user_id="u-x", event="Demo Requested")
    assert info.value.status == 401


async def test_sdk_key_without_ingest_scope_is_403(
    svc: Service, clock: FakeClock, sdk_factory: Callable[..., Sdk]
) -> None:
    read_only = await new_key(svc, "reader", ["read"])
    sdk = sdk_factory(read_only)
    await sdk.send(lambda c: c.track(user_id="u-y", event="Demo Requested", timestamp=at(clock)))
    assert len(sdk.errors) == 1
    exc = sdk.errors[0][0]
    assert isinstance(exc, APIError)
    assert (exc.status, exc.code) == (403, "insufficient_scope")


# -- raw HTTP ------------------------------------------------------------------------------


async def test_direct_page_identify_track_with_basic_auth(
    svc: Service, clock: FakeClock, ingest_key: str
) -> None:
    now = ts(clock.now())
    r = await post_segment(
        svc,
        "page",
        {
            "anonymousId": "a-kim",
            "messageId": "p-1",
            "timestamp": now,
            "context": {"page": {"path": "/pricing/enterprise"}},
        },
        ingest_key,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}
    assert signals(await lead(svc, "anon:a-kim")) == {
        "pricing_page_view": pytest.approx(15, abs=1e-3)
    }

    r = await post_segment(
        svc,
        "identify",
        {
            "anonymousId": "a-kim",
            "userId": "u-kim",
            "messageId": "i-1",
            "timestamp": now,
            "traits": {"email": "kim@hooli.com", "title": "Director of Sales"},
        },
        ingest_key,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}

    r = await post_segment(
        svc,
        "track",
        {"userId": "u-kim", "event": "Demo Requested", "messageId": "t-1", "timestamp": now},
        ingest_key,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}

    view = await lead(svc, "kim@hooli.com")
    assert signals(view) == {
        "demo_request": pytest.approx(20, abs=1e-3),
        "pricing_page_view": pytest.approx(15, abs=1e-3),
    }
    assert fit_rules(view).get("decision_maker_title") == 15
    assert "a-kim" in view["anonymous_ids"]


async def test_gzip_bodies(svc: Service, clock: FakeClock, ingest_key: str) -> None:
    now = ts(clock.now())
    for kind, msg in (
        (
            "identify",
            {
                "userId": "u-gz",
                "timestamp": now,
                "traits": {"email": "gz@umbrella.com", "title": "CTO"},
            },
        ),
        (
            "track",
            {"userId": "u-gz", "event": "Demo Requested", "messageId": "gz-t", "timestamp": now},
        ),
        (
            "page",
            {
                "userId": "u-gz",
                "messageId": "gz-p",
                "timestamp": now,
                "context": {"page": {"url": "https://umbrella.example/pricing?x=1"}},
            },
        ),
    ):
        r = await post_segment(svc, kind, msg, ingest_key, gzipped=True)
        assert r.status_code == 200, (kind, r.text)
        assert r.json() == {"success": True}
    view = await lead(svc, "gz@umbrella.com")
    assert signals(view) == {
        "demo_request": pytest.approx(20, abs=1e-3),
        "pricing_page_view": pytest.approx(15, abs=1e-3),
    }
    assert fit_rules(view).get("decision_maker_title") == 15


async def test_corrupt_gzip_is_400(svc: Service, ingest_key: str) -> None:
    async with httpx.AsyncClient(base_url=svc.url) as c:
        r = await c.post(
            "/segment/v1/track",
            content=b"\x1f\x8bnot really gzip",
            headers={**basic(ingest_key), "content-encoding": "gzip"},
        )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "malformed_gzip"


async def test_batch_route_and_page_mapping(
    svc: Service, clock: FakeClock, ingest_key: str
) -> None:
    now = ts(clock.now())
    batch = {
        "batch": [
            {
                "type": "page",
                "anonymousId": "map-1",
                "messageId": "mp-1",
                "timestamp": now,
                "context": {"page": {"path": "/pricing"}},
            },
            {
                "type": "page",
                "anonymousId": "map-2",
                "messageId": "mp-2",
                "timestamp": now,
                "properties": {"url": "https://x.example/careers/engineering"},
            },
            {
                "type": "page",
                "anonymousId": "map-3",
                "messageId": "mp-3",
                "timestamp": now,
                "context": {"page": {"path": "/jobs"}},
            },
            {
                "type": "page",
                "anonymousId": "map-4",
                "messageId": "mp-4",
                "timestamp": now,
                "name": "/blog/why-intent",
            },
            {
                "type": "screen",
                "anonymousId": "map-5",
                "messageId": "mp-5",
                "timestamp": now,
                "name": "Home",
            },
        ]
    }
    r = await post_segment(svc, "batch", batch, ingest_key)
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}
    expected = {
        "map-1": {"pricing_page_view": 15},
        "map-2": {"careers_page_view": -10},
        "map-3": {"careers_page_view": -10},
        "map-4": {"site_visit": 5},
        "map-5": {"site_visit": 5},
    }
    for anon, want in expected.items():
        got = signals(await lead(svc, f"anon:{anon}"))
        assert got == {k: pytest.approx(v, abs=1e-3) for k, v in want.items()}, anon


async def test_bearer_auth_is_accepted_too(svc: Service, clock: FakeClock, ingest_key: str) -> None:
    r = await post_segment(
        svc,
        "track",
        {
            "userId": "u-b",
            "event": "Email Opened",
            "timestamp": ts(clock.now()),
            "properties": {"email": "bearer@stark.com"},
        },
        ingest_key,
        headers={"authorization": f"Bearer {ingest_key}"},
    )
    assert r.status_code == 200, r.text
    assert signals(await lead(svc, "bearer@stark.com")) == {
        "email_open": pytest.approx(5, abs=1e-3)
    }


async def test_unmapped_track_is_accepted_without_intent(
    svc: Service, clock: FakeClock, ingest_key: str
) -> None:
    now = ts(clock.now())
    r = await post_segment(
        svc,
        "track",
        {
            "userId": "u-um",
            "event": "Demo Requested",
            "messageId": "um-1",
            "timestamp": now,
            "context": {"traits": {"email": "um@wayne.com"}},
        },
        ingest_key,
    )
    assert r.status_code == 200, r.text
    before = await lead(svc, "um@wayne.com")
    assert signals(before) == {"demo_request": pytest.approx(20, abs=1e-3)}

    for i, name in enumerate(("Button Clicked", "demo requested", "Signed Up")):
        r = await post_segment(
            svc,
            "track",
            {
                "userId": "u-um",
                "event": name,
                "messageId": f"um-x{i}",
                "timestamp": now,
                "properties": {"color": "blue"},
            },
            ingest_key,
        )
        assert r.status_code == 200, (name, r.text)
        assert r.json() == {"success": True}
    after = await lead(svc, "um@wayne.com")
    assert signals(after) == signals(before)
    assert after["score"]["intent"] == pytest.approx(before["score"]["intent"])


async def test_resent_message_id_is_counted_once(
    svc: Service, clock: FakeClock, ingest_key: str
) -> None:
    msg = {
        "userId": "u-dup",
        "event": "Demo Requested",
        "messageId": "dup-1",
        "timestamp": ts(clock.now()),
        "context": {"traits": {"email": "dup@cyberdyne.com"}},
    }
    for _ in range(3):
        r = await post_segment(svc, "track", msg, ingest_key)
        assert r.status_code == 200, r.text
        assert r.json() == {"success": True}
    # And once more inside a batch, as an SDK retry would.
    r = await post_segment(svc, "batch", {"batch": [{**msg, "type": "track"}] * 2}, ingest_key)
    assert r.status_code == 200, r.text
    view = await lead(svc, "dup@cyberdyne.com")
    assert signals(view) == {"demo_request": pytest.approx(20, abs=1e-3)}
    assert view["score"]["intent"] == pytest.approx(20, abs=1e-3)


async def test_resent_message_id_via_sdk_is_counted_once(
    svc: Service, clock: FakeClock, ingest_key: str, sdk_factory: Callable[..., Sdk]
) -> None:
    sdk = sdk_factory(ingest_key)
    now = at(clock)
    track = {
        "user_id": "u-sd",
        "event": "Demo Requested",
        "message_id": "sdk-dup-1",
        "timestamp": now,
        "context": {"traits": {"email": "sd@oscorp.com"}},
    }
    await sdk.send(lambda c: c.track(**track), lambda c: c.track(**track))
    await sdk.send(lambda c: c.track(**track))
    assert sdk.errors == []
    assert signals(await lead(svc, "sd@oscorp.com")) == {
        "demo_request": pytest.approx(20, abs=1e-3)
    }


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-auth"),
        pytest.param(basic("ir_wrong-key"), id="wrong-basic"),
        pytest.param({"authorization": "Bearer ir_wrong-key"}, id="wrong-bearer"),
        pytest.param(basic(""), id="empty-user"),
        pytest.param({"authorization": "Basic !!!not-base64"}, id="garbage-basic"),
    ],
)
async def test_bad_credentials_are_401(
    svc: Service, clock: FakeClock, headers: dict[str, str]
) -> None:
    msg = {"userId": "u-401", "event": "Demo Requested", "timestamp": ts(clock.now())}
    r = await post_segment(svc, "track", msg, "", headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "unauthenticated"


async def test_key_without_ingest_scope_is_403(svc: Service, clock: FakeClock) -> None:
    key = await new_key(svc, "reader", ["read", "feedback"])
    for kind in ("track", "identify", "page", "batch"):
        r = await post_segment(svc, kind, {"userId": "u-403", "event": "x"}, key)
        assert r.status_code == 403, (kind, r.text)
        assert r.json()["code"] == "insufficient_scope"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"   ", b'{"userId": "u", "event": "Demo Requested"'],
    ids=["garbage", "empty", "blank", "truncated"],
)
async def test_malformed_json_is_400(svc: Service, ingest_key: str, body: bytes) -> None:
    async with httpx.AsyncClient(base_url=svc.url) as c:
        r = await c.post(
            "/segment/v1/track",
            content=body,
            headers={**basic(ingest_key), "content-type": "application/json"},
        )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "malformed_json"


# -- bugs: messages that crash the Segment routes -------------------------------------------
#
# Each is one message the SDK sends verbatim; a 5xx makes the SDK retry the whole batch (and
# finally drop it), so one such message also loses every valid message batched with it.


@pytest.mark.parametrize("route", ["page", "batch"])
async def test_page_with_properties_path(
    svc: Service, clock: FakeClock, ingest_key: str, route: str
) -> None:
    now = ts(clock.now())
    page = {
        "type": "page",
        "anonymousId": "pp-1",
        "messageId": "pp-page",
        "timestamp": now,
        "properties": {"path": "/pricing", "title": "Pricing"},
    }
    track = {
        "type": "track",
        "anonymousId": "pp-1",
        "messageId": "pp-track",
        "event": "Email Opened",
        "timestamp": now,
    }
    msg = {"batch": [track, page]} if route == "batch" else page
    r = await post_segment(svc, route, msg, ingest_key)
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}
    want = {"pricing_page_view": 15} | ({"email_open": 5} if route == "batch" else {})
    got = signals(await lead(svc, "anon:pp-1"))
    assert got == {k: pytest.approx(v, abs=1e-3) for k, v in want.items()}


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        pytest.param(
            "track",
            {"event": "Demo Requested", "properties": {"segment_event": "x"}},
            id="track-properties-segment_event",
        ),
        pytest.param(
            "track",
            {"event": "Demo Requested", "timestamp": "0001-01-01T00:00:00+14:00"},
            id="timestamp-before-year-1",
        ),
        pytest.param(
            "track",
            {"event": "Demo Requested", "timestamp": "9999-12-31T23:59:59-14:00"},
            id="timestamp-after-9999",
        ),
        pytest.param(
            "track",
            {
                "event": "Demo Requested",
                "originalTimestamp": "0001-01-01T00:00:00Z",
                "sentAt": "9999-01-01T00:00:00Z",
            },
            id="clock-skew-correction-overflow",
        ),
        pytest.param(
            "identify",
            {
                "traits": {
                    "email": "inf@acme.com",
                    "company": {"website": "acme.com", "employees": "inf"},
                }
            },
            id="employees-inf-string",
        ),
        pytest.param("page", {"properties": {"url": "http://[::1"}}, id="page-url-unparseable"),
        pytest.param(
            "group",
            b'{"userId": "u-odd", "groupId": "g", "traits": {"website": "acme.com", '
            b'"employees": 1000000000000000000000000000000}}',
            id="group-employees-huge",
        ),
        pytest.param("track", {"event": ["not", "a", "string"], "messageId": 5}, id="odd-types"),
        pytest.param("alias", {"previousId": "anon-z"}, id="alias"),
        pytest.param("screen", {"name": "Home"}, id="screen"),
        pytest.param("track", {}, id="empty-message"),
    ],
)
async def test_odd_messages_are_answered_200(
    svc: Service, ingest_key: str, kind: str, message: dict[str, Any] | bytes
) -> None:
    msg = message if isinstance(message, bytes) else {"userId": "u-odd", **message}
    r = await post_segment(svc, kind, msg, ingest_key)
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}


async def test_non_object_bodies(svc: Service, ingest_key: str) -> None:
    r = await post_segment(svc, "track", [1, 2], ingest_key)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_body"
    r = await post_segment(svc, "batch", {"batch": "nope"}, ingest_key)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "batch"
