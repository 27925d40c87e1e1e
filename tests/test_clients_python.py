"""Segment's and RudderStack's Python SDKs, unchanged, configured the way the README says:
each one's module-level settings, pointed at the service's root URL with a source's write
key. Each sends one lead's identify, ``Demo Requested`` and ``/pricing`` page view; the lead
then carries the score the policy gives that journey.

The SDKs send from a background thread with ``requests`` while the service runs in the
test's event loop, so their blocking flush goes through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
import rudderstack.analytics as rudder_analytics
import segment.analytics as analytics

from tests.clients.support import PAGE_PATH, TITLE, TRACK, scored_lead, site

PAGE = {"path": PAGE_PATH, "url": "https://www.example.com" + PAGE_PATH}


def basic(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


async def test_segment_analytics_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[Any] = []
    async with site(tmp_path) as s:
        # The README's two settings; the rest keep a failing test fast and its errors visible.
        monkeypatch.setattr(analytics, "write_key", s.write_key)
        monkeypatch.setattr(analytics, "host", s.url)
        monkeypatch.setattr(analytics, "on_error", lambda exc, batch: errors.append(exc))
        monkeypatch.setattr(analytics, "max_retries", 0)
        monkeypatch.setattr(analytics, "default_client", None)
        try:
            analytics.identify("u-py-seg", {"email": "dana.py@northwind.example", "title": TITLE})
            analytics.track("u-py-seg", TRACK, {"plan": "enterprise"})
            analytics.page("u-py-seg", name="Pricing", properties=PAGE)
            await asyncio.to_thread(analytics.flush)
        finally:
            await asyncio.to_thread(analytics.shutdown)
        assert errors == [], await s.report()

        await scored_lead(s, "dana.py@northwind.example")

        sent = s.recorder.from_clients()
        assert [(e.method, e.path, e.status) for e in sent] == [("POST", "/v1/batch", 200)]
        assert sent[0].headers["authorization"] == basic(s.write_key)
        body = sent[0].json()
        assert body["writeKey"] == s.write_key
        # analytics-python stamps sentAt on the batch, not on its messages: the clock-skew
        # correction reads it from there.
        assert "sentAt" in body
        assert all("sentAt" not in m for m in body["batch"])
        assert [m["type"] for m in body["batch"]] == ["identify", "track", "page"]


async def test_rudder_sdk_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[Any] = []
    async with site(tmp_path) as s:
        monkeypatch.setattr(rudder_analytics, "write_key", s.write_key)
        monkeypatch.setattr(rudder_analytics, "dataPlaneUrl", s.url, raising=False)
        monkeypatch.setattr(rudder_analytics, "on_error", lambda exc, batch: errors.append(exc))
        monkeypatch.setattr(rudder_analytics, "max_retries", 0)
        monkeypatch.setattr(rudder_analytics, "default_client", None)
        try:
            rudder_analytics.identify(
                "u-py-rud", {"email": "dana.rudder@northwind.example", "title": TITLE}
            )
            rudder_analytics.track("u-py-rud", TRACK, {"plan": "enterprise"})
            rudder_analytics.page("u-py-rud", name="Pricing", properties=PAGE)
            await asyncio.to_thread(rudder_analytics.flush)
        finally:
            await asyncio.to_thread(rudder_analytics.shutdown)
        assert errors == [], await s.report()

        await scored_lead(s, "dana.rudder@northwind.example")

        sent = s.recorder.from_clients()
        assert {(e.method, e.path, e.status) for e in sent} == {("POST", "/v1/batch", 200)}
        for e in sent:
            assert e.headers["authorization"] == basic(s.write_key)
            # gzip is on by default; the write key is only in the header, not the body.
            assert e.headers.get("content-encoding") == "gzip"
            assert "writeKey" not in e.json()
        messages = [m for e in sent for m in e.json()["batch"]]
        identify = next(m for m in messages if m["type"] == "identify")
        # RudderStack's Python SDK puts identify's traits in context.traits only.
        assert "traits" not in identify
        assert identify["context"]["traits"]["title"] == TITLE
