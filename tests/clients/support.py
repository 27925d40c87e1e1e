"""What the real-client tests share: a service whose every request is recorded, a Segment
source and its write key, the score the journey should give (worked out from the policy in
force), and waiting for the lead to carry it.

Every client sends the same journey for one lead: identify (email and title ``VP Sales``),
track ``Demo Requested`` and a page view of ``/pricing``. The service is wrapped in a
recorder so that a failure says exactly what the SDK sent and what it got back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.config import Settings
from app.main import create_app
from app.runtime.service import Runtime
from tests.support.harness import Service, serve

CLIENTS = Path(__file__).resolve().parent
NODE_MODULES = CLIENTS / "node_modules"
CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "run deploy/clients.sh (make test runs it)"

TITLE = "VP Sales"
TRACK = "Demo Requested"
PAGE_PATH = "/pricing"
SOURCE = "website"


def require_node_modules() -> Path:
    """The pinned npm clients; missing is a failure that says how to install them."""
    if not (NODE_MODULES / ".package-lock.json").is_file():
        pytest.fail(f"{NODE_MODULES} is missing: {INSTALL}")
    return NODE_MODULES


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the Node SDK tests need Node.js 20")
    return node


def require_chromium() -> Path:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing (Debian's chromium package): {INSTALL}")
    return CHROMIUM


# -- the service, recorded ----------------------------------------------------------------


@dataclass
class Exchange:
    """One request the service answered, as it arrived and as it left."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    response: bytes = b""

    @property
    def text(self) -> str:
        """The body as sent, gunzipped when the client compressed it."""
        body = self.body
        if self.headers.get("content-encoding") == "gzip":
            with contextlib.suppress(OSError, EOFError):
                body = gzip.decompress(body)
        return body.decode(errors="replace")

    def json(self) -> Any:
        return orjson.loads(self.text)

    def __str__(self) -> str:
        shown = {
            k: v
            for k, v in self.headers.items()
            if k not in ("host", "connection", "accept", "accept-language", "content-length")
        }
        answer = {k: v for k, v in self.response_headers.items() if k.startswith("access-control")}
        return (
            f"{self.method} {self.path} {shown}\n    sent: {self.text[:700]}\n"
            f"    got: {self.status} {answer} {self.response[:300].decode(errors='replace')}"
        )


class Recorder:
    """An ASGI wrapper that keeps every HTTP exchange of the app it wraps."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.exchanges: list[Exchange] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        ex = Exchange(scope["method"], scope["path"], headers, b"")
        self.exchanges.append(ex)

        async def receive_recorded() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                ex.body += message.get("body", b"")
            return message

        async def send_recorded(message: Any) -> None:
            if message["type"] == "http.response.start":
                ex.status = message["status"]
                ex.response_headers = {
                    k.decode("latin-1"): v.decode("latin-1") for k, v in message["headers"]
                }
            elif message["type"] == "http.response.body":
                ex.response += message.get("body", b"")
            await send(message)

        await self.app(scope, receive_recorded, send_recorded)

    def from_clients(self) -> list[Exchange]:
        """What the SDKs and the browser sent: not the test's own admin (Bearer) calls."""
        return [
            e
            for e in self.exchanges
            if not e.headers.get("authorization", "").lower().startswith("bearer ")
        ]


@dataclass
class Site:
    """The service, its recorder and one Segment source with its write key."""

    svc: Service
    recorder: Recorder
    write_key: str = ""
    source: str = SOURCE

    @property
    def url(self) -> str:
        return self.svc.url

    async def report(self) -> str:
        """Every exchange with a client, then the source's debugger: for failure messages."""
        lines = [str(e) for e in self.recorder.from_clients()] or ["(no request from a client)"]
        r = await self.svc.client.get(f"/v1/sources/{self.source}/recent")
        lines.append(f"GET /v1/sources/{self.source}/recent -> {r.status_code} {r.text[:2000]}")
        return "\n".join(lines)


