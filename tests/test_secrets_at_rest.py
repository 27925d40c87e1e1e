"""Webhook and source secrets at rest (app.crypto), on SQLite and PostgreSQL: unreadable in
the database file and rows, still signing and verifying through the real service; a wrong
key refuses start-up naming INTENT_SECRET_KEY; rotation with ``new,old`` and
``intent-router secrets rotate``; legacy plaintext rows encrypted at start."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from cryptography.fernet import Fernet
from sqlalchemy import select, update
from standardwebhooks.webhooks import Webhook

import app.crypto
from app.cli.secrets import check_secret_key
from app.config import Settings
from app.crypto import SecretBox, SecretKeyError, generate_key, load_box
from app.db import destinations, sources
from app.runtime.secrets import seal_secrets
from app.runtime.service import Runtime
from tests.support.harness import Receiver, Service, free_port, service, ts
from tests.test_hooks import CALENDLY_BOOKING, calendly_headers
from tests.test_hooks_http import add_source, post_hook

CLI = str(Path(sys.executable).parent / "intent-router")
PLATFORM_SECRET = "calendly-signing-key-7f3a9c2e"  # Calendly's, pasted by an admin


def settings_for(database_url: str, key: str | None) -> Settings:
    return Settings(
        database_url=database_url,
        delivery_allowed_hosts=["127.0.0.1"],
        sqlite_synchronous="NORMAL",
        secret_key=key,  # given explicitly: None is the embedded default's key file
    )


def cli(database_url: str, key: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INTENT_DATABASE_URL": database_url}
    env.pop("INTENT_SECRET_KEY", None)
    if key is not None:
        env["INTENT_SECRET_KEY"] = key
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def stored(svc_or_runtime: Service | Runtime) -> dict[str, str]:
    """Every stored secret as a ``SELECT`` of the rows gives it."""
    runtime = svc_or_runtime.runtime if isinstance(svc_or_runtime, Service) else svc_or_runtime
    out: dict[str, str] = {}
    async with runtime.sessionmaker() as s:
        for r in await s.execute(select(destinations.c.id, destinations.c.secret)):
            out[f"destination {r.id}"] = r.secret
        prev = destinations.c.previous_secret
        for r in await s.execute(select(destinations.c.id, prev).where(prev.is_not(None))):
            out[f"destination {r.id} previous"] = r.previous_secret
        for r in await s.execute(select(sources.c.name, sources.c.secret)):
            if r.secret is not None:
                out[f"source {r.name}"] = r.secret
    return out


def sqlite_bytes(database_url: str) -> bytes:
    """The SQLite database file and its write-ahead log, as on disk."""
    path = Path(database_url.split(":///", 1)[1])
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def assert_nowhere(plain: list[str], rows: dict[str, str], raw: bytes | None) -> None:
    for value in plain:
        forms = {value, value.removeprefix("whsec_")}  # the key itself is the base64 part
        for where, held in rows.items():
            assert SecretBox.is_encrypted(held), f"{where} is stored in plain text"
            assert not any(f in held for f in forms), where
        if raw is not None:
            assert not any(f.encode() in raw for f in forms), f"{value[:8]}… in the file"


async def add_destination(svc: Service, hook: Receiver) -> dict[str, Any]:
    r = await svc.client.post("/v1/destinations", json={"name": "crm", "url": hook.url + "/crm"})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def send_test(svc: Service, hook: Receiver, dest_id: str) -> Any:
    """A test send through the real service; the ping as the receiver got it."""
    n = len(hook.requests)
    r = await svc.client.post(f"/v1/destinations/{dest_id}/test")
    assert r.status_code == 200 and r.json()["delivered"] is True, r.text
    return (await hook.wait_for(n + 1))[n]


async def calendly_booking_is_accepted(svc: Service) -> None:
    """The source's secret, opened from the database, verifies Calendly's signature."""
    booking = copy.deepcopy(CALENDLY_BOOKING)
    booking["payload"]["created_at"] = ts(time.time())
    body = orjson.dumps(booking)
    now = int(time.time())
    r = await post_hook(svc, "calendly", body, calendly_headers(PLATFORM_SECRET, now, body))
    assert r.status_code == 200, r.text
    forged = await post_hook(svc, "calendly", body, calendly_headers("not-the-key", now, body))
    assert forged.status_code == 401


async def test_secrets_are_unreadable_at_rest_and_webhooks_still_verify(
    database_url: str, hook: Receiver
) -> None:
    is_sqlite = database_url.startswith("sqlite")
    # SQLite: the embedded default (a key file next to the database); PostgreSQL: a key.
    settings = settings_for(database_url, None if is_sqlite else generate_key())
    async with service(settings) as svc:
        dest = await add_destination(svc, hook)
        r = await svc.client.post(
            f"/v1/destinations/{dest['id']}/rotate-secret", json={"overlap_seconds": 3600}
        )
        assert r.status_code == 200, r.text
        old, new = dest["secret"], r.json()["secret"]
        ping = await send_test(svc, hook, dest["id"])
        # Both signatures during the overlap, each checked by the Standard Webhooks library.
        assert Webhook(new).verify(ping.body, ping.headers)["type"] == "test.ping"
        assert Webhook(old).verify(ping.body, ping.headers)["type"] == "test.ping"
        await add_source(svc, "calendly", "calendly", secret=PLATFORM_SECRET)
        generated = (await add_source(svc, "typeform", "typeform"))["secret"]
        await calendly_booking_is_accepted(svc)

        rows = await stored(svc)
        assert len(rows) == 4  # secret, previous secret, two sources
        plain = [old, new, PLATFORM_SECRET, generated]
        assert_nowhere(plain, rows, sqlite_bytes(database_url) if is_sqlite else None)
    if is_sqlite:
        assert_nowhere(plain, {}, sqlite_bytes(database_url))  # after the last checkpoint
        key_file = Path(database_url.split(":///", 1)[1]).parent / "secret.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        Fernet(key_file.read_text().strip())  # a real Fernet key


async def test_a_wrong_key_refuses_to_start_naming_the_variable(
    database_url: str, hook: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    key = generate_key()
    async with service(settings_for(database_url, key)) as svc:
        await add_destination(svc, hook)
    wrong = generate_key()
    runtime = Runtime(settings_for(database_url, wrong))
    try:
        with pytest.raises(SecretKeyError) as refused:
            await runtime.prepare()
    finally:
        await runtime.engine.dispose()
    assert "INTENT_SECRET_KEY" in str(refused.value)
    assert str(refused.value).startswith("destinations.secret of 'dst_")  # which one

    # The command line says it in one line and exits 2.
    r = cli(database_url, wrong, "secrets", "rotate")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("intent-router: ") and "INTENT_SECRET_KEY" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    # So does the service: it exits instead of serving webhooks it cannot sign.
    served = cli(database_url, wrong, "serve", "--port", str(free_port()))
    assert served.returncode == 2
    assert "INTENT_SECRET_KEY" in served.stdout + served.stderr
    assert "Traceback" not in served.stdout + served.stderr  # one line, not a stack
    # What serve checks before anything listens (app.cli.secrets.check_secret_key; it runs
    # its own event loop, hence a thread here).
    with pytest.raises(typer.Exit) as stopped:
        await asyncio.to_thread(check_secret_key, settings_for(database_url, wrong))
    assert stopped.value.exit_code == 2
    assert "INTENT_SECRET_KEY" in capsys.readouterr().err
    await asyncio.to_thread(check_secret_key, settings_for(database_url, key))  # passes


async def test_rotation_new_then_old_and_secrets_rotate(database_url: str, hook: Receiver) -> None:
    old_key, new_key = generate_key(), generate_key()
    async with service(settings_for(database_url, old_key)) as svc:
        dest = await add_destination(svc, hook)
        await add_source(svc, "calendly", "calendly", secret=PLATFORM_SECRET)
        admin = svc.admin_key
        before = await stored(svc)
    # The new key first, the old one after it: everything still opens and signs.
    async with service(settings_for(database_url, f"{new_key},{old_key}"), key=admin) as svc:
        ping = await send_test(svc, hook, dest["id"])
        assert Webhook(dest["secret"]).verify(ping.body, ping.headers)["type"] == "test.ping"
        await calendly_booking_is_accepted(svc)

    r = cli(database_url, f"{new_key},{old_key}", "secrets", "rotate", "--json")
    assert r.returncode == 0, r.stderr
    # The destination's and the source's secret, and the keyring's suppression hash key.
    assert orjson.loads(r.stdout) == {"reencrypted": 3, "encrypted": 0}

    # Now the new key alone opens them, and the old one alone no longer does.
    async with service(settings_for(database_url, new_key), key=admin) as svc:
        after = await stored(svc)
        assert after.keys() == before.keys()
        assert all(after[k] != before[k] and SecretBox.is_encrypted(after[k]) for k in after)
        ping = await send_test(svc, hook, dest["id"])
        assert Webhook(dest["secret"]).verify(ping.body, ping.headers)["type"] == "test.ping"
        await calendly_booking_is_accepted(svc)
    runtime = Runtime(settings_for(database_url, old_key))
    try:
        with pytest.raises(SecretKeyError, match="INTENT_SECRET_KEY"):
            await runtime.prepare()
    finally:
        await runtime.engine.dispose()


async def test_legacy_plaintext_secrets_are_encrypted_at_start(
    database_url: str, hook: Receiver
) -> None:
    key = generate_key()
    async with service(settings_for(database_url, key)) as svc:
        dest = await add_destination(svc, hook)
        await add_source(svc, "calendly", "calendly", secret=PLATFORM_SECRET)
        admin = svc.admin_key
        # As a database from before encryption holds them.
        async with svc.runtime.sessionmaker() as s, s.begin():
            await s.execute(update(destinations).values(secret=dest["secret"]))
            await s.execute(update(sources).values(secret=PLATFORM_SECRET))
        assert set((await stored(svc)).values()) == {dest["secret"], PLATFORM_SECRET}
    async with service(settings_for(database_url, key), key=admin) as svc:
        rows = await stored(svc)
        box = svc.runtime.box
        assert all(SecretBox.is_encrypted(v) for v in rows.values())
        assert sorted(box.decrypt(v) for v in rows.values()) == sorted(
            [dest["secret"], PLATFORM_SECRET]
        )
        ping = await send_test(svc, hook, dest["id"])
        assert Webhook(dest["secret"]).verify(ping.body, ping.headers)["type"] == "test.ping"
        await calendly_booking_is_accepted(svc)
        again = await seal_secrets(svc.runtime.sessionmaker, box)  # idempotent
        # The two secrets and the keyring's hash key.
        assert (again.encrypted, again.checked, again.reencrypted) == (0, 3, 0)
        assert await stored(svc) == rows


# -- the key itself --------------------------------------------------------------------------


def test_the_embedded_default_keeps_one_key_file_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app.crypto, "_warned", False)
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path}/data/intent.db", None)
    with caplog.at_level(logging.WARNING, logger="app.crypto"):
        first, second = load_box(settings), load_box(settings)
    [warning] = [r for r in caplog.records if r.name == "app.crypto"]
    assert "INTENT_SECRET_KEY" in warning.getMessage() and "production" in warning.getMessage()
    key_file = tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert second.decrypt(first.encrypt("whsec_abc")) == "whsec_abc"
    digest = first.keyed_hash("dana@acme.com")
    assert digest == second.keyed_hash("dana@acme.com") and len(digest) == 64
    assert digest != first.keyed_hash("lee@acme.com")
    assert first.decrypt("legacy-plain") == "legacy-plain"  # no prefix: as it is


def test_postgresql_without_a_key_refuses_saying_how_to_make_one() -> None:
    with pytest.raises(SecretKeyError) as refused:
        load_box(settings_for("postgresql+asyncpg://u:p@127.0.0.1:1/x", None))
    message = str(refused.value)
    assert "INTENT_SECRET_KEY" in message and "intent-router secrets key" in message
    with pytest.raises(SecretKeyError, match="INTENT_SECRET_KEY: key 2 is not a Fernet key"):
        load_box(settings_for("postgresql+asyncpg://u:p@127.0.0.1:1/x", generate_key() + ",x"))
    r = cli("postgresql+asyncpg://u:p@127.0.0.1:1/x", None, "secrets", "rotate")
    assert r.returncode == 2 and "INTENT_SECRET_KEY" in r.stderr and "Traceback" not in r.stderr


def test_secrets_key_prints_a_fernet_key(tmp_path: Path) -> None:
    r = cli(f"sqlite+aiosqlite:///{tmp_path}/x.db", None, "secrets", "key")
    assert r.returncode == 0, r.stderr
    box = SecretBox([r.stdout.strip().encode()])
    assert box.decrypt(box.encrypt("s")) == "s"
