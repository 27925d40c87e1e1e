"""Sales feedback on routed leads: dispositions, addressing, idempotency, learning, SLA."""

from __future__ import annotations

import copy

from app.auth import create_key
from app.clock import FakeClock
from tests.support.harness import Receiver, Service
from tests.support.scenarios import ACME, feedback, hot_events, routed, setup_crm


async def test_dispositions_are_recorded_idempotently_and_shown_on_decision_and_lead(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    await setup_crm(svc, hook)
    decision_id = await routed(svc, hook, clock, "dana@acme.com")

    r = await feedback(svc, decision_id, {"status": "accepted", "crm_id": "00Q123"})
    assert r.status_code == 201, r.text
    first = r.json()
    assert (first["status"], first["duplicate"], first["crm_id"]) == ("accepted", False, "00Q123")
    again = await feedback(svc, decision_id, {"status": "accepted", "crm_id": "00Q123"})
    assert again.status_code == 200
    assert again.json()["duplicate"] is True and again.json()["id"] == first["id"]

    clock.advance(3600)
    # addressed by the CRM's id, then by the lead's email
    r = await feedback(svc, "00Q123", {"status": "opportunity", "value": 48000})
    assert r.status_code == 201, r.text
    assert r.json()["decision_id"] == decision_id
    clock.advance(60)
    r = await feedback(svc, "Dana@Acme.com", {"status": "won", "value": 52000, "note": "2y"})
    assert r.status_code == 201, r.text

    view = (await svc.client.get(f"/v1/decisions/{decision_id}")).json()
    assert view["disposition"] == "won" and view["crm_id"] == "00Q123"
    assert view["accepted_at"] is not None
    assert [(d["status"], d["value"]) for d in view["dispositions"]] == [
        ("accepted", None),
        ("opportunity", 48000),
        ("won", 52000),
    ]
    lead = (await svc.client.get("/v1/leads/dana@acme.com")).json()
    [on_lead] = [d for d in lead["decisions"] if d["id"] == decision_id]
    assert [d["status"] for d in on_lead["dispositions"]] == ["accepted", "opportunity", "won"]


async def test_an_idempotency_key_makes_a_retry_a_duplicate_even_if_the_body_differs(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    await setup_crm(svc, hook)
    decision_id = await routed(svc, hook, clock, "dana@acme.com")
    h = {"idempotency-key": "crm-evt-1"}
    r1 = await feedback(svc, decision_id, {"status": "rejected", "reason": "too_early"}, **h)
    r2 = await feedback(svc, decision_id, {"status": "rejected", "reason": "no_budget"}, **h)
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r2.json()["reason"] == "too_early"
    view = (await svc.client.get(f"/v1/decisions/{decision_id}")).json()
    assert len(view["dispositions"]) == 1


async def test_bad_feedback_is_a_clear_4xx(svc: Service, hook: Receiver, clock: FakeClock) -> None:
    await setup_crm(svc, hook)
    decision_id = await routed(svc, hook, clock, "dana@acme.com")
    cases = [
        ({"status": "rejected"}, "reason", "reason_required"),
        ({"status": "rejected", "reason": "vibes"}, "reason", "unknown_reason"),
        ({"status": "accepted", "reason": "bad_fit"}, "reason", "unexpected_field"),
        ({"status": "accepted", "value": 10}, "value", "unexpected_field"),
        # The body comes through the same reader as every other: the specific cause.
        ({"status": "maybe"}, "status", "literal_error"),
        ({"status": "won", "value": -1}, "value", "greater_than_equal"),
        ({"status": "accepted", "colour": "red"}, "colour", "unknown_field"),
        ({"reason": "bad_fit"}, "status", "missing"),
    ]
    for body, field, code in cases:
        r = await feedback(svc, decision_id, body)
        assert r.status_code == 422, (body, r.text)
        assert (r.json()["field"], r.json()["code"]) == (field, code), (body, r.json())
        assert field in r.json()["message"], r.json()
    url = f"/v1/decisions/{decision_id}/feedback"
    for raw, status, code in (
        (b'{"status": "accep', 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b'{"status": "accepted", "note": "' + b"x" * 2_000_000 + b'"}', 413, "payload_too_large"),
    ):
        r = await svc.client.post(url, content=raw, headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["code"], r.json()["field"]) == (status, code, "body")
    r = await feedback(svc, "dec_00000000000000000000000000", {"status": "accepted"})
    assert (r.status_code, r.json()["code"]) == (404, "decision_not_found")
    r = await feedback(svc, "nobody@acme.com", {"status": "accepted"})
    assert r.status_code == 404
    # the feedback scope is needed: a read key is refused, a feedback key is enough
    for scopes, status in (("read", 403), ("feedback", 201)):
        async with svc.runtime.sessionmaker() as session, session.begin():
            _, key = await create_key(session, name=scopes, scopes=[scopes], now=clock.now())
        async with svc.as_key(key) as c:
            r = await c.post(f"/v1/decisions/{decision_id}/feedback", json={"status": "lost"})
            assert r.status_code == status, r.text


async def test_a_competitor_rejection_teaches_the_policy_when_enabled(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    await setup_crm(svc, hook)
    policy = copy.deepcopy((await svc.client.get("/v1/policy")).json()["policy"])
    policy["feedback"]["learn_from_rejections"] = {"competitor": "competitors"}
    r = await svc.client.put("/v1/policy", json=policy)
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    await svc.client.put(
        "/v1/accounts", json={"accounts": [{**ACME, "domain": "rival.io", "tier": "tier_1"}]}
    )
    decision_id = await routed(svc, hook, clock, "spy@rival.io")
    other = await routed(svc, hook, clock, "spy2@rival.io")

    r = await feedback(svc, decision_id, {"status": "rejected", "reason": "competitor"})
    assert r.status_code == 201, r.text
    assert r.json()["learned_policy_version"] == version + 1
    active = (await svc.client.get("/v1/policy")).json()
    assert active["version"] == version + 1
    assert "rival.io" in active["policy"]["lists"]["competitors"]
    assert "competitor" in active["comment"] and decision_id in active["comment"]
    # a second rejection from the same domain changes nothing more
    r = await feedback(svc, other, {"status": "rejected", "reason": "competitor"})
    assert r.json()["learned_policy_version"] is None
    # the new list is used: a new lead from the rival costs 20 fit points, is not routed
    r = await svc.client.post(
        "/v1/events", json={"events": hot_events("spy3", clock.now(), "spy3@rival.io")}
    )
    assert r.status_code == 202
    lead = (await svc.client.get("/v1/leads/spy3@rival.io")).json()
    assert {"rule": "free_mail_student_or_competitor", "points": -20} in lead["fit_breakdown"]
    assert lead["score"]["band"] != "hot" and lead["decisions"] == []
    # not enabled for other reasons
    third = await routed(svc, hook, clock, "dana@acme.com")
    r = await feedback(svc, third, {"status": "rejected", "reason": "bad_fit"})
    assert r.json()["learned_policy_version"] is None


async def test_acceptance_settles_the_rules_sla(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    await setup_crm(svc, hook)
    policy = copy.deepcopy((await svc.client.get("/v1/policy")).json()["policy"])
    for rule in policy["routing"]["rules"]:
        if rule["name"] == "hot_tier_1":
            rule["sla"] = {"accept_within": "5m", "escalate_to": "fallback_queue"}
    assert (await svc.client.put("/v1/policy", json=policy)).status_code == 200
    on_time = await routed(svc, hook, clock, "dana@acme.com")
    view = (await svc.client.get(f"/v1/decisions/{on_time}")).json()
    assert view["sla"]["status"] == "pending"
    clock.advance(120)
    await feedback(svc, on_time, {"status": "accepted"})
    view = (await svc.client.get(f"/v1/decisions/{on_time}")).json()
    assert view["sla"]["status"] == "met"