@contextlib.asynccontextmanager
async def site(tmp_path: Path, *, allowed_origins: list[str] | None = None) -> AsyncIterator[Site]:
    """A fresh service on SQLite (real clock, since the SDKs stamp real time) with a
    ``segment`` source named ``website``."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/intent.db", sqlite_synchronous="NORMAL"
    )
    app = create_app(settings)
    recorder = Recorder(app)
    async with serve(recorder) as url:
        runtime: Runtime = app.state.runtime
        key = runtime.bootstrap_key
        assert key, "a fresh database creates a bootstrap admin key"
        async with httpx.AsyncClient(
            base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            s = Site(Service(url, runtime, key, client), recorder)
            s.write_key = await segment_source(s, allowed_origins)
            yield s


async def segment_source(s: Site, allowed_origins: list[str] | None) -> str:
    """``POST /v1/sources`` for a Segment source, as the README says; its write key."""
    body: dict[str, Any] = {"name": s.source, "kind": "segment"}
    if allowed_origins is not None:
        body["allowed_origins"] = allowed_origins
    r = await s.svc.client.post("/v1/sources", json=body)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["name"] == s.source
    assert made["kind"] == "segment"
    assert made["allowed_origins"] == (allowed_origins or [])
    write_key: str = made["write_key"]
    assert write_key, made
    return write_key


# -- what the journey should score ----------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    signals: dict[str, float]
    fit_rules: dict[str, float]
    fit: float
    intent: float
    total: float
    band: str


def expected_from(policy: dict[str, Any], *, title: str = TITLE) -> Expected:
    """The journey's score under ``policy``: the track and page signals' points (decay over
    the seconds a test takes is below the tolerance), the fit rules on ``lead.title`` that
    match ``title`` (the lead has no other attribute a rule reads, and a company domain),
    each clamped to its maximum, and the band of the total once decayed."""
    seg = policy["segment"]
    by_track = seg["track"][TRACK]
    by_page = next(p["signal"] for p in seg["pages"] if PAGE_PATH.startswith(p["prefix"]))
    signals: dict[str, float] = {}
    for name in (by_track, by_page):
        signals[name] = signals.get(name, 0) + policy["signals"][name]["points"]
    fit_rules = {
        rule["name"]: rule["points"]
        for rule in policy["fit"]["rules"]
        if rule["when"].get("field") == "lead.title"
        and "matches" in rule["when"]
        and re.search(rule["when"]["matches"], title)
    }
    scoring = policy["scoring"]
    fit = max(0.0, min(float(scoring["fit_max"]), float(sum(fit_rules.values()))))
    intent = max(0.0, min(float(scoring["intent_max"]), float(sum(signals.values()))))
    total = fit + intent
    # By the time the lead is read its signals have decayed a little, so a total on a band's
    # minimum (the default policy's 15 + 20 + 15 is warm's 50) is just below it: the band
    # is the first whose minimum the total exceeds.
    bands = sorted(scoring["bands"], key=lambda b: -b["min"])
    band = next(b["name"] for b in bands if total > b["min"] or b["min"] <= 0)
    return Expected(signals, fit_rules, fit, intent, total, band)


async def expected(s: Site) -> Expected:
    r = await s.svc.client.get("/v1/policy")
    assert r.status_code == 200, r.text
    exp = expected_from(r.json()["policy"])
    # The default policy's figures, as PRODUCT.md gives them: a check on the arithmetic.
    assert exp.signals.keys() == {"demo_request", "pricing_page_view"}
    assert "decision_maker_title" in exp.fit_rules
    return exp


def _signals(view: dict[str, Any]) -> dict[str, float]:
    return {i["signal"]: i["score"] for i in view["intent_breakdown"] if i["score"]}


def _fit_rules(view: dict[str, Any]) -> dict[str, float]:
    return {i["rule"]: i["points"] for i in view["fit_breakdown"]}


def _reached(view: dict[str, Any], exp: Expected) -> bool:
    got = _signals(view)
    return (
        got.keys() == exp.signals.keys()
        and all(abs(got[k] - v) < 0.01 for k, v in exp.signals.items())
        and _fit_rules(view) == exp.fit_rules
    )


async def scored_lead(s: Site, email: str, *, within: float = 20.0) -> dict[str, Any]:
    """Wait until ``email``'s lead carries the journey's score, then check all of it."""
    exp = await expected(s)
    deadline = time.monotonic() + within
    while True:
        r = await s.svc.client.get(f"/v1/leads/{email}")
        if r.status_code == 200 and _reached(r.json(), exp):
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert r.status_code == 200, f"{r.status_code} {r.text}\n{await s.report()}"
    view: dict[str, Any] = r.json()
    context = f"lead: {orjson.dumps(view).decode()}\n{await s.report()}"
    assert _signals(view) == pytest.approx(exp.signals, abs=0.01), context
    assert _fit_rules(view) == exp.fit_rules, context
    score = view["score"]
    assert score["intent"] == pytest.approx(exp.intent, abs=0.01), context
    assert score["fit"] == pytest.approx(exp.fit, abs=0.01), context
    assert score["total"] == pytest.approx(exp.total, abs=0.01), context
    assert score["band"] == exp.band, context
    assert view["email"] == email, context
    assert view["attributes"].get("title") == TITLE, context
    assert view["source"] == s.source, context
    return view


async def no_leads(s: Site) -> None:
    """Nothing was stored: no lead at all, anonymous or known."""
    r = await s.svc.client.get("/v1/leads")
    assert r.status_code == 200, r.text
    assert r.json()["leads"] == [], f"{r.text}\n{await s.report()}"
