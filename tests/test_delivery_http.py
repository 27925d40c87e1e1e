"""Webhook delivery against real receivers on loopback: 410, SSRF at send time, rotation,
formats and bulk redrive."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
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
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.clock import FakeClock
from app.delivery.ssrf import SsrfGuard, SsrfRefused
from tests.harness import Received, Receiver, Service, loopback_socket, serve
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
        pytest.skip("the openssl command is needed to make a test certificate")
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
