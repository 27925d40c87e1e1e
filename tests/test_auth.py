"""API keys (app/auth.py) on a real database: a key is shown once and stored only as its
hash, ``KeyStore`` verifies keys with a short cache, ``authenticate`` answers 401 for a
missing, unknown or revoked key and 403 for a missing scope, and scopes parse strictly."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request

from app import auth
from app.auth import ApiKey, KeyStore, authenticate, create_key, hash_key, parse_scopes
from app.clock import Clock
from app.db import api_keys, make_sessionmaker
from app.errors import Forbidden, InvalidInput, Unauthenticated, Unavailable
from tests.support.domain import T0
from tests.support.gate import HeldRead

Sessions = async_sessionmaker[AsyncSession]


async def new_key(sessions: Sessions, scopes: list[str], name: str = "ci") -> tuple[str, str]:
    async with sessions() as session, session.begin():
        return await create_key(session, name=name, scopes=scopes, now=T0)


async def revoke(sessions: Sessions, key_id: str) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=T0 + 1)
        )


def request(store: KeyStore, authorization: str | None) -> Request:
    """An HTTP request to an app whose runtime holds ``store``, as the routes see it."""
    app = Starlette()
    app.state.runtime = SimpleNamespace(keys=store, clock=Clock())
    headers = [(b"authorization", authorization.encode())] if authorization is not None else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "app": app})


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- keys ---------------------------------------------------------------------------------


async def test_a_new_key_is_stored_only_as_its_hash(sessions: Sessions) -> None:
    key_id, key = await new_key(sessions, ["ingest", "read"], name="website")
    assert key.startswith("ir_") and len(key) > 40  # 32 random bytes, URL-safe
    async with sessions() as session:
        [row] = (await session.execute(select(api_keys))).all()
    assert row.id == key_id and row.name == "website"
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest() == hash_key(key)
    assert row.prefix == key[:10]  # enough to recognise it in a list, not to use it
    assert row.scopes == "ingest,read"
    assert row.created_at == T0 and row.revoked_at is None
    assert not any(key in str(value) for value in row), "the key itself is never stored"

    _, other = await new_key(sessions, ["ingest"])
    assert other != key


async def test_the_store_finds_a_key_by_its_hash_and_not_once_revoked(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)  # every lookup reads the database
    key_id, key = await new_key(sessions, ["read", "feedback"], name="crm")
    store = KeyStore(sessions)
    assert await store.lookup(key) == ApiKey(key_id, "crm", frozenset({"read", "feedback"}))
    assert await store.lookup(key + "x") is None
    assert await store.lookup("ir_" + "A" * 43) is None
    await revoke(sessions, key_id)
    assert await store.lookup(key) is None


async def test_the_cache_remembers_answers_for_its_lifetime(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id, key = await new_key(sessions, ["read"])
    store = KeyStore(sessions)
    assert await store.lookup(key) is not None
    await revoke(sessions, key_id)
    # Within CACHE_SECONDS the revocation is not seen yet: the documented staleness.
    assert await store.lookup(key) is not None
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)
    assert await store.lookup(key) is None

    # Answers that found nothing are cached too, and expire the same way.
    monkeypatch.setattr(auth, "CACHE_SECONDS", 3600.0)
    later = "ir_" + "B" * 43
    assert await store.lookup(later) is None
    async with sessions() as session, session.begin():
        await session.execute(
            api_keys.insert().values(
                id="key_later",
                name="later",
                prefix=later[:10],
                key_hash=hash_key(later),
                scopes="read",
                created_at=T0,
            )
        )
    assert await store.lookup(later) is None
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)
    found = await store.lookup(later)
    assert found is not None and found.id == "key_later"


async def test_a_database_that_cannot_be_reached_is_503_with_retry_after() -> None:
    # A port nothing listens on: the connection is refused at once.
    engine = create_async_engine("postgresql+asyncpg://intent:intent@127.0.0.1:1/intent")
    try:
        store = KeyStore(make_sessionmaker(engine))
        with pytest.raises(Unavailable) as caught:
            await store.lookup("ir_" + "C" * 43)
    finally:
        await engine.dispose()
    assert caught.value.status == 503
    assert caught.value.headers == {"Retry-After": "1"}


# -- authenticate -------------------------------------------------------------------------


async def test_authenticate_answers_401_403_or_the_key(sessions: Sessions) -> None:
    key_id, key = await new_key(sessions, ["ingest"], name="website")
    revoked_id, revoked = await new_key(sessions, ["ingest"], name="old")
    await revoke(sessions, revoked_id)
    store = KeyStore(sessions)

    ok = request(store, f"Bearer {key}")
    found = await authenticate(ok, "ingest")
    assert (found.id, found.scopes) == (key_id, frozenset({"ingest"}))
    assert ok.state.api_key == found

    for header in (None, "", "Bearer ", "Token " + key, f"Bearer {key}x", f"Bearer {revoked}"):
        with pytest.raises(Unauthenticated) as caught:
            await authenticate(request(store, header), "ingest")
        assert (caught.value.status, caught.value.field) == (401, "authorization"), header

    with pytest.raises(Forbidden) as denied:
        await authenticate(request(store, f"Bearer {key}"), "admin")
    assert (denied.value.status, denied.value.code) == (403, "insufficient_scope")
    assert '"admin"' in denied.value.message and "ingest" in denied.value.message


async def test_basic_auth_carries_the_key_as_user_name_only_where_allowed(
    sessions: Sessions,
) -> None:
    key_id, key = await new_key(sessions, ["ingest"])
    store = KeyStore(sessions)
    found = await authenticate(request(store, basic(key)), "ingest", basic=True)
    assert found.id == key_id
    with pytest.raises(Unauthenticated) as caught:
        await authenticate(request(store, basic(key)), "ingest")  # a Bearer-only route
    assert "Basic" not in caught.value.message
    for header in ("Basic !!!not-base64", "Basic " + base64.b64encode(b":pw").decode()):
        with pytest.raises(Unauthenticated):
            await authenticate(request(store, header), "ingest", basic=True)


# -- scopes -------------------------------------------------------------------------------


def test_scopes_parse_from_a_comma_separated_list() -> None:
    assert parse_scopes("ingest, read ,admin") == ["ingest", "read", "admin"]
    assert parse_scopes("feedback") == ["feedback"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "at least one scope"),
        (" , ", "at least one scope"),
        ("ingest,write", "unknown scope 'write'"),
        ("Read", "unknown scope 'Read'"),
    ],
)
def test_bad_scopes_are_a_clear_422_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_scopes(text)
    assert (caught.value.status, caught.value.field) == (422, "scopes")
    assert message in caught.value.message


async def test_a_lookup_under_way_across_a_revocation_is_not_cached(
    sessions: Sessions,
) -> None:
    key_id, key = await new_key(sessions, ["read"])
    store = KeyStore(sessions)
    held = HeldRead(sessions)
    store._sessionmaker = held  # type: ignore[assignment]
    lookup = asyncio.create_task(store.lookup(key))
    await held.read.wait()  # it has read the row while the key was live
    await revoke(sessions, key_id)
    store.invalidate()  # what the revoking route does after its commit
    held.release.set()
    assert await lookup is not None  # it began before the revocation
    assert await store.lookup(key) is None  # but its answer was not kept for a second
