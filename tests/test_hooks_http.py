"""``POST /v1/hooks/{name}`` against the real service: each platform's documented payload,
signed as its platform signs, scores the right signal once; a wrong or stale signature is
a 401 that stores nothing; what cannot be used is a 2xx and shows in the debugger.

The payloads and signing helpers are the unit tests' (tests/test_hooks.py), written from
each platform's public documentation."""

from __future__ import annotations

import copy
import time
from typing import Any

import orjson
from sqlalchemy import func, select

from app.clock import FakeClock
from app.db import events
from tests.support.harness import Service, ts
from tests.support.scenarios import lead
from tests.test_hooks import (
    CALENDLY_BOOKING,
    GENERIC_BODY,
    GENERIC_CONFIG,
    GOOGLE_LEAD,
    INTERCOM_LEAD,
    TYPEFORM_RESPONSE,
    calendly_headers,
    generic_headers,
    intercom_headers,
    typeform_headers,
)


async def add_source(svc: Service, name: str, kind: str, **body: Any) -> dict[str, Any]:
    r = await svc.client.post("/v1/sources", json={"name": name, "kind": kind, **body})
    assert r.status_code == 201, r.text
    assert r.json()["hook_url"] == f"{svc.url}/v1/hooks/{name}"
    return dict(r.json())


async def post_hook(svc: Service, name: str, body: bytes, headers: dict[str, str]) -> Any:
    # No API key: a platform authenticates with its signature alone.
    return await svc.client.post(
        f"/v1/hooks/{name}",
        content=body,
        headers={"content-type": "application/json", "authorization": "", **headers},
    )


async def count_events(svc: Service, type_: str) -> int:
    async with svc.runtime.sessionmaker() as s:
        q = select(func.count()).select_from(events).where(events.c.type == type_)
        return int((await s.execute(q)).scalar_one())


async def recent(svc: Service, name: str) -> list[dict[str, Any]]:
    r = await svc.client.get(f"/v1/sources/{name}/recent")
    assert r.status_code == 200, r.text
    return list(r.json()["messages"])


def intent_of(view: dict[str, Any]) -> dict[str, float]:
    return {s["signal"]: s["score"] for s in view["intent_breakdown"] if s["score"]}


async def test_google_ads_lead_form(svc: Service, clock: FakeClock) -> None:
    created = await add_source(svc, "google-ads", "google_ads_lead_form")
    secret = created["secret"]
    assert created["signal"] == "form_submission" and len(secret) >= 16
    lead_form = {**GOOGLE_LEAD, "google_key": secret, "lead_submit_time": ts(clock.now())}
    body = orjson.dumps(lead_form)
    for _ in range(2):  # Google retries until it gets a 200: the retry counts once
        r = await post_hook(svc, "google-ads", body, {})
        assert r.status_code == 200, r.text
    view = await lead(svc, "dana.scully@acme.com")
    assert intent_of(view) == {"form_submission": 15.0}
    assert [m["outcome"] for m in await recent(svc, "google-ads")] == ["duplicate", "accepted"]

    wrong = await post_hook(svc, "google-ads", orjson.dumps({**lead_form, "google_key": "x"}), {})
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_signature"
    assert (await recent(svc, "google-ads"))[0]["code"] == "invalid_signature"

    test_lead = {**lead_form, "lead_id": "test-1", "is_test": True}
    r = await post_hook(svc, "google-ads", orjson.dumps(test_lead), {})
    assert r.status_code == 200
    newest = (await recent(svc, "google-ads"))[0]
    assert (newest["outcome"], newest["code"]) == ("ignored", "test_lead")
    assert await count_events(svc, "form_submission") == 1


async def test_calendly_booking(svc: Service, clock: FakeClock) -> None:
    await add_source(svc, "calendly", "calendly", secret="calendly-signing-key")
    booking = copy.deepcopy(CALENDLY_BOOKING)
    booking["payload"]["created_at"] = ts(clock.now())
    body = orjson.dumps(booking)
    now = int(time.time())
    r = await post_hook(svc, "calendly", body, calendly_headers("calendly-signing-key", now, body))
    assert r.status_code == 200, r.text
    assert intent_of(await lead(svc, "fox.mulder@acme.com")) == {"meeting_booked": 20.0}

    stale = await post_hook(
        svc, "calendly", body, calendly_headers("calendly-signing-key", now - 600, body)
    )
    assert stale.status_code == 401 and stale.json()["code"] == "stale_signature"
    forged = await post_hook(svc, "calendly", body, calendly_headers("not-the-key", now, body))
    assert forged.status_code == 401 and forged.json()["code"] == "invalid_signature"
    missing = await post_hook(svc, "calendly", body, {})
    assert missing.status_code == 401 and missing.json()["code"] == "missing_signature"
    assert await count_events(svc, "meeting_booked") == 1


