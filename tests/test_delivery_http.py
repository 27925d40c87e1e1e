"""Webhook delivery against real receivers on loopback: 410, SSRF at send time, rotation,
formats and bulk redrive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.clock import FakeClock
from tests.harness import Received, Receiver, Service, serve
from tests.test_e2e import hot_events, setup_crm


@dataclass
class Endpoint:
    """A receiver that answers whatever the test sets: status and headers."""

    url: str = ""
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append(Received(request.url.path, dict(request.headers), body, time.time()))
        return Response(status_code=self.status, headers=self.headers)


@contextlib.asynccontextmanager
async def endpoint(
    status: int = 204, headers: dict[str, str] | None = None
) -> AsyncIterator[Endpoint]:
    ep = Endpoint(status=status, headers=headers or {})
    app = Starlette(routes=[Route("/{path:path}", ep.handle, methods=["GET", "POST"])])
    async with serve(app) as url:
        ep.url = url
        yield ep


async def eventually(check: Any, within: float = 10.0) -> Any:
    """Poll an async ``check`` until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within}s: {got!r}")
        await asyncio.sleep(0.05)


async def decision_ids(svc: Service) -> list[str]:
    r = await svc.client.get("/v1/decisions")
    assert r.status_code == 200, r.text
    return [d["id"] for d in r.json()["decisions"]]


async def settled_delivery(svc: Service, decision_id: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        r = await svc.client.get(f"/v1/decisions/{decision_id}")
        [d] = r.json()["deliveries"]
        return d if d["status"] == status else None

    got: dict[str, Any] = await eventually(check)
    return got


def disabled_count(reason: str) -> float:
    value = REGISTRY.get_sample_value("intent_destinations_disabled_total", {"reason": reason})
    return value or 0.0


# -- 410 Gone ----------------------------------------------------------------------------


async def test_410_gone_dead_letters_and_disables_until_re_enabled(
    svc: Service, hook: Receiver, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    hook.status = 410
    dest = await setup_crm(svc, hook)
    before = disabled_count("http_410")
    with caplog.at_level(logging.WARNING, logger="app.delivery.dispatcher"):
        await svc.client.post("/v1/events", json={"events": hot_events("g", clock.now())})
        await hook.wait_for(1)
        [decision_id] = await eventually(lambda: decision_ids(svc))
        delivery = await settled_delivery(svc, decision_id, "dead")
    assert delivery["last_error"] == "http_410"
    assert delivery["attempts"] == 1
    assert [(h["status_code"], h["error"]) for h in delivery["history"]] == [(410, "http_410")]
    assert disabled_count("http_410") == before + 1
    logged = [rec.getMessage() for rec in caplog.records]
    assert any("410" in m and dest["id"] in m for m in logged), logged

    view = (await svc.client.get(f"/v1/destinations/{dest['id']}")).json()
    assert view["enabled"] is False
    assert view["disabled_reason"] == "http_410"
    assert view["disabled_at"] is not None

    # nothing is sent to it while it is off: not a retry, not a new decision
    hook.status = 204
    await svc.client.post(
        "/v1/events", json={"events": hot_events("g2", clock.now(), "lee@acme.com")}
    )
    await asyncio.sleep(0.5)
    assert len(hook.requests) == 1

    r = await svc.client.patch(f"/v1/destinations/{dest['id']}", json={"enabled": True})
    assert r.status_code == 200, r.text
    assert (r.json()["enabled"], r.json()["disabled_reason"], r.json()["disabled_at"]) == (
        True,
        None,
        None,
    )
    await svc.client.post(
        "/v1/events", json={"events": hot_events("g3", clock.now(), "max@acme.com")}
    )
    got = await hook.wait_for(2)
    assert got[1].json()["data"]["lead"]["email"] == "max@acme.com"
