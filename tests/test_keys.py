"""The API key lifecycle against the real service: create (the key shown once), list (never
the key), change, revoke and expiry; a revoked key, a removed source and a rotated write
key refused by another replica of the same database within a second; ``last_used_at``
written off the request path; ``intent-router apikey list | revoke`` as a user runs them.

Issue 13's finding "Keys cannot be revoked" is held here."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import select

from app.auth import KeyStore, create_key
from app.clock import FakeClock, iso
from app.config import Settings
from app.db import api_keys
from tests.support.harness import Service, event, eventually, service
from tests.test_cli import run

CLI = str(Path(sys.executable).parent / "intent-router")


def basic(key: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def make_key(svc: Service, **body: Any) -> dict[str, Any]:
    r = await svc.client.post("/v1/keys", json={"name": "crm", "scopes": ["ingest"], **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def send(svc: Service, key: str, clock: FakeClock, event_id: str) -> httpx.Response:
    body = event(event_id, "site_visit", clock.now(), email="ada@acme.com")
    async with svc.as_key(key) as c:
        return await c.post("/v1/events", json=body)


async def key_row(svc: Service, key_id: str) -> Any:
    async with svc.runtime.sessionmaker() as s:
        return (await s.execute(select(api_keys).where(api_keys.c.id == key_id))).one()


# -- create, list, revoke -------------------------------------------------------------------


async def test_create_list_revoke(svc: Service, clock: FakeClock) -> None:
    created = await make_key(svc, scopes=["ingest", "read", "ingest"], rate_limit=50)
    key = created["key"]
    assert key.startswith("ir_") and created["prefix"] == key[:10]
    assert created["scopes"] == ["ingest", "read"] and created["rate_limit"] == 50
    assert created["revoked_at"] is None and created["expires_at"] is None
    assert (await send(svc, key, clock, "k-1")).status_code == 202

    listed = (await svc.client.get("/v1/keys")).json()["keys"]
    assert [k["name"] for k in listed] == ["bootstrap-admin", "crm"]
    text = orjson.dumps(listed).decode()
    row = await key_row(svc, created["id"])
    assert key not in text and row.key_hash not in text, "never the key or its hash"
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert set(listed[1]) == {
        "id",
        "name",
        "prefix",
        "scopes",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
        "rate_limit",
        "rate_burst",
    }

    r = await svc.client.delete(f"/v1/keys/{created['id']}")
    assert r.status_code == 204
    # On the replica that revoked it, at once: its cache was dropped after the commit.
    refused = await send(svc, key, clock, "k-2")
    assert refused.status_code == 401 and refused.json()["code"] == "key_revoked"
    assert (await svc.client.delete(f"/v1/keys/{created['id']}")).status_code == 204
    assert (await key_row(svc, created["id"])).revoked_at == clock.now()
    unknown = await svc.client.delete("/v1/keys/key_nope")
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_key"
    never = await send(svc, "ir_" + "A" * 43, clock, "k-3")
    assert never.status_code == 401 and never.json()["code"] == "unauthenticated"
    listed = (await svc.client.get("/v1/keys")).json()["keys"]
    assert listed[1]["revoked_at"] == iso(clock.now())


async def test_bad_keys_are_422_and_only_admin_manages_keys(svc: Service, clock: FakeClock) -> None:
    for body, field in (
        ({"name": "x", "scopes": ["root"]}, "scopes[0]"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "", "scopes": ["read"]}, "name"),
        ({"name": "x\n", "scopes": ["read"]}, "name"),
        ({"name": "x", "scopes": ["read"], "rate_limit": 0}, "rate_limit"),
        ({"name": "x", "scopes": ["read"], "rate_burst": 0}, "rate_burst"),
        ({"name": "x", "scopes": ["read"], "expires_at": iso(clock.now() - 1)}, "expires_at"),
        ({"name": "x", "scopes": ["read"], "key": "ir_mine"}, "key"),
    ):
        r = await svc.client.post("/v1/keys", json=body)
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
    ingest = (await make_key(svc))["key"]
    async with svc.as_key(ingest) as c:
        assert (await c.get("/v1/keys")).status_code == 403
        assert (await c.delete("/v1/keys/whatever")).status_code == 403


async def test_expiry_and_patch(svc: Service, clock: FakeClock) -> None:
    created = await make_key(svc, expires_at=iso(clock.now() + 60))
    key, key_id = created["key"], created["id"]
    assert created["expires_at"] is not None
    assert (await send(svc, key, clock, "x-1")).status_code == 202
    clock.advance(61)  # the runtime's clock: no cache lets an expired key through
    expired = await send(svc, key, clock, "x-2")
    assert expired.status_code == 401 and expired.json()["code"] == "key_expired"

    patched = await svc.client.patch(f"/v1/keys/{key_id}", json={"expires_at": None})
    assert patched.status_code == 200 and patched.json()["expires_at"] is None
    assert (await send(svc, key, clock, "x-3")).status_code == 202
    patched = await svc.client.patch(f"/v1/keys/{key_id}", json={"rate_burst": 7})
    assert patched.json()["rate_burst"] == 7 and patched.json()["rate_limit"] is None
    assert (await svc.client.patch("/v1/keys/key_nope", json={})).status_code == 404
    bad = await svc.client.patch(f"/v1/keys/{key_id}", json={"name": "other"})
    assert bad.status_code == 422 and bad.json()["field"] == "name"


# -- another replica ------------------------------------------------------------------------


async def test_a_revocation_holds_on_another_replica_within_a_second(
    settings: Settings, clock: FakeClock
) -> None:
    async with (
        service(settings, clock) as a,
        service(settings, clock, key=a.admin_key) as b,
    ):
        created = await make_key(a)
        key = created["key"]
        assert (await send(b, key, clock, "r-1")).status_code == 202  # b has it cached now
        assert (await a.client.delete(f"/v1/keys/{created['id']}")).status_code == 204
        await asyncio.sleep(1.1)  # longer than any cache may live
        refused = await send(b, key, clock, "r-2")
        assert refused.status_code == 401 and refused.json()["code"] == "key_revoked"

        # The same for a source's write key: rotated, then removed, on a; refused by b.
        r = await a.client.post("/v1/sources", json={"name": "web", "kind": "segment"})
        old = r.json()["write_key"]
        msg = {"userId": "u1", "event": "Demo Requested", "messageId": "w-1"}
        assert (await b.client.post("/v1/track", json=msg, headers=basic(old))).status_code == 200
        new = (await a.client.post("/v1/sources/web/rotate-key")).json()["write_key"]
        await asyncio.sleep(1.1)
        msg["messageId"] = "w-2"
        r = await b.client.post("/v1/track", json=msg, headers=basic(old))
        assert r.status_code == 401 and r.json()["field"] == "writeKey"
        assert (await b.client.post("/v1/track", json=msg, headers=basic(new))).status_code == 200
        assert (await a.client.delete("/v1/sources/web")).status_code == 204
        await asyncio.sleep(1.1)
        msg["messageId"] = "w-3"
        r = await b.client.post("/v1/track", json=msg, headers=basic(new))
        assert r.status_code == 401 and r.json()["field"] == "writeKey"


# -- last_used_at ---------------------------------------------------------------------------


async def test_last_used_at_is_written_in_the_background_once_a_minute(
    svc: Service, clock: FakeClock
) -> None:
    created = await make_key(svc)
    key, key_id = created["key"], created["id"]
    first = clock.now()
    assert (await send(svc, key, clock, "u-1")).status_code == 202

    async def written() -> float | None:
        value: float | None = (await key_row(svc, key_id)).last_used_at
        return value

    assert await eventually(written) == first
    store: KeyStore = svc.runtime.keys
    clock.advance(30)
    for i in range(5):  # within the minute: no write is even started
        assert (await send(svc, key, clock, f"u-2-{i}")).status_code == 202
    assert not store._writes and (await key_row(svc, key_id)).last_used_at == first
    clock.advance(31)
    assert (await send(svc, key, clock, "u-3")).status_code == 202

    async def moved() -> bool:
        return (await key_row(svc, key_id)).last_used_at == first + 61

    assert await eventually(moved)
    listed = (await svc.client.get("/v1/keys")).json()["keys"]
    assert [k["last_used_at"] for k in listed if k["id"] == key_id] != [None]


async def test_the_store_writes_last_used_at_only_forward(sessions: Any, clock: FakeClock) -> None:
    async with sessions() as s, s.begin():
        key_id, key = await create_key(s, name="ci", scopes=["read"], now=clock.now())
    store = KeyStore(sessions)
    found = await store.find(key)
    assert found is not None
    store.touch(found, clock.now() + 100)
    await store.close()
    other = KeyStore(sessions)  # another replica, which saw an older use
    other.touch(found, clock.now() + 90)
    await other.close()
    async with sessions() as s:
        row = (await s.execute(select(api_keys).where(api_keys.c.id == key_id))).one()
    assert row.last_used_at == clock.now() + 100


# -- the command line -----------------------------------------------------------------------


def test_cli_apikey_list_and_revoke(tmp_path: Path) -> None:
    made = run(tmp_path, "apikey", "create", "--name", "ops", "--scopes", "read,admin")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert run(tmp_path, "apikey", "create", "--name", "etl", "--scopes", "ingest").returncode == 0

    listed = run(tmp_path, "apikey", "list")
    assert listed.returncode == 0, listed.stderr
    header, *lines = listed.stdout.splitlines()
    assert header.split() == [
        "id",
        "name",
        "prefix",
        "scopes",
        "created_at",
        "last_used_at",
        "expires_at",
        "state",
    ]
    assert [line.split()[1] for line in lines] == ["ops", "etl"]
    assert key not in listed.stdout and key[:10] in listed.stdout
    keys = orjson.loads(run(tmp_path, "apikey", "list", "--json").stdout)["keys"]
    assert [(k["name"], k["scopes"], k["state"]) for k in keys] == [
        ("ops", ["read", "admin"], "active"),
        ("etl", ["ingest"], "active"),
    ]
    assert key not in orjson.dumps(keys).decode()

    revoked = run(tmp_path, "apikey", "revoke", keys[0]["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(f"key {keys[0]['id']} ('ops') revoked at ")
    again = run(tmp_path, "apikey", "revoke", keys[0]["id"])
    assert again.returncode == 0 and again.stdout == revoked.stdout  # the first time is kept
    keys = orjson.loads(run(tmp_path, "apikey", "list", "--json").stdout)["keys"]
    assert [k["state"] for k in keys] == ["revoked", "active"]
    unknown = run(tmp_path, "apikey", "revoke", "key_nope")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr == 'intent-router: no API key with id "key_nope"\n'


async def test_a_key_revoked_with_the_cli_is_refused_by_the_running_service(
    svc: Service, settings: Settings, clock: FakeClock
) -> None:
    created = await make_key(svc)
    assert (await send(svc, created["key"], clock, "c-1")).status_code == 202
    proc = await asyncio.create_subprocess_exec(
        CLI,
        "apikey",
        "revoke",
        created["id"],
        env={**os.environ, "INTENT_DATABASE_URL": settings.database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    await asyncio.sleep(1.1)
    refused = await send(svc, created["key"], clock, "c-2")
    assert refused.status_code == 401 and refused.json()["code"] == "key_revoked"
