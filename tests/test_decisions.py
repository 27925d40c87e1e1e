"""The decisions read API: lists summarise each decision's webhooks; one decision shows the
webhook body and every delivery with its attempts. Real receivers on loopback."""

from __future__ import annotations

from typing import Any

from app.clock import FakeClock
from tests.support.harness import Receiver, Service, eventually
from tests.support.scenarios import feedback, hot_events, lead, setup_crm


async def test_a_delivered_decision_is_summarised_in_lists_and_shown_in_full(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    await setup_crm(svc, hook)
    r = await svc.client.post("/v1/events", json={"events": hot_events("d", clock.now())})
    assert r.status_code == 202, r.text
    [got] = await hook.wait_for(1)

    async def delivered() -> dict[str, Any] | None:
        r = await svc.client.get("/v1/decisions")
        assert r.status_code == 200, r.text
        [d] = r.json()["decisions"]
        return d if d["delivery"]["statuses"] == {"delivered": 1} else None

    listed = await eventually(delivered)
    assert listed["type"] == "lead.routed" and listed["lead_id"] == "dana@acme.com"
    assert listed["delivery"]["count"] == 1 and listed["delivery"]["attempts"] == 1
    assert listed["delivery"]["last_delivered_at"] is not None
    # The list does not pretend there is no body and no delivery: it has neither field.
    assert "payload" not in listed and "deliveries" not in listed

    full = (await svc.client.get(f"/v1/decisions/{listed['id']}")).json()
    assert full["delivery"] == listed["delivery"]
    assert full["payload"]["data"]["decision_id"] == listed["id"]
    assert got.headers["webhook-id"] == listed["id"]
    [delivery] = full["deliveries"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 1
    assert delivery["delivered_at"] == listed["delivery"]["last_delivered_at"]
    [attempt] = delivery["history"]
    assert attempt["status_code"] == 204 and attempt["error"] is None  # what the receiver says

    # The lead's and the account's views list the same summary, and the feedback history.
    r = await feedback(svc, listed["id"], {"status": "accepted"})
    assert r.status_code == 201, r.text
    [on_lead] = (await lead(svc, "dana@acme.com"))["decisions"]
    assert on_lead["delivery"] == listed["delivery"]
    assert [d["status"] for d in on_lead["dispositions"]] == ["accepted"]
    account = (await svc.client.get("/v1/accounts/acme.com")).json()
    assert [d["delivery"] for d in account["decisions"]] == [listed["delivery"]]
    [again] = (await svc.client.get("/v1/decisions")).json()["decisions"]
    assert [d["status"] for d in again["dispositions"]] == ["accepted"]


async def test_a_decision_without_a_destination_has_an_empty_summary(
    svc: Service, clock: FakeClock
) -> None:
    r = await svc.client.post("/v1/events", json={"events": hot_events("n", clock.now())})
    assert r.status_code == 202, r.text

    async def listed() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = (await svc.client.get("/v1/decisions")).json()["decisions"]
        return out

    [d] = await eventually(listed)
    assert d["delivery"] == {"count": 0, "statuses": {}, "attempts": 0, "last_delivered_at": None}
    full = (await svc.client.get(f"/v1/decisions/{d['id']}")).json()
    assert full["deliveries"] == [] and full["payload"]["type"] == "lead.routed"
