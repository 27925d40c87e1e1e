"""The whole path over real HTTP: events in → scored → routed → signed webhook out."""

from __future__ import annotations

import asyncio
import base64

from standardwebhooks.webhooks import Webhook

from app.clock import FakeClock
from tests.support.harness import Receiver, Service, event
from tests.support.scenarios import ACME, hot_events, lead, route_warm_leads, setup_crm

HOUR = 3600.0


async def test_hot_tier_1_lead_gets_one_signed_explained_webhook(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    dest = await setup_crm(svc, hook)
    batch = {"events": hot_events("a", clock.now())}
    r = await svc.client.post("/v1/events", json=batch)
    assert r.status_code == 202
    assert r.json()["accepted"] == 2

    [got] = await hook.wait_for(1)
    # The reference implementation of the spec verifies our signature.
    payload = Webhook(dest["secret"]).verify(got.body, got.headers)
    data = payload["data"]
    assert payload["type"] == "lead.routed"
    assert got.headers["webhook-id"] == data["decision_id"]
    assert data["lead"]["email"] == "dana@acme.com"
    assert data["account"]["tier"] == "tier_1"
    assert data["rule"] == "hot_tier_1"
    assert data["team"] == "strategic"
    assert data["assignee"] == "jo@ours.example"
    assert data["assignment"] == "account_owner"
    assert data["score"]["band"] == "hot"
    assert abs(data["score"]["total"] - 85.0) < 1e-6
    assert {s["signal"] for s in data["signals"]} == {"demo_request", "pricing_page_view"}
    assert data["trigger_event_id"] == "a-2"
    assert data["policy_version"] == 1
    assert "hot_tier_1" in data["reason"] and "tier_1" in data["reason"]

    # Resending the same events changes nothing: duplicates, same score, no new webhook.
    before = await lead(svc, "dana@acme.com")
    r = await svc.client.post("/v1/events", json=batch)
    assert [x["status"] for x in r.json()["results"]] == ["duplicate", "duplicate"]
    await asyncio.sleep(0.5)
    assert len(hook.requests) == 1
    after = await lead(svc, "dana@acme.com")
    assert after["score"]["intent"] == before["score"]["intent"]
    assert len(after["decisions"]) == 1

    # The decision is explainable later, with its delivery attempt recorded.
    r = await svc.client.get(f"/v1/decisions/{data['decision_id']}")
    decision = r.json()
    assert decision["payload"]["data"] == data
    [delivery] = decision["deliveries"]
    for _ in range(50):
        if delivery["status"] == "delivered":
            break
        await asyncio.sleep(0.05)
        delivery = (await svc.client.get(f"/v1/decisions/{data['decision_id']}")).json()[
            "deliveries"
        ][0]
    assert delivery["status"] == "delivered"
    assert delivery["history"][0]["status_code"] == 204


async def test_cooldown_suppresses_a_flap_and_routes_again_after_it(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    await setup_crm(svc, hook)
    await svc.client.post("/v1/events", json={"events": hot_events("a", clock.now())})
    await hook.wait_for(1)

    async def drop_then_rise(tag: str) -> None:
        # careers views (-10 each) take the lead below the hot exit (70); a demo brings it back
        t = clock.now()
        for i in range(8):
            r = await svc.client.post(
                "/v1/events",
                json=event(f"{tag}-c{i}", "careers_page_view", t, email="dana@acme.com"),
            )
            assert r.status_code == 202
            score = (await lead(svc, "dana@acme.com"))["score"]
            if score["band"] != "hot":
                break
        assert score["band"] == "warm" and score["total"] < 70
        await svc.client.post(
            "/v1/events",
            json={
                "events": [
                    event(f"{tag}-d", "demo_request", t, email="dana@acme.com"),
                    event(f"{tag}-p", "pricing_page_view", t, email="dana@acme.com"),
                ]
            },
        )
        assert (await lead(svc, "dana@acme.com"))["score"]["band"] == "hot"

    clock.advance(1 * HOUR)
    await drop_then_rise("flap")  # inside the 24 h cooldown: no second decision
    await asyncio.sleep(0.5)
    assert len(hook.requests) == 1

    clock.advance(25 * HOUR)
    await drop_then_rise("later")  # after the cooldown: routed again
    got = await hook.wait_for(2)
    assert got[1].json()["data"]["trigger_event_id"] in ("later-d", "later-p")
    assert got[0].headers["webhook-id"] != got[1].headers["webhook-id"]
    assert len((await lead(svc, "dana@acme.com"))["decisions"]) == 2


async def test_escalation_within_cooldown_routes_again(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    """A warm (nurture) decision followed by hot inside the cooldown escalates."""
    await setup_crm(svc, hook)
    assert await route_warm_leads(svc) == 2

    t = clock.now()
    await svc.client.post(
        "/v1/events",
        json={
            "events": [
                event(
                    "w-1", "site_visit", t, email="dana@acme.com", title="VP Sales", account=ACME
                ),
            ]
        },
    )  # fit 50 + 5 = 55 → warm
    [warm] = await hook.wait_for(1)
    assert warm.json()["data"]["rule"] == "warm_nurture"
    assert warm.json()["data"]["assignee"] == "sdr@ours.example"
    assert warm.json()["data"]["policy_version"] == 2

    clock.advance(HOUR)
    await svc.client.post(
        "/v1/events",
        json={
            "events": [
                event("h-1", "demo_request", clock.now(), email="dana@acme.com"),
                event("h-2", "pricing_page_view", clock.now(), email="dana@acme.com"),
            ]
        },
    )
    got = await hook.wait_for(2)
    hot = got[1].json()["data"]
    assert hot["rule"] == "hot_tier_1"
    assert hot["escalation"] is True


async def test_anonymous_history_is_stitched_into_the_email_lead(
    svc: Service, clock: FakeClock
) -> None:
    t = clock.now()
    await svc.client.post(
        "/v1/events",
        json={
            "events": [
                event("s-1", "pricing_page_view", t - 2 * HOUR, anonymous_id="cookie-9"),
                event("s-2", "content_download", t - HOUR, anonymous_id="cookie-9"),
            ]
        },
    )
    anon = await lead(svc, "anon:cookie-9")
    assert anon["lead_id"] == "anon:cookie-9"
    await svc.client.post(
        "/v1/events",
        json={
            "events": [
                event("s-3", "email_click", t, email="Sam@Beta.io", anonymous_id="cookie-9"),
            ]
        },
    )
    sam = await lead(svc, "sam@beta.io")
    by_signal = {s["signal"]: s["score"] for s in sam["intent_breakdown"]}
    assert set(by_signal) == {"pricing_page_view", "content_download", "email_click"}
    expected = 15 * 2 ** (-2 / (7 * 24)) + 10 * 2 ** (-1 / (10 * 24)) + 5
    assert abs(sam["score"]["intent"] - expected) < 1e-3
    assert sam["anonymous_ids"] == ["cookie-9"]
    assert sam["account"]["domain"] == "beta.io"
    # the anonymous id now resolves to the email lead
    assert (await lead(svc, "anon:cookie-9"))["lead_id"] == "sam@beta.io"


async def test_free_mail_never_forms_an_account(svc: Service, clock: FakeClock) -> None:
    await svc.client.post(
        "/v1/events",
        json={
            "events": [
                event("f-1", "site_visit", clock.now(), email="kim@gmail.com"),
            ]
        },
    )
    kim = await lead(svc, "kim@gmail.com")
    assert kim["account"] is None
    assert {"rule": "free_mail_student_or_competitor", "points": -20.0} in kim["fit_breakdown"]
    assert (await svc.client.get("/v1/accounts/gmail.com")).status_code == 404


async def test_late_events_give_the_same_score_in_any_order(svc: Service, clock: FakeClock) -> None:
    t = clock.now()
    kinds = ["demo_request", "site_visit", "pricing_page_view", "email_open", "careers_page_view"]
    times = [t - 50 * HOUR, t - 3 * HOUR, t - 30 * HOUR, t - 1 * HOUR, t - 10 * HOUR]
    a = [
        event(f"o-a{i}", k, ts, email="a@order.io")
        for i, (k, ts) in enumerate(zip(kinds, times, strict=True))
    ]
    b = [
        event(f"o-b{i}", k, ts, email="b@order.io")
        for i, (k, ts) in enumerate(zip(kinds, times, strict=True))
    ]
    for ev in a:
        await svc.client.post("/v1/events", json=ev)
    for ev in reversed(b):
        await svc.client.post("/v1/events", json=ev)
    sa, sb = await lead(svc, "a@order.io"), await lead(svc, "b@order.io")
    assert abs(sa["score"]["intent"] - sb["score"]["intent"]) < 1e-9
    half = {
        "demo_request": 14,
        "site_visit": 3,
        "pricing_page_view": 7,
        "email_open": 5,
        "careers_page_view": 30,
    }
    points = {
        "demo_request": 20,
        "site_visit": 5,
        "pricing_page_view": 15,
        "email_open": 5,
        "careers_page_view": -10,
    }
    expected = sum(
        points[k] * 2 ** (-(t - ts) / (half[k] * 86400)) for k, ts in zip(kinds, times, strict=True)
    )
    assert abs(sa["score"]["intent"] - expected) < 1e-4  # the API rounds to 4 places


async def test_account_surge_routes_to_the_account_owner(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    await svc.client.put(
        "/v1/accounts",
        json={"accounts": [{"domain": "surge.io", "tier": "tier_2", "owner": "ae@ours.example"}]},
    )
    await svc.client.post(
        "/v1/destinations",
        json={"name": "crm", "url": hook.url, "filter": {"type": ["account.surge"]}},
    )
    t = clock.now()
    for i in range(3):  # each lead: 15 + 5 = 20 intent ≥ the 15 active-lead threshold
        r = await svc.client.post(
            "/v1/events",
            json={
                "events": [
                    event(f"sg-{i}-p", "pricing_page_view", t, email=f"p{i}@surge.io"),
                    event(f"sg-{i}-v", "site_visit", t, email=f"p{i}@surge.io"),
                ]
            },
        )
        assert r.status_code == 202
        if i < 2:
            await asyncio.sleep(0.2)
            assert hook.requests == []
    [got] = await hook.wait_for(1)
    data = got.json()["data"]
    assert got.json()["type"] == "account.surge"
    assert data["account"]["domain"] == "surge.io"
    assert data["active_leads"] == 3
    assert data["assignee"] == "ae@ours.example"
    assert data["rule"] == "account_surge"
    acct = (await svc.client.get("/v1/accounts/surge.io")).json()
    assert acct["active_leads"] == 3
    assert abs(acct["intent"] - 60.0) < 1e-6
    assert acct["decisions"][0]["type"] == "account.surge"
    clock.advance(8 * 86400)  # past the 7-day window: nobody is active any more
    assert (await svc.client.get("/v1/accounts/surge.io")).json()["active_leads"] == 0


async def test_round_robin_with_daily_cap_then_default_queue(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    policy = (await svc.client.get("/v1/policy")).json()["policy"]
    policy["teams"]["inbound"] = {
        "members": ["ann@ours.example", "bo@ours.example"],
        "daily_cap": 1,
    }
    assert (await svc.client.put("/v1/policy", json=policy)).status_code == 200
    await svc.client.post("/v1/destinations", json={"name": "crm", "url": hook.url})
    t = clock.now()
    for i in range(3):  # no ABM tier: the hot_inbound rule, round robin
        await svc.client.post(
            "/v1/events", json={"events": hot_events(f"rr{i}", t, f"lead{i}@acme.com")}
        )
    got = await hook.wait_for(3)
    assignees = [g.json()["data"]["assignee"] for g in got]
    assert sorted(assignees[:2]) == ["ann@ours.example", "bo@ours.example"]
    # both members reached their cap of one: the third lead waits in the queue unassigned
    third = got[2].json()["data"]
    assert third["assignee"] is None and third["assignment"] == "default_queue"
    assert third["team"] == "inbound"


async def test_policy_versions_and_dry_run(svc: Service, clock: FakeClock) -> None:
    await svc.client.post("/v1/events", json={"events": hot_events("p", clock.now())})
    await svc.client.post(
        "/v1/events", json=event("p-x", "site_visit", clock.now(), email="cold@else.io")
    )

    async def listed(band: str) -> list[str]:
        r = await svc.client.get("/v1/leads", params={"band": band})
        assert r.status_code == 200, r.text
        return [x["lead_id"] for x in r.json()["leads"]]

    assert await listed("hot") == ["dana@acme.com"]
    assert await listed("cold") == ["cold@else.io"]
    assert (await svc.client.get("/v1/leads", params={"band": "hott"})).status_code == 422
    policy = (await svc.client.get("/v1/policy")).json()["policy"]
    policy["signals"]["demo_request"]["points"] = 0
    r = await svc.client.put("/v1/policy", params={"dry_run": "true"}, json=policy)
    assert r.status_code == 200, r.text
    dry = r.json()
    assert dry["valid"] is True and dry["would_be_version"] == 2
    assert any("demo_request" in c for c in dry["changes"])
    assert dry["band_changes"] == {"hot→warm": 1}
    # a dry run stores nothing
    versions = (await svc.client.get("/v1/policy/versions")).json()["versions"]
    assert [v["version"] for v in versions] == [1]
    # YAML is accepted too, and applying makes a new version that scores use at once
    import yaml

    r = await svc.client.put(
        "/v1/policy", content=yaml.safe_dump(policy), headers={"content-type": "application/yaml"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    dana = await lead(svc, "dana@acme.com")
    assert dana["score"]["policy_version"] == 2
    assert dana["score"]["band"] == "warm"
    assert await listed("hot") == []
    assert await listed("warm") == ["dana@acme.com"]


async def test_webhook_signature_uses_the_whsec_secret(svc: Service, hook: Receiver) -> None:
    dest = await setup_crm(svc, hook)
    raw = base64.b64decode(dest["secret"].removeprefix("whsec_"))
    assert len(raw) >= 24
    r = await svc.client.post(f"/v1/destinations/{dest['id']}/test")
    assert r.json()["delivered"] is True
    [got] = await hook.wait_for(1)
    assert Webhook(dest["secret"]).verify(got.body, got.headers)["type"] == "test.ping"
    listed = (await svc.client.get("/v1/destinations")).json()["destinations"]
    assert listed[0]["secret"] is None  # shown once, never again
