"""Scenarios over a running service's HTTP API that several test modules share: the CRM
set-up, a lead that turns hot, feedback on its decision, and waiting for deliveries."""

from __future__ import annotations

import copy
from typing import Any

from app.auth import create_key
from app.clock import FakeClock
from tests.support.harness import Receiver, Service, event, eventually

ACME = {
    "domain": "acme.com",
    "industry": "software",
    "employees": 1200,
    "country": "US",
    "annual_revenue": 50_000_000,
}


async def setup_crm(svc: Service, hook: Receiver, **extra: Any) -> dict[str, Any]:
    """Acme as a tier-1 ABM account owned by jo@, and the receiver as destination "crm"."""
    r = await svc.client.put(
        "/v1/accounts",
        json={
            "accounts": [
                {
                    "domain": "acme.com",
                    "name": "Acme",
                    "tier": "tier_1",
                    "owner": "jo@ours.example",
                },
            ]
        },
    )
    assert r.status_code == 200, r.text
    r = await svc.client.post(
        "/v1/destinations", json={"name": "crm", "url": hook.url + "/crm", **extra}
    )
    assert r.status_code == 201, r.text
    dest: dict[str, Any] = r.json()
    assert dest["secret"].startswith("whsec_")
    return dest


# A fit-50 company that is no ABM account (so the shipped policy's inbound rule takes its
# hot leads): a VP's demo request alone is 70 (warm), with a pricing view 85 (hot).
GLOBEX = {
    "domain": "globex.com",
    "industry": "software",
    "employees": 1200,
    "country": "US",
    "annual_revenue": 50_000_000,
}


def demo(name: str, t: float) -> dict[str, Any]:
    """One demo request of a VP at Globex: fit 50 + 20 = 70 under the shipped policy."""
    return event(
        f"{name}-demo",
        "demo_request",
        t,
        email=f"{name}@globex.com",
        title="VP Sales",
        account=GLOBEX,
    )


def hot(name: str, t: float) -> list[dict[str, Any]]:
    """Demo request and pricing view: 50 + 35 = 85, hot."""
    return [
        demo(name, t),
        event(f"{name}-price", "pricing_page_view", t, email=f"{name}@globex.com"),
    ]


def hot_events(prefix: str, t: float, email: str = "dana@acme.com") -> list[dict[str, Any]]:
    # fit 50 (size, industry, VP title, US, revenue) + 20 + 15 = 85 → hot
    return [
        event(
            f"{prefix}-1",
            "pricing_page_view",
            t,
            email=email,
            title="VP Sales",
            account=ACME,
            source="linkedin_ads",
        ),
        event(f"{prefix}-2", "demo_request", t, email=email, source="linkedin_ads"),
    ]


async def route_warm_leads(svc: Service) -> int:
    """A policy version that routes warm leads too: a lead that turns warm, then hot, gets
    two decisions, the second an escalation within the cooldown. Returns its version."""
    policy = copy.deepcopy((await svc.client.get("/v1/policy")).json()["policy"])
    policy["routing"]["rules"].insert(
        0,
        {
            "name": "warm_nurture",
            "kind": "lead",
            "when": {"band": "warm"},
            "team": "nurture",
            "assignment": "fixed",
            "assignee": "sdr@ours.example",
        },
    )
    policy["teams"]["nurture"] = {"members": []}
    r = await svc.client.put("/v1/policy", json=policy)
    assert r.status_code == 200, r.text
    version: int = r.json()["version"]
    return version


async def lead(svc: Service, lead_id: str) -> dict[str, Any]:
    r = await svc.client.get(f"/v1/leads/{lead_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def new_key(svc: Service, name: str, scopes: list[str]) -> str:
    """A new API key with ``scopes``, written straight to the service's database."""
    async with svc.runtime.sessionmaker() as s, s.begin():
        _, key = await create_key(s, name=name, scopes=scopes, now=svc.runtime.clock.now())
    return key


# -- decisions and their deliveries ------------------------------------------------------


async def routed(svc: Service, hook: Receiver, clock: FakeClock, email: str) -> str:
    """Make ``email`` a hot tier-1 lead; the id of its decision."""
    r = await svc.client.post(
        "/v1/events", json={"events": hot_events(email.split("@")[0], clock.now(), email)}
    )
    assert r.status_code == 202, r.text

    async def decision() -> str | None:
        body = (await svc.client.get(f"/v1/leads/{email}")).json()
        ids = [d["id"] for d in body["decisions"] if d["type"] == "lead.routed"]
        return ids[0] if ids else None

    found: str = await eventually(decision)
    return found


async def feedback(svc: Service, ref: str, body: dict[str, Any], **headers: str) -> Any:
    return await svc.client.post(f"/v1/decisions/{ref}/feedback", json=body, headers=headers)


async def decision_ids(svc: Service) -> list[str]:
    r = await svc.client.get("/v1/decisions")
    assert r.status_code == 200, r.text
    return [d["id"] for d in r.json()["decisions"]]


async def settled_delivery(svc: Service, decision_id: str, status: str) -> dict[str, Any]:
    """The decision's one delivery, once it has reached ``status``."""

    async def check() -> dict[str, Any] | None:
        r = await svc.client.get(f"/v1/decisions/{decision_id}")
        [d] = r.json()["deliveries"]
        return d if d["status"] == status else None

    got: dict[str, Any] = await eventually(check)
    return got


async def settled_delivery_attempts(svc: Service, decision_id: str, n: int) -> dict[str, Any]:
    """The decision's one delivery, once it has at least ``n`` recorded attempts."""

    async def check() -> dict[str, Any] | None:
        r = await svc.client.get(f"/v1/decisions/{decision_id}")
        [d] = r.json()["deliveries"]
        return d if len(d["history"]) >= n else None

    got: dict[str, Any] = await eventually(check)
    return got
