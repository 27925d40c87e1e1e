"""Webhook delivery against real receivers on loopback: 410, SSRF at send time, rotation,
formats and bulk redrive."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from prometheus_client import REGISTRY
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.clock import FakeClock, iso
from app.config import Settings
from app.delivery.ssrf import SsrfGuard, SsrfRefused
from tests.support.harness import (
    Received,
    Receiver,
    Service,
    event,
    eventually,
    loopback_socket,
    serve,
    service,
)
from tests.support.scenarios import (
    ACME,
    decision_ids,
    hot_events,
    route_warm_leads,
    settled_delivery,
    setup_crm,
)


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

    # nothing is sent to it while it is off: not a retry, not a new decision — whose
    # delivery is parked, kept for when the endpoint is enabled again
    hook.status = 204
    await svc.client.post(
        "/v1/events", json={"events": hot_events("g2", clock.now(), "lee@acme.com")}
    )
    [lee_decision] = [d for d in await eventually(lambda: decision_ids(svc)) if d != decision_id]
    parked = await settled_delivery(svc, lee_decision, "parked")
    assert parked["attempts"] == 0 and parked["history"] == []
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

    async def leads_delivered() -> set[str]:
        leads = {(g.json()["data"].get("lead") or {}).get("email") for g in hook.requests[1:]}
        return leads if {"lee@acme.com", "max@acme.com"} <= leads else set()

    await eventually(leads_delivered)
    assert (await settled_delivery(svc, lee_decision, "delivered"))["attempts"] == 1
    # the dead one stays dead: 410 was final for that delivery
    assert (await settled_delivery(svc, decision_id, "dead"))["attempts"] == 1


# -- HTTPS required ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://93.184.216.34/hook", "http://example.com/hook", "http://10.0.0.1/hook"]
)
async def test_plain_http_is_refused_unless_the_host_is_allowed(svc: Service, url: str) -> None:
    svc.runtime.guard.resolver = FakeDns({"example.com": ["93.184.216.34"]})
    r = await svc.client.post("/v1/destinations", json={"name": "crm", "url": url})
    assert r.status_code == 422, r.text
    assert (r.json()["code"], r.json()["field"]) == ("destination_refused", "url")
    # the same public address over https is fine (an IP literal: nothing to resolve)
    r = await svc.client.post(
        "/v1/destinations", json={"name": "crm", "url": "https://93.184.216.34/hook"}
    )
    assert r.status_code == 201, r.text
    r = await svc.client.patch(f"/v1/destinations/{r.json()['id']}", json={"url": url})
    assert r.status_code == 422, r.text
    assert (r.json()["code"], r.json()["field"]) == ("destination_refused", "url")


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        (["hooks.internal"], "http://hooks.internal:8080/x"),  # by name: not even resolved
        (["127.0.0.0/8"], "http://127.8.9.10/hook"),  # an IP literal inside an allowed CIDR
        (["::1"], "http://[::1]:9000/hook"),
    ],
)
async def test_plain_http_reaches_allowed_hosts(allowed: list[str], url: str) -> None:
    await SsrfGuard(allowed, resolver=FakeDns()).check_url(url)


async def test_plain_http_to_a_name_is_refused_even_when_it_resolves_into_an_allowed_cidr() -> None:
    dns = FakeDns({"hooks.internal": ["10.1.2.3"]})
    guard = SsrfGuard(["10.0.0.0/8"], resolver=dns)
    with pytest.raises(SsrfRefused, match="https"):
        await guard.check_url("http://hooks.internal/x")
    await guard.check_url("https://hooks.internal/x")


# -- SSRF on the address actually connected to ----------------------------------------------


class FakeDns:
    """Stands in for the DNS: answers what the test says, and can change its mind."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = dict(answers or {})
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.7",  # private
        "127.0.0.2",  # loopback
        "169.254.169.254",  # link-local: the cloud metadata service
        "100.64.0.1",  # CGNAT
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.1",  # IPv4-mapped IPv6
        "::ffff:169.254.169.254",
    ],
)
async def test_a_name_resolving_to_a_forbidden_address_is_refused(address: str) -> None:
    dns = FakeDns({"evil.example": ["93.184.216.34", address]})
    with pytest.raises(SsrfRefused) as info:
        await SsrfGuard([], resolver=dns).resolve("https://evil.example/hook")
    assert str(ipaddress.ip_address(address)) in info.value.message


