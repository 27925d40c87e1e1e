from __future__ import annotations

from tests.support.harness import Receiver, Service, event


async def test_hot_lead_is_delivered(svc: Service, hook: Receiver) -> None:
    r = await svc.client.post("/v1/destinations", json={"name": "crm", "url": hook.url + "/h"})
    assert r.status_code == 201, r.text
    now = svc.runtime.clock.now()
    batch = {
        "events": [
            event(
                "e1",
                "demo_request",
                now,
                email="dana@acme.com",
                title="VP Sales",
                account={
                    "domain": "acme.com",
                    "industry": "software",
                    "employees": 1200,
                    "country": "US",
                    "annual_revenue": 5e7,
                },
            ),
            event("e2", "pricing_page_view", now, email="dana@acme.com"),
        ]
    }
    r = await svc.client.post("/v1/events", json=batch)
    assert r.status_code == 202, r.text
    got = await hook.wait_for(1)
    assert got[0].json()["data"]["lead"]["email"] == "dana@acme.com"