async def test_typeform_with_a_per_source_signal_and_no_email(
    svc: Service, clock: FakeClock
) -> None:
    created = await add_source(svc, "demo-form", "typeform", signal="demo_request")
    secret = created["secret"]
    response = copy.deepcopy(TYPEFORM_RESPONSE)
    response["form_response"]["submitted_at"] = ts(clock.now())
    body = orjson.dumps(response)
    r = await post_hook(svc, "demo-form", body, typeform_headers(secret, body))
    assert r.status_code == 200, r.text
    assert intent_of(await lead(svc, "laura@example.com")) == {"demo_request": 20.0}

    anonymous = copy.deepcopy(response)
    form = anonymous["form_response"]
    form["token"] = "no-email-token"
    form["answers"] = [a for a in form["answers"] if a["type"] != "email"]
    form["hidden"] = {}
    body = orjson.dumps(anonymous)
    r = await post_hook(svc, "demo-form", body, typeform_headers(secret, body))
    assert r.status_code == 200  # else Typeform retries a message that can never be used
    newest = (await recent(svc, "demo-form"))[0]
    assert newest["outcome"] == "rejected" and "email" in newest["reason"]
    assert await count_events(svc, "demo_request") == 1


async def test_intercom_needs_its_client_secret_and_answers_ping(
    svc: Service, clock: FakeClock
) -> None:
    r = await svc.client.post("/v1/sources", json={"name": "chat", "kind": "intercom"})
    assert r.status_code == 422 and r.json()["code"] == "secret_required"
    await add_source(svc, "chat", "intercom", secret="intercom-client-secret")
    body = orjson.dumps({**INTERCOM_LEAD, "created_at": int(clock.now())})
    r = await post_hook(svc, "chat", body, intercom_headers("intercom-client-secret", body))
    assert r.status_code == 200, r.text
    assert await count_events(svc, "chat_message") == 1
    ping = orjson.dumps({**INTERCOM_LEAD, "topic": "ping", "id": "notif_ping"})
    r = await post_hook(svc, "chat", ping, intercom_headers("intercom-client-secret", ping))
    assert r.status_code == 200
    assert (await recent(svc, "chat"))[0]["outcome"] == "ignored"
    rotate = await svc.client.post("/v1/sources/chat/rotate-key")
    assert rotate.status_code == 422 and rotate.json()["code"] == "secret_from_platform"


async def test_generic_source(svc: Service, clock: FakeClock) -> None:
    await add_source(
        svc,
        "acme-app",
        "generic",
        secret="generic-key",
        signal="form_submission",
        config=GENERIC_CONFIG,
    )
    body = orjson.dumps(GENERIC_BODY)
    now = int(time.time())
    r = await post_hook(svc, "acme-app", body, generic_headers("generic-key", now, body))
    assert r.status_code == 200, r.text
    outcomes = sorted(m["outcome"] for m in await recent(svc, "acme-app"))
    assert outcomes.count("rejected") >= 1 and "accepted" in outcomes
    bad = await svc.client.post(
        "/v1/sources",
        json={
            "name": "bad",
            "kind": "generic",
            "secret": "generic-key",
            "config": {"mapping": {"event_id": "id[", "lead.email": "e"}},
        },
    )
    assert bad.status_code == 422 and bad.json()["field"].startswith("config.")


async def test_unknown_hooks_are_404(svc: Service) -> None:
    r = await post_hook(svc, "nobody", b"{}", {})
    assert r.status_code == 404 and r.json()["code"] == "unknown_source"
    await svc.client.post("/v1/sources", json={"name": "website", "kind": "segment"})
    r = await post_hook(svc, "website", b"{}", {})
    assert r.status_code == 404  # a Segment source takes no platform webhooks
    await add_source(svc, "forms", "typeform")
    r = await post_hook(svc, "forms", b"not json", {"Typeform-Signature": "sha256=x"})
    assert r.status_code in (400, 401)