async def test_resolve_pins_the_validated_address_and_keeps_the_host() -> None:
    dns = FakeDns({"hooks.example": ["93.184.216.34"]})
    guard = SsrfGuard([], resolver=dns)
    target = await guard.resolve("https://hooks.example:8443/a?b=1")
    assert target.url == "https://93.184.216.34:8443/a?b=1"
    assert target.headers == {"host": "hooks.example:8443"}
    assert target.extensions == {"sni_hostname": "hooks.example"}
    v6 = FakeDns({"hooks.example": ["2606:2800:220:1:248:1893:25c8:1946"]})
    target = await SsrfGuard([], resolver=v6).resolve("https://hooks.example/a")
    assert target.url == "https://[2606:2800:220:1:248:1893:25c8:1946]/a"
    assert target.headers == {"host": "hooks.example"}


async def test_send_time_resolutions_are_cached_briefly_creation_checks_never() -> None:
    dns = FakeDns({"hooks.example": ["93.184.216.34"]})
    guard = SsrfGuard([], resolver=dns, cache_seconds=0.2)
    await guard.resolve("https://hooks.example/a")
    await guard.resolve("https://hooks.example/b")
    assert dns.calls == ["hooks.example"]
    await guard.check_url("https://hooks.example/a")
    assert len(dns.calls) == 2
    await asyncio.sleep(0.25)
    dns.answers["hooks.example"] = ["10.0.0.1"]
    with pytest.raises(SsrfRefused):
        await guard.resolve("https://hooks.example/a")


async def test_dns_rebinding_after_creation_is_refused_at_send_time(
    svc: Service, clock: FakeClock
) -> None:
    dns = FakeDns({"rebind.example": ["93.184.216.34"]})
    svc.runtime.guard.resolver = dns
    r = await svc.client.post(
        "/v1/destinations", json={"name": "crm", "url": "https://rebind.example/hook"}
    )
    assert r.status_code == 201, r.text
    dns.answers["rebind.example"] = ["169.254.169.254"]  # the name now points inside
    await svc.client.post("/v1/events", json={"events": hot_events("rb", clock.now())})
    [decision_id] = await eventually(lambda: decision_ids(svc))

    delivery = await attempted_delivery(svc, decision_id)
    [attempt] = delivery["history"]
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("ssrf_refused: ")
    assert "169.254.169.254" in attempt["error"]
    assert dns.calls[-1] == "rebind.example"


