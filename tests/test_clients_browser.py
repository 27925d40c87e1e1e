"""Segment's browser SDK, ``@segment/analytics-next`` (its npm package's UMD build, pinned in
tests/clients), in Debian's headless Chromium driven by Playwright, on a pricing page served
from loopback: another origin than the service's. The page loads it the way the README says,
``AnalyticsBrowser.load({writeKey, cdnURL: <the service>})``, and sends identify, ``Demo
Requested`` and a page view (its path is ``/pricing``).

From an origin in the source's ``allowed_origins`` the lead is scored, with the SDK's own
settings fetch, CORS preflights and short routes (``/v1/i /t /p``, ``/v1/b`` when it
batches); from another origin nothing is stored and the browser sees the refusal.

Chromium resolves no host name but loopback (``--host-resolver-rules``), and the test
checks that every request the page made went to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import Browser, ConsoleMessage, Page, Request, async_playwright
from playwright.async_api import Response as PageResponse
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tests.clients.support import (
    CHROMIUM,
    CLIENTS,
    NODE_MODULES,
    Exchange,
    Site,
    no_leads,
    require_chromium,
    require_node_modules,
    scored_lead,
    site,
)
from tests.support.harness import serve

UMD = NODE_MODULES / "@segment" / "analytics-next" / "dist" / "umd"
BATCHING = {
    "integrations": {
        "Segment.io": {
            "deliveryStrategy": {"strategy": "batching", "config": {"size": 3, "timeout": 500}}
        }
    }
}
SHORT = {"identify": "/v1/i", "track": "/v1/t", "page": "/v1/p"}


@dataclass
class Pages:
    """A website on its own loopback port: /pricing, /config.js and the SDK's build."""

    origin: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    async def pricing(self, request: StarletteRequest) -> Response:
        return HTMLResponse((CLIENTS / "pricing.html").read_text())

    async def config_js(self, request: StarletteRequest) -> Response:
        script = "window.TEST_CONFIG = " + json.dumps(self.config) + ";\n"
        return Response(script, media_type="text/javascript")

    async def favicon(self, request: StarletteRequest) -> Response:
        return Response(status_code=204)


