"""Segment's and RudderStack's Node SDKs, unchanged (the versions pinned in
tests/clients/package-lock.json), configured the way the README says: ``host`` for
``@segment/analytics-node`` and ``dataPlaneUrl`` for ``@rudderstack/rudder-sdk-node``, each
the service's root URL. tests/clients/*-node.mjs send one lead's identify, ``Demo
Requested`` and ``/pricing`` page view and exit non-zero on any error the SDK reports; the
lead then carries the score the policy gives that journey.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from tests.clients.support import (
    CLIENTS,
    Site,
    require_node,
    require_node_modules,
    scored_lead,
    site,
)


async def run_node(s: Site, script: str, user_id: str, email: str) -> str:
    """Run ``script`` with the service's URL and write key; its stdout. A non-zero exit
    fails with what the script printed and what the service saw."""
    require_node_modules()
    proc = await asyncio.create_subprocess_exec(
        require_node(),
        str(CLIENTS / script),
        s.url,
        s.write_key,
        user_id,
        email,
        cwd=CLIENTS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{script} did not finish\n{await s.report()}") from None
    assert proc.returncode == 0, (
        f"{script} exited {proc.returncode}\nstdout: {out.decode()}\nstderr: {err.decode()}\n"
        f"{await s.report()}"
    )
    return out.decode()


def basic(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


async def test_segment_analytics_node(tmp_path: Path) -> None:
    async with site(tmp_path) as s:
        await run_node(s, "segment-node.mjs", "u-node-seg", "dana.node@northwind.example")
        await scored_lead(s, "dana.node@northwind.example")

        sent = s.recorder.from_clients()
        # new URL('/v1/batch', host): at the root, whatever path the host has.
        assert {(e.method, e.path, e.status) for e in sent} == {("POST", "/v1/batch", 200)}
        for e in sent:
            assert e.headers["authorization"] == basic(s.write_key)
            assert e.headers["content-type"] == "application/json"
            body = e.json()
            assert body["writeKey"] == s.write_key
            assert "sentAt" in body


async def test_rudder_sdk_node(tmp_path: Path) -> None:
    async with site(tmp_path) as s:
        await run_node(s, "rudder-node.mjs", "u-node-rud", "dana.rnode@northwind.example")
        await scored_lead(s, "dana.rnode@northwind.example")

        sent = s.recorder.from_clients()
        assert {(e.method, e.path, e.status) for e in sent} == {("POST", "/v1/batch", 200)}
        for e in sent:
            assert e.headers["authorization"] == basic(s.write_key)
            # axios posts the gzipped JSON with its default form content type.
            assert e.headers.get("content-encoding") == "gzip"
            assert e.headers["content-type"] == "application/x-www-form-urlencoded"
            body = e.json()
            # Stamps: originalTimestamp per message, sentAt on the batch and on each message.
            assert "sentAt" in body
            assert all("originalTimestamp" in m and "sentAt" in m for m in body["batch"])