async def attempted_delivery(svc: Service, decision_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        r = await svc.client.get(f"/v1/decisions/{decision_id}")
        [d] = r.json()["deliveries"]
        return d if d["history"] else None

    got: dict[str, Any] = await eventually(check)
    return got


@pytest.fixture
def tls_cert(tmp_path: Any) -> tuple[str, str]:
    """A self-signed certificate for hooks.example (made with the openssl command)."""
    if shutil.which("openssl") is None:
        message = "the openssl command is needed to make a test certificate"
        if os.environ.get("CI"):
            pytest.fail(message)  # never a silent skip in CI
        pytest.skip(message)
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", key, "-out", cert, "-subj", "/CN=hooks.example"),
            *("-addext", "subjectAltName=DNS:hooks.example"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@contextlib.asynccontextmanager
async def serve_tls(app: Any, cert: str, key: str) -> AsyncIterator[int]:
    """Like ``harness.serve`` but over TLS; yields the port."""
    sock = loopback_socket()
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, ssl_certfile=cert, ssl_keyfile=key
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_https_goes_to_the_validated_ip_with_the_host_name_for_tls(
    svc: Service,
    clock: FakeClock,
    tls_cert: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hooks.example resolves (for us only) to 127.0.0.1: the request can only arrive if
    the dispatcher connects to that IP itself, and TLS only verifies if it still presents
    hooks.example as SNI and checks the certificate against it."""
    cert, key = tls_cert
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # trust our certificate (httpx reads it)
    dns = FakeDns({"hooks.example": ["127.0.0.1"]})
    svc.runtime.guard.resolver = dns
    ep = Endpoint(headers={"connection": "close"})  # no idle TLS socket to wait for at exit
    app = Starlette(routes=[Route("/{path:path}", ep.handle, methods=["POST"])])
    async with serve_tls(app, cert, key) as port:
        r = await svc.client.post(
            "/v1/destinations",
            json={"name": "crm", "url": f"https://hooks.example:{port}/crm"},
        )
        assert r.status_code == 201, r.text
        dest = r.json()
        await svc.client.post("/v1/events", json={"events": hot_events("tls", clock.now())})
        await eventually(lambda: _n(ep.requests, 1))
        r = await svc.client.post(f"/v1/destinations/{dest['id']}/test")
        assert r.json()["delivered"] is True, r.text
    routed, ping = ep.requests
    assert routed.headers["host"] == f"hooks.example:{port}"
    assert ping.headers["host"] == f"hooks.example:{port}"
    assert Webhook(dest["secret"]).verify(routed.body, routed.headers)["type"] == "lead.routed"
    assert "hooks.example" in dns.calls


async def _n(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def test_a_refused_address_falls_back_to_the_hosts_next_validated_one(
    settings: Settings,
    clock: FakeClock,
    tls_cert: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hooks.example has two addresses; nothing listens on the first (127.0.0.2), so the
    connection is refused and the send goes to the second, still pinned and verified.
    One attempt, one request: a refused connection sent nothing."""
    cert, key = tls_cert
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    allowed = settings.model_copy(update={"delivery_allowed_hosts": ["127.0.0.0/8"]})
    async with service(allowed, clock) as svc:
        dns = FakeDns({"hooks.example": ["127.0.0.2", "127.0.0.1"]})
        svc.runtime.guard.resolver = dns
        ep = Endpoint(headers={"connection": "close"})
        app = Starlette(routes=[Route("/{path:path}", ep.handle, methods=["POST"])])
        async with serve_tls(app, cert, key) as port:
            r = await svc.client.post(
                "/v1/destinations", json={"name": "crm", "url": f"https://hooks.example:{port}/"}
            )
            assert r.status_code == 201, r.text
            await svc.client.post("/v1/events", json={"events": hot_events("fb", clock.now())})
            [decision_id] = await eventually(lambda: decision_ids(svc))
            delivery = await settled_delivery(svc, decision_id, "delivered")
        assert [(h["status_code"], h["error"]) for h in delivery["history"]] == [(204, None)]
        [got] = ep.requests
        assert got.headers["host"] == f"hooks.example:{port}"


# -- redirects -----------------------------------------------------------------------------


async def test_a_redirect_is_a_failure_and_is_not_followed(svc: Service, clock: FakeClock) -> None:
    async with (
        endpoint() as trap,
        endpoint(302, {"location": "http://169.254.169.254/latest/meta-data/"}) as metadata,
        endpoint(302) as inside,
    ):
        inside.headers["location"] = trap.url + "/internal"
        for name, ep in (("meta", metadata), ("inside", inside)):
            r = await svc.client.post("/v1/destinations", json={"name": name, "url": ep.url})
            assert r.status_code == 201, r.text
        await svc.client.post("/v1/events", json={"events": hot_events("rd", clock.now())})
        [decision_id] = await eventually(lambda: decision_ids(svc))

        async def both_attempted() -> list[dict[str, Any]] | None:
            r = await svc.client.get(f"/v1/decisions/{decision_id}")
            ds: list[dict[str, Any]] = r.json()["deliveries"]
            return ds if len(ds) == 2 and all(d["history"] for d in ds) else None

        for d in await eventually(both_attempted):
            assert [(h["status_code"], h["error"]) for h in d["history"]] == [(302, "http_302")]
            assert d["status"] == "pending"  # a failure: retried later, never followed
        await asyncio.sleep(0.3)
        assert len(metadata.requests) == 1 and len(inside.requests) == 1
        assert trap.requests == []


# -- secret rotation -----------------------------------------------------------------------


def verifies(secret: str, got: Received) -> bool:
    try:
        Webhook(secret).verify(got.body, got.headers)
    except WebhookVerificationError:
        return False
    return True


async def test_rotated_secret_signs_alongside_the_old_one_until_the_overlap_ends(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    dest = await setup_crm(svc, hook)
    original = dest["secret"]
    r = await svc.client.post(f"/v1/destinations/{dest['id']}/rotate-secret")
    assert r.status_code == 200, r.text
    first = r.json()["secret"]
    assert first.startswith("whsec_") and first != original
    assert r.json()["previous_secret_expires_at"] == iso(clock.now() + 24 * 3600)
    view = (await svc.client.get(f"/v1/destinations/{dest['id']}")).json()
    assert view["secret"] is None  # shown once
    assert view["previous_secret_expires_at"] == iso(clock.now() + 24 * 3600)

    await svc.client.post("/v1/events", json={"events": hot_events("r1", clock.now())})
    [a] = await hook.wait_for(1)
    assert len(a.headers["webhook-signature"].split()) == 2
    assert verifies(original, a) and verifies(first, a)

    # a second rotation with a one-minute overlap: the original secret is gone
    r = await svc.client.post(
        f"/v1/destinations/{dest['id']}/rotate-secret", json={"overlap_seconds": 60}
    )
    assert r.status_code == 200, r.text
    second = r.json()["secret"]
    await svc.client.post(
        "/v1/events", json={"events": hot_events("r2", clock.now(), "lee@acme.com")}
    )
    b = (await hook.wait_for(2))[1]
    assert verifies(first, b) and verifies(second, b)
    assert not verifies(original, b)

    clock.advance(61)  # the overlap is over: only the newest secret signs
    await svc.client.post(
        "/v1/events", json={"events": hot_events("r3", clock.now(), "max@acme.com")}
    )
    c = (await hook.wait_for(3))[2]
    assert len(c.headers["webhook-signature"].split()) == 1
    assert verifies(second, c)
    assert not verifies(first, c)


@pytest.mark.parametrize("overlap", [-1, 7 * 86400 + 1, "soon"])
async def test_rotation_overlap_is_bounded(svc: Service, hook: Receiver, overlap: Any) -> None:
    dest = await setup_crm(svc, hook)
    r = await svc.client.post(
        f"/v1/destinations/{dest['id']}/rotate-secret", json={"overlap_seconds": overlap}
    )
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "overlap_seconds"


async def test_rotation_without_overlap_drops_the_old_secret_at_once(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    dest = await setup_crm(svc, hook)
    r = await svc.client.post(
        f"/v1/destinations/{dest['id']}/rotate-secret", json={"overlap_seconds": 0}
    )
    assert r.json()["previous_secret_expires_at"] is None
    assert (await svc.client.post(f"/v1/destinations/{dest['id']}/test")).json()["delivered"]
    [ping] = await hook.wait_for(1)
    assert verifies(r.json()["secret"], ping) and not verifies(dest["secret"], ping)
    r = await svc.client.post("/v1/destinations/dst_nope/rotate-secret")
    assert r.status_code == 404


# -- Slack format ----------------------------------------------------------------------------


def assert_valid_slack_message(msg: dict[str, Any]) -> None:
    """The shape Slack's incoming webhooks accept (Block Kit limits)."""
    assert set(msg) == {"text", "blocks"}
    assert isinstance(msg["text"], str) and 0 < len(msg["text"]) <= 3000
    assert 0 < len(msg["blocks"]) <= 50
    for block in msg["blocks"]:
        kind = block["type"]
        assert kind in ("header", "section", "context", "divider")
        if kind == "header":
            assert block["text"]["type"] == "plain_text"
            assert 0 < len(block["text"]["text"]) <= 150
        elif kind == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert block["text"]["type"] == "mrkdwn"
                assert 0 < len(block["text"]["text"]) <= 3000
            for f in block.get("fields", []):
                assert f["type"] == "mrkdwn" and 0 < len(f["text"]) <= 2000
            assert len(block.get("fields", [])) <= 10
        elif kind == "context":
            assert 0 < len(block["elements"]) <= 10


async def test_slack_destination_gets_a_slack_message_and_json_the_contract(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    crm = await setup_crm(svc, hook)
    r = await svc.client.post(
        "/v1/destinations",
        json={"name": "sales-channel", "url": hook.url + "/slack", "format": "slack"},
    )
    assert r.status_code == 201, r.text
    slack = r.json()
    assert slack["format"] == "slack"
    await svc.client.post("/v1/events", json={"events": hot_events("sl", clock.now())})
    got = {g.path: g for g in await hook.wait_for(2)}

    contract = Webhook(crm["secret"]).verify(got["/crm"].body, got["/crm"].headers)
    assert contract["type"] == "lead.routed"
    data = contract["data"]
    msg = Webhook(slack["secret"]).verify(got["/slack"].body, got["/slack"].headers)
    assert got["/slack"].headers["webhook-id"] == got["/crm"].headers["webhook-id"]
    assert got["/slack"].headers["content-type"] == "application/json"
    assert_valid_slack_message(msg)

    assert "dana@acme.com" in msg["text"] and "hot" in msg["text"]
    assert "strategic" in msg["text"] and "jo@ours.example" in msg["text"]
    header, facts, reason, context = msg["blocks"]
    assert header["text"]["text"] == "Hot lead: dana@acme.com"
    fields = {
        f["text"].split("\n")[0].strip("*"): f["text"].split("\n", 1)[1] for f in facts["fields"]
    }
    assert fields["Lead"] == "dana@acme.com"
    assert fields["Account"] == "Acme (tier_1)"
    assert fields["Band"] == "hot"
    assert fields["Score"] == f"{data['score']['total']:.1f}"
    assert fields["Team"] == "strategic"
    assert fields["Assignee"] == "jo@ours.example"
    assert fields["Rule"] == "hot_tier_1"
    assert "demo_request" in fields["Top signals"] and "pricing_page_view" in fields["Top signals"]
    expected_reason = data["reason"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert reason["text"]["text"] == expected_reason
    assert data["decision_id"] in context["elements"][0]["text"]

    # the test ping is a Slack message too; a PATCH switches the format back
    assert (await svc.client.post(f"/v1/destinations/{slack['id']}/test")).json()["delivered"]
    ping = (await hook.wait_for(3))[2]
    assert_valid_slack_message(ping.json())
    r = await svc.client.patch(f"/v1/destinations/{slack['id']}", json={"format": "json"})
    assert r.json()["format"] == "json"
    r = await svc.client.patch(f"/v1/destinations/{slack['id']}", json={"format": "xml"})
    assert r.status_code == 422 and r.json()["field"] == "format"


# -- bulk redrive ----------------------------------------------------------------------------


async def deliveries_of(svc: Service, decision_id: str) -> list[dict[str, Any]]:
    r = await svc.client.get(f"/v1/decisions/{decision_id}")
    out: list[dict[str, Any]] = r.json()["deliveries"]
    return out


async def drive_to_dead(svc: Service, clock: FakeClock, decisions: list[str]) -> None:
    """Fail through the whole retry schedule by moving the clock past each delay."""
    assert svc.runtime.dispatcher is not None
    for _ in range(20):
        states = [d for i in decisions for d in await deliveries_of(svc, i)]
        if all(d["status"] == "dead" for d in states):
            return
        before = [d["attempts"] for d in states]
        clock.advance(50_000)  # beyond the longest delay (10 h + 20 % jitter)
        svc.runtime.dispatcher.poke()

        async def progressed(before: list[int] = before) -> bool:
            now = [d for i in decisions for d in await deliveries_of(svc, i)]
            return all(
                d["status"] == "dead" or (d["attempts"] > n and d["status"] == "pending")
                for d, n in zip(now, before, strict=True)
            )

        await eventually(progressed)
    raise AssertionError("deliveries never went dead")


async def test_bulk_redrive_by_time_range(svc: Service, hook: Receiver, clock: FakeClock) -> None:
    hook.status = 500
    dest = await setup_crm(svc, hook)
    t0 = clock.now()
    await svc.client.post("/v1/events", json={"events": hot_events("a", t0)})
    [early] = await eventually(lambda: decision_ids(svc))
    clock.advance(3600)
    await svc.client.post(
        "/v1/events", json={"events": hot_events("b", clock.now(), "lee@acme.com")}
    )
    late = next(i for i in await eventually(lambda: _two(decision_ids(svc))) if i != early)
    await eventually(lambda: _attempted(svc, [early, late]))
    await drive_to_dead(svc, clock, [early, late])
    sent = len(hook.requests)
    assert sent == 2 * 8  # every scheduled attempt was made

    url = f"/v1/destinations/{dest['id']}/redrive"
    hook.status = 204
    r = await svc.client.post(url, json={"since": iso(t0 + 1800)})
    assert r.status_code == 202, r.text
    assert r.json() == {"redriven": 1}
    got = await hook.wait_for(sent + 1)
    assert got[-1].headers["webhook-id"] == late
    [d] = await eventually(lambda: _with_status(svc, late, "delivered"))
    assert d["attempts"] == 1
    assert (await deliveries_of(svc, early))[0]["status"] == "dead"

    # the default status filter is dead only: the delivered one is left alone
    r = await svc.client.post(url, json={"since": iso(t0 - 60), "until": iso(t0 + 60)})
    assert r.json() == {"redriven": 1}
    await hook.wait_for(sent + 2)
    await eventually(lambda: _with_status(svc, early, "delivered"))
    r = await svc.client.post(url, json={"since": iso(t0 - 60)})
    assert r.json() == {"redriven": 0}
    r = await svc.client.post(url, json={"since": iso(t0 - 60), "status": ["delivered"]})
    assert r.json() == {"redriven": 2}
    await hook.wait_for(sent + 4)


async def _two(ids: Any) -> list[str] | None:
    got: list[str] = await ids
    return got if len(got) == 2 else None


async def _attempted(svc: Service, decisions: list[str]) -> bool:
    states = [d for i in decisions for d in await deliveries_of(svc, i)]
    return bool(states) and all(d["attempts"] for d in states)


async def _with_status(svc: Service, decision_id: str, status: str) -> list[dict[str, Any]]:
    ds = await deliveries_of(svc, decision_id)
    return ds if all(d["status"] == status for d in ds) else []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),  # no time zone
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"since": "2026-01-01T00:00:00Z", "status": ["pending"]}, "status[0]"),
        ({"since": "2026-01-01T00:00:00Z", "status": []}, "status"),
    ],
)
async def test_redrive_refuses_bad_ranges(
    svc: Service, hook: Receiver, body: dict[str, Any], field: str
) -> None:
    dest = await setup_crm(svc, hook)
    r = await svc.client.post(f"/v1/destinations/{dest['id']}/redrive", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


async def test_redrive_of_a_disabled_destination_is_a_conflict(
    svc: Service, hook: Receiver
) -> None:
    dest = await setup_crm(svc, hook)
    await svc.client.patch(f"/v1/destinations/{dest['id']}", json={"enabled": False})
    r = await svc.client.post(
        f"/v1/destinations/{dest['id']}/redrive", json={"since": "2026-01-01T00:00:00Z"}
    )
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "destination_disabled"


# -- per-lead order, continuous failure, parking -----------------------------------------


async def test_a_leads_decisions_reach_an_endpoint_in_order_retries_included(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    """The warm decision's delivery fails; the hot one made meanwhile waits behind it and
    goes out only after the warm one's retry succeeded."""
    await setup_crm(svc, hook)
    await route_warm_leads(svc)
    hook.status = 500
    warm_event = event(
        "w-1", "site_visit", clock.now(), email="dana@acme.com", title="VP Sales", account=ACME
    )
    await svc.client.post("/v1/events", json={"events": [warm_event]})
    [first] = await hook.wait_for(1)
    assert first.json()["data"]["rule"] == "warm_nurture"
    [warm_id] = await eventually(lambda: decision_ids(svc))
    await settled_delivery_attempts(svc, warm_id, 1)

    clock.advance(1.0)  # still before the warm delivery's retry (5 s ± 20%)
    hot = [
        event("h-1", "demo_request", clock.now(), email="dana@acme.com"),
        event("h-2", "pricing_page_view", clock.now(), email="dana@acme.com"),
    ]
    await svc.client.post("/v1/events", json={"events": hot})
    [hot_id] = [d for d in await eventually(lambda: two_decisions(svc)) if d != warm_id]
    assert svc.runtime.dispatcher is not None
    svc.runtime.dispatcher.poke()
    await asyncio.sleep(0.5)
    waiting = (await svc.client.get(f"/v1/decisions/{hot_id}")).json()["deliveries"][0]
    assert (waiting["status"], waiting["attempts"]) == ("pending", 0)
    assert len(hook.requests) == 1  # the hot one did not overtake

    hook.status = 204
    clock.advance(6.0)  # past the warm delivery's retry
    svc.runtime.dispatcher.poke()
    got = await hook.wait_for(3)
    assert [g.json()["data"]["rule"] for g in got] == ["warm_nurture", "warm_nurture", "hot_tier_1"]
    assert [g.headers["webhook-id"] for g in got] == [warm_id, warm_id, hot_id]
    assert (await settled_delivery(svc, hot_id, "delivered"))["attempts"] == 1


async def two_decisions(svc: Service) -> list[str]:
    ids = await decision_ids(svc)
    return ids if len(ids) >= 2 else []


async def settled_delivery_attempts(svc: Service, decision_id: str, n: int) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        r = await svc.client.get(f"/v1/decisions/{decision_id}")
        [d] = r.json()["deliveries"]
        return d if len(d["history"]) >= n else None

    got: dict[str, Any] = await eventually(check)
    return got


async def test_an_endpoint_failing_past_the_grace_period_is_disabled_and_parked(
    settings: Settings, hook: Receiver, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Every attempt fails for longer than INTENT_DELIVERY_DISABLE_AFTER_SECONDS: the
    destination is switched off (logged, metered), its deliveries are parked, and an
    admin's re-enable sends them. A success in between starts the clock again."""
    assert Settings().delivery_disable_after_seconds == 5 * 86400  # the default
    grace = 1000.0
    quick = settings.model_copy(update={"delivery_disable_after_seconds": grace})
    async with service(quick, clock) as svc:
        dest = await setup_crm(svc, hook)
        assert svc.runtime.dispatcher is not None
        hook.status = 500
        before = disabled_count("failing")
        await svc.client.post("/v1/events", json={"events": hot_events("f", clock.now())})
        [decision_id] = await eventually(lambda: decision_ids(svc))
        await settled_delivery_attempts(svc, decision_id, 1)
        t0 = clock.now()

        async def view() -> dict[str, Any]:
            body: dict[str, Any] = (await svc.client.get(f"/v1/destinations/{dest['id']}")).json()
            return body

        assert (await eventually(lambda: failing(view)))["enabled"] is True

        # attempts 2 and 3 (5 s and 5 min on) fail, still inside the grace period
        for n, step in ((2, 6.0), (3, 400.0)):
            clock.advance(step)
            svc.runtime.dispatcher.poke()
            await settled_delivery_attempts(svc, decision_id, n)
        assert (await view())["enabled"] is True
        assert clock.now() - t0 < grace

        # attempt 4 (30 min on) fails past it: off, parked, logged, metered
        with caplog.at_level(logging.WARNING, logger="app.delivery.dispatcher"):
            clock.advance(2200.0)
            svc.runtime.dispatcher.poke()
            parked = await settled_delivery(svc, decision_id, "parked")
        assert parked["attempts"] == 4
        off = await view()
        assert (off["enabled"], off["disabled_reason"]) == (False, "failing")
        assert disabled_count("failing") == before + 1
        assert any(dest["id"] in r.getMessage() for r in caplog.records)

        # nothing goes out while it is off, however much time passes
        clock.advance(86400.0)
        svc.runtime.dispatcher.poke()
        await asyncio.sleep(0.5)
        assert len(hook.requests) == 4

        hook.status = 204
        r = await svc.client.patch(f"/v1/destinations/{dest['id']}", json={"enabled": True})
        assert (r.json()["enabled"], r.json()["failing_since"]) == (True, None)
        done = await settled_delivery(svc, decision_id, "delivered")
        assert [h["status_code"] for h in done["history"]] == [500, 500, 500, 500, 204]
        assert len({g.headers["webhook-id"] for g in hook.requests}) == 1


async def failing(view: Any) -> dict[str, Any] | None:
    body: dict[str, Any] = await view()
    return body if body["failing_since"] is not None else None


async def test_a_success_restarts_the_failure_clock(
    settings: Settings, hook: Receiver, clock: FakeClock
) -> None:
    quick = settings.model_copy(update={"delivery_disable_after_seconds": 1000.0})
    async with service(quick, clock) as svc:
        dest = await setup_crm(svc, hook)
        assert svc.runtime.dispatcher is not None
        hook.status = 500
        await svc.client.post("/v1/events", json={"events": hot_events("a", clock.now())})
        [first] = await eventually(lambda: decision_ids(svc))
        await settled_delivery_attempts(svc, first, 1)
        clock.advance(900.0)
        hook.status = 204
        await svc.client.post(
            "/v1/events", json={"events": hot_events("b", clock.now(), "lee@acme.com")}
        )
        await hook.wait_for(2)

        async def healed() -> dict[str, Any] | None:
            r = await svc.client.get(f"/v1/destinations/{dest['id']}")
            body: dict[str, Any] = r.json()
            return body if body["failing_since"] is None else None

        await eventually(healed)
        hook.status = 500
        clock.advance(900.0)  # 1,800 s after the first failure, 900 s after the success
        await svc.client.post(
            "/v1/events", json={"events": hot_events("c", clock.now(), "max@acme.com")}
        )
        await hook.wait_for(4)  # max's attempt and the first decision's retry: both fail
        await asyncio.sleep(0.3)
        body = (await svc.client.get(f"/v1/destinations/{dest['id']}")).json()
        assert body["enabled"] is True
        assert body["failing_since"] is not None


async def test_deleting_a_destination_closes_its_queue(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    dest = await setup_crm(svc, hook)
    hook.status = 500
    await svc.client.post("/v1/events", json={"events": hot_events("d", clock.now())})
    [decision_id] = await eventually(lambda: decision_ids(svc))
    await settled_delivery_attempts(svc, decision_id, 1)
    assert (await svc.client.delete(f"/v1/destinations/{dest['id']}")).status_code == 204
    closed = await settled_delivery(svc, decision_id, "dead")
    assert closed["last_error"] == "destination_deleted"
