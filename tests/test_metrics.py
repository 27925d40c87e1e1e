"""The operational gauges and histograms answer with what the database and pipeline hold."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from app.clock import FakeClock
from tests.support.harness import Receiver, Service, eventually
from tests.support.scenarios import (
    decision_ids,
    hot_events,
    settled_delivery,
    settled_delivery_attempts,
    setup_crm,
)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    value = REGISTRY.get_sample_value(name, labels or {})
    return value if value is not None else 0.0


async def test_outbox_depth_age_and_disabled_destinations(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    dest = await setup_crm(svc, hook)
    hook.status = 500
    await svc.client.post("/v1/events", json={"events": hot_events("m", clock.now())})
    [decision_id] = await eventually(lambda: decision_ids(svc))
    await settled_delivery_attempts(svc, decision_id, 1)

    clock.advance(3.0)
    await svc.runtime.sample_gauges()
    assert sample("intent_outbox_deliveries", {"status": "pending"}) == 1
    assert sample("intent_outbox_deliveries", {"status": "parked"}) == 0
    assert 3.0 <= sample("intent_outbox_oldest_pending_seconds") < 4.0
    assert sample("intent_destinations_off") == 0

    r = await svc.client.patch(f"/v1/destinations/{dest['id']}", json={"enabled": False})
    assert r.status_code == 200
    await settled_delivery(svc, decision_id, "parked")
    await svc.runtime.sample_gauges()
    assert sample("intent_outbox_deliveries", {"status": "pending"}) == 0
    assert sample("intent_outbox_deliveries", {"status": "parked"}) == 1
    assert sample("intent_outbox_oldest_pending_seconds") == 0
    assert sample("intent_destinations_off") == 1


async def test_leads_by_band_and_pipeline_stages(svc: Service, clock: FakeClock) -> None:
    stages = ("ingest", "load", "identify", "score", "surge", "route", "outbox", "save")
    before = {s: sample("intent_pipeline_stage_seconds_count", {"stage": s}) for s in stages}
    events: list[dict[str, Any]] = hot_events("b1", clock.now(), "ann@acme.com")
    events += hot_events("b2", clock.now(), "bob@acme.com")
    r = await svc.client.post("/v1/events", json={"events": events})
    assert r.status_code == 202, r.text
    await svc.runtime.sample_gauges()
    assert sample("intent_leads", {"band": "hot"}) == 2
    assert sample("intent_leads", {"band": "cold"}) == 0  # every band of the policy is shown
    for s in stages:
        assert sample("intent_pipeline_stage_seconds_count", {"stage": s}) > before[s], s
