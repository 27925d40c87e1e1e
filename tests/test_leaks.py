"""Observability without leaks: /metrics stays bounded whatever sources clients name,
and no log line carries a key, a webhook URL's credentials or query, or an email."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY

from app.clock import FakeClock
from app.observability.logging import scrub
from tests.support.harness import Service, Spawned, event, eventually, receiver
from tests.support.scenarios import decision_ids, hot_events, new_key

# -- metrics -----------------------------------------------------------------------------


def ingested(source: str) -> float:
    value = REGISTRY.get_sample_value(
        "intent_events_ingested_total",
        {"source": source, "type": "pricing_page_view", "transport": "http"},
    )
    return value or 0.0


async def test_distinct_sources_do_not_grow_metrics(svc: Service, clock: FakeClock) -> None:
    """20,000 distinct ``source`` values used to add 20,000 series (19 KB → 10 MB)."""
    r = await svc.client.post("/v1/sources", json={"name": "website", "kind": "segment"})
    assert r.status_code == 201, r.text
    await svc.runtime.sources.names()  # the store's reload publishes the registered names
    key = await new_key(svc, "key-name-not-for-metrics", ["ingest"])

    warm = [event("warm", "pricing_page_view", clock.now(), email="w@x.io", source="warm-up")]
    assert (await svc.client.post("/v1/events", json={"events": warm})).status_code == 202
    before = len((await svc.client.get("/metrics")).content)
    other, website = ingested("other"), ingested("website")
    for batch in range(2):
        events = [
            event(
                f"src-{batch}-{i}",
                "pricing_page_view",
                clock.now(),
                email=f"p{batch}-{i}@x.io",
                source=f"campaign-{batch}-{i}-{'x' * 40}",
            )
            for i in range(1000)
        ]
        r = await svc.client.post("/v1/events", json={"events": events})
        assert r.status_code == 202, r.text
    registered = event("reg", "pricing_page_view", clock.now(), email="r@x.io", source="website")
    async with svc.as_key(key) as c:  # no source: the key's name, which is no source
        unnamed = event("by-key", "pricing_page_view", clock.now(), email="k@x.io")
        del unnamed["source"]
        r = await c.post("/v1/events", json={"events": [registered, unnamed]})
        assert r.status_code == 202, r.text

    text = (await svc.client.get("/metrics")).text
    assert len(text.encode()) - before < 5_000
    assert ingested("other") - other == 2001
    assert ingested("website") - website == 1
    assert "campaign-" not in text and "key-name-not-for-metrics" not in text


# -- logs --------------------------------------------------------------------------------

EMAIL = "dana@acme.com"
TOKEN = "tok-4f9a1c2e7b"
PASSWORD = "hunter2pass"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _exercise(url: str, key: str, hook_url: str) -> dict[str, str]:
    """Requests that carry each kind of secret; the request ids the service answered."""
    answered: dict[str, str] = {}
    port = hook_url.rsplit(":", 1)[1]
    async with httpx.AsyncClient(
        base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as c:
        r = await c.put(
            "/v1/accounts",
            json={"accounts": [{"domain": "acme.com", "tier": "tier_1", "owner": "jo@x.io"}]},
        )
        assert r.status_code == 200, r.text
        for name, target in (
            ("crm", f"http://user:{PASSWORD}@127.0.0.1:{port}/hook?token={TOKEN}"),
            ("down", f"http://user:{PASSWORD}@127.0.0.1:{closed_port()}/x?token={TOKEN}"),
        ):
            r = await c.post("/v1/destinations", json={"name": name, "url": target})
            assert r.status_code == 201, r.text
            await c.post(f"/v1/destinations/{r.json()['id']}/test")
        for label, sent in (("key", key), ("long", "a" * 65), ("odd", "id with spaces")):
            r = await c.post(
                "/v1/events",
                json={"events": hot_events(f"lk-{label}", time.time())},
                headers={"x-request-id": sent},
            )
            assert r.status_code == 202, r.text
            answered[label] = r.headers["x-request-id"]
        assert (await c.get(f"/v1/leads/{EMAIL}")).status_code == 200
        await c.post(f"/v1/decisions/{EMAIL}/feedback", json={"status": "accepted"})
        await c.get("/v1/leads/dana%40acme.com")
    return answered


def _assert_clean(text: str, key: str, answered: dict[str, str]) -> None:
    for secret in (key, PASSWORD, TOKEN, EMAIL, "dana%40acme.com", "a" * 65, "id with spaces"):
        assert secret not in text, secret
    assert "<email:" in text  # the paths were logged, the address hashed
    for label in ("key", "long", "odd"):
        generated = answered[label]
        assert len(generated) == 32 and generated in text


async def test_nothing_secret_or_personal_reaches_a_spawned_services_log(
    database_url: str,
) -> None:
    async with receiver() as hook:
        proc = Spawned(
            {
                "INTENT_DATABASE_URL": database_url,
                "INTENT_DELIVERY_ALLOWED_HOSTS": "127.0.0.1",
                "INTENT_LOG_LEVEL": "info",
            }
        )
        try:
            proc.start()
            key = proc.read_key()
            answered = await _exercise(proc.url, key, hook.url)
            await hook.wait_for(1)

            def lines() -> list[dict[str, Any]]:
                return [orjson.loads(x) for x in proc.output if x.startswith("{")]

            async def failed_delivery_logged() -> bool:
                return any(x.get("outcome") == "failed" for x in lines())

            await eventually(failed_delivery_logged)
        finally:
            proc.stop()
    # The log lines (the first start also prints the bootstrap key once, by design).
    text = "".join(x for x in proc.output if x.startswith("{"))
    _assert_clean(text, key, answered)
    assert any(
        str(x.get("path", "")).startswith("/v1/leads/<email:") and x.get("status") == 200
        for x in lines()
    )


async def test_nothing_secret_or_personal_reaches_any_log_handler(
    svc: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """The same through pytest's handler, which formats records its own way: our own lines
    carry nothing to scrub, and the HTTP client's URL lines are off."""
    async with receiver() as hook:
        with caplog.at_level(logging.INFO):
            answered = await _exercise(svc.url, svc.admin_key, hook.url)
            await hook.wait_for(1)
            await eventually(lambda: decision_ids(svc))
    text = "\n".join(
        f"{r.name} {r.getMessage()} {orjson.dumps(r.__dict__, default=str).decode()}"
        for r in caplog.records
    )
    for secret in (svc.admin_key, PASSWORD, TOKEN, EMAIL, "a" * 65):
        assert secret not in text, secret
    assert answered["key"] != svc.admin_key and len(answered["key"]) == 32


def test_scrub_keeps_scheme_host_and_path_only() -> None:
    line = f"POST http://user:{PASSWORD}@hooks.example:8443/in/x?token={TOKEN}#frag failed"
    assert scrub(line) == "POST http://hooks.example:8443/in/x failed"
    assert scrub("lead dana@acme.com scored").startswith("lead <email:")
    assert scrub("lead dana@acme.com") == scrub("lead DANA@acme.com")
    assert scrub("GET /v1/leads/dana%40acme.com") == scrub("GET /v1/leads/dana@acme.com")