@contextlib.asynccontextmanager
async def website() -> AsyncIterator[Pages]:
    require_node_modules()
    require_chromium()
    pages = Pages()
    app = Starlette(
        routes=[
            Route("/pricing", pages.pricing),
            Route("/config.js", pages.config_js),
            Route("/favicon.ico", pages.favicon),
            Mount("/analytics-next", StaticFiles(directory=UMD)),
        ]
    )
    async with serve(app) as url:
        pages.origin = url
        yield pages


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    require_node_modules()
    require_chromium()
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"],
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Visit:
    page: Page
    requests: list[str] = field(default_factory=list)
    responses: list[tuple[int, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"page result: {self.result}\nrequests: {self.requests}\n"
            f"responses: {self.responses}\nfailures: {self.failures}\nconsole: {self.console}"
        )


@contextlib.asynccontextmanager
async def visit(
    browser: Browser,
    s: Site,
    pages: Pages,
    email: str,
    options: dict[str, Any] | None = None,
    *,
    cdn_settings: dict[str, Any] | None = None,
) -> AsyncIterator[Visit]:
    """Open ``pages``' /pricing in a fresh browser context and wait until the page has sent
    its three calls (or failed to load); the page stays open while the caller checks."""
    pages.config = {
        "writeKey": s.write_key,
        "cdnURL": s.url,
        "options": options or {},
        "userId": "u-" + email.split("@")[0],
        "email": email,
    }
    if cdn_settings is not None:
        pages.config["cdnSettings"] = cdn_settings
    context = await browser.new_context()
    try:
        page = await context.new_page()
        v = Visit(page)

        def on_failed(r: Request) -> None:
            v.failures.append(f"{r.method} {r.url}: {r.failure}")

        def on_response(r: PageResponse) -> None:
            v.responses.append((r.status, f"{r.request.method} {r.url}"))

        def on_console(m: ConsoleMessage) -> None:
            v.console.append(f"{m.type}: {m.text}")

        page.on("request", lambda r: v.requests.append(r.url))
        page.on("requestfailed", on_failed)
        page.on("response", on_response)
        page.on("console", on_console)
        await page.goto(pages.origin + "/pricing")
        await page.wait_for_function("window.RESULT && window.RESULT.done", timeout=30_000)
        v.result = await page.evaluate("window.RESULT")
        yield v
        for url in v.requests:
            assert urlsplit(url).hostname == "127.0.0.1", f"the page reached out: {url}\n{v}"
    finally:
        await context.close()


def from_origin(s: Site, origin: str) -> list[Exchange]:
    return [e for e in s.recorder.from_clients() if e.headers.get("origin") == origin]


def check_settings(s: Site, origin: str) -> None:
    """The settings document the SDK fetched points its apiHost back at the service."""
    got = [e for e in from_origin(s, origin) if e.path.endswith("/settings")]
    assert [(e.method, e.path, e.status) for e in got] == [
        ("GET", f"/v1/projects/{s.write_key}/settings", 200)
    ], got
    assert got[0].response_headers.get("access-control-allow-origin") == origin
    segment_io = json.loads(got[0].response)["integrations"]["Segment.io"]
    assert segment_io["apiHost"] == f"{urlsplit(s.url).netloc}/v1"
    assert segment_io["protocol"] == "http"


def check_posts(s: Site, origin: str, path: str) -> list[Exchange]:
    """analytics-next's posts to ``path``: text/plain JSON with the write key in the body
    and as Basic credentials, so each is preflighted (Authorization is not safelisted)."""
    posts = [e for e in from_origin(s, origin) if e.path == path and e.method == "POST"]
    assert posts, f"no POST {path}\n" + "\n".join(map(str, from_origin(s, origin)))
    for e in posts:
        assert e.status == 200, e
        assert e.response_headers.get("access-control-allow-origin") == origin, e
        assert e.headers["content-type"].startswith("text/plain"), e
        assert e.headers["authorization"].startswith("Basic "), e
        assert e.json()["writeKey"] == s.write_key, e
    preflights = [e for e in from_origin(s, origin) if e.path == path and e.method == "OPTIONS"]
    assert preflights, f"no preflight for {path}"
    for e in preflights:
        assert 200 <= e.status < 300, e
        assert e.response_headers.get("access-control-allow-origin") == origin, e
        assert "authorization" in e.headers["access-control-request-headers"].lower(), e
    return posts


async def test_analytics_next_from_an_allowed_origin(tmp_path: Path) -> None:
    async with website() as pages, site(tmp_path, allowed_origins=[pages.origin]) as s:
        async with (
            chromium() as browser,
            visit(browser, s, pages, "dana.web@northwind.example") as v,
        ):
            assert v.result["loadError"] is None, f"{v}\n{await s.report()}"
            assert v.result["errors"] == [], f"{v}\n{await s.report()}"
            assert v.result["delivered"] == ["identify", "track", "page"]
            await scored_lead(s, "dana.web@northwind.example")

        check_settings(s, pages.origin)
        for kind, path in SHORT.items():
            (post,) = check_posts(s, pages.origin, path)
            assert post.json()["type"] == kind
        page_call = check_posts(s, pages.origin, "/v1/p")[0].json()
        assert page_call["context"]["page"]["path"] == "/pricing"


async def test_analytics_next_batching_posts_to_b(tmp_path: Path) -> None:
    async with website() as pages, site(tmp_path, allowed_origins=[pages.origin]) as s:
        async with (
            chromium() as browser,
            visit(browser, s, pages, "dana.batch@northwind.example", BATCHING) as v,
        ):
            assert v.result["loadError"] is None, f"{v}\n{await s.report()}"
            # The page is done when the three calls are queued; the batch leaves after them.
            await scored_lead(s, "dana.batch@northwind.example")

        check_settings(s, pages.origin)
        (batch,) = check_posts(s, pages.origin, "/v1/b")
        body = batch.json()
        assert [m["type"] for m in body["batch"]] == ["identify", "track", "page"]
        assert "sentAt" in body
        assert all("sentAt" not in m for m in body["batch"])
        assert not any(e.path in SHORT.values() for e in from_origin(s, pages.origin))


async def test_analytics_next_from_a_refused_origin(tmp_path: Path) -> None:
    async with (
        website() as allowed,
        website() as refused,
        site(tmp_path, allowed_origins=[allowed.origin]) as s,
        chromium() as browser,
    ):
        async with visit(browser, s, refused, "dana.elsewhere@northwind.example") as v:
            failed = v.result["loadError"] is not None or v.result["errors"]
            assert failed, f"the page saw no failure\n{v}\n{await s.report()}"
            service = s.url + "/"
            saw_refusal = (
                any(
                    status == 403 and url.split(" ")[1].startswith(service)
                    for status, url in v.responses
                )
                or any(f.split(" ")[1].startswith(service) for f in v.failures)
                or any("CORS" in c for c in v.console)
            )
            assert saw_refusal, f"{v}\n{await s.report()}"
        await no_leads(s)
        for e in from_origin(s, refused.origin):
            assert e.response_headers.get("access-control-allow-origin") != refused.origin, e
            if e.method == "POST":
                assert e.status == 403, e

        # The same write key from the allowed origin, in the same browser, is scored.
        async with visit(browser, s, allowed, "dana.web@northwind.example") as v:
            assert v.result["errors"] == [], f"{v}\n{await s.report()}"
            await scored_lead(s, "dana.web@northwind.example")


async def test_analytics_next_with_another_sources_origin(tmp_path: Path) -> None:
    """A page on an origin that only another source allows, using this source's write key
    with its settings inline (no settings fetch): the preflight passes, since some source
    allows the origin, and each post is a 403 the SDK reports; nothing is stored."""
    async with (
        website() as allowed,
        website() as partner,
        site(tmp_path, allowed_origins=[allowed.origin]) as s,
        chromium() as browser,
    ):
        r = await s.svc.client.post(
            "/v1/sources",
            json={"name": "partner", "kind": "segment", "allowed_origins": [partner.origin]},
        )
        assert r.status_code == 201, r.text
        inline = {
            "integrations": {
                "Segment.io": {
                    "apiKey": s.write_key,
                    "apiHost": f"{urlsplit(s.url).netloc}/v1",
                    "protocol": "http",
                }
            }
        }
        email = "dana.partner@northwind.example"
        async with visit(browser, s, partner, email, cdn_settings=inline) as v:
            assert v.result["loadError"] is None, v
            assert len(v.result["errors"]) >= 3, f"{v}\n{await s.report()}"
            assert all("403" in e for e in v.result["errors"]), v
        posts = [e for e in from_origin(s, partner.origin) if e.method == "POST"]
        assert {e.path for e in posts} == set(SHORT.values()), "\n".join(map(str, posts))
        for e in posts:
            assert e.status == 403, e
            assert json.loads(e.response)["code"] == "origin_not_allowed", e
        await no_leads(s)
