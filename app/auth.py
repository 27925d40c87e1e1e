"""API keys: random, shown once, stored as SHA-256 hashes; scopes checked on every route.

A key is refused once revoked (``key_revoked``) or past its ``expires_at``
(``key_expired``). ``KeyStore`` caches what it read for at most ``CACHE_SECONDS`` (1 s),
so a revocation holds on every replica within a second, and at once on the replica that
made it (the route drops the cache after its commit). ``last_used_at`` is written off
the request path, at most once a minute per key and process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import new_id
from app.db import api_keys
from app.errors import Forbidden, InvalidInput, NotFound, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

SCOPES = ("ingest", "read", "admin", "feedback")
KEY_PREFIX = "ir_"
CACHE_SECONDS = 1.0  # how stale a revocation may be on another replica
LAST_USED_SECONDS = 60.0  # last_used_at is written at most this often per key


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[str]
    expires_at: float | None = None
    revoked_at: float | None = None
    # Events per second and burst; None: the INTENT_RATE_LIMIT_* defaults.
    rate_limit: float | None = None
    rate_burst: int | None = None
    last_used_at: float | None = None

    def refusal(self, now: float) -> Unauthenticated | None:
        """Why the key may not be used at ``now``, or None."""
        if self.revoked_at is not None:
            return Unauthenticated(
                "this API key was revoked", code="key_revoked", field="authorization"
            )
        if self.expires_at is not None and now >= self.expires_at:
            return Unauthenticated(
                "this API key has expired", code="key_expired", field="authorization"
            )
        return None


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str) -> list[str]:
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise InvalidInput(
            f"scopes: unknown scope {unknown[0]!r}" if unknown else "scopes: at least one scope",
            field="scopes",
        )
    return scopes


async def create_key(
    session: AsyncSession,
    *,
    name: str,
    scopes: list[str],
    now: float,
    expires_at: float | None = None,
    rate_limit: float | None = None,
    rate_burst: int | None = None,
) -> tuple[str, str]:
    """Store a new key's hash; returns (key id, the key itself — shown once)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = new_id("key", now)
    await session.execute(
        api_keys.insert().values(
            id=key_id,
            name=name,
            prefix=key[:10],
            key_hash=hash_key(key),
            scopes=",".join(scopes),
            created_at=now,
            expires_at=expires_at,
            rate_limit=rate_limit,
            rate_burst=rate_burst,
        )
    )
    return key_id, key


def _row_to_key(row: Any) -> ApiKey:
    return ApiKey(
        row.id,
        row.name,
        frozenset(row.scopes.split(",")),
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        rate_limit=row.rate_limit,
        rate_burst=row.rate_burst,
        last_used_at=row.last_used_at,
    )


class KeyStore:
    """Verifies keys against the database, with a short in-memory cache of rows."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._touched: dict[str, float] = {}  # key id → the last_used_at last written
        self._writes: set[asyncio.Task[None]] = set()
        self._generation = 0  # bumped by each invalidation

    def invalidate(self) -> None:
        """Forget every cached answer (after a revocation or change has committed)."""
        self._generation += 1
        self._cache.clear()

    async def lookup(self, key: str) -> ApiKey | None:
        """The key's row if it is known and not revoked (expiry is the caller's: it is a
        matter of the clock)."""
        found = await self.find(key)
        return found if found is not None and found.revoked_at is None else None

    async def find(self, key: str) -> ApiKey | None:
        """The key's row, revoked or not; None for a key never issued."""
        digest = hash_key(key)
        hit = self._cache.get(digest)
        if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
        generation = self._generation
        try:
            async with self._sessionmaker() as session:
                row = (
                    await session.execute(select(api_keys).where(api_keys.c.key_hash == digest))
                ).first()
        except (OSError, DBAPIError) as exc:
            # The database is down: the request is refused as a whole and may be retried.
            raise Unavailable(
                f"API keys cannot be checked ({type(exc).__name__}); retry",
                headers={"Retry-After": "1"},
            ) from exc
        found = _row_to_key(row) if row else None
        if generation != self._generation:
            return found  # read across a revocation's commit: answered, not cached
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic(), found)
        return found

    def touch(self, key: ApiKey, now: float) -> None:
        """Note a use of ``key``: ``last_used_at`` is written in the background, at most
        once per ``LAST_USED_SECONDS`` per key (never a write per request)."""
        last = self._touched.get(key.id, key.last_used_at)
        if last is not None and now - last < LAST_USED_SECONDS:
            return
        self._touched[key.id] = now
        task = asyncio.get_running_loop().create_task(self._write_last_used(key.id, now))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_last_used(self, key_id: str, now: float) -> None:
        # A short transaction of its own; another replica may have written a later use.
        try:
            async with self._sessionmaker() as session, session.begin():
                await session.execute(
                    update(api_keys)
                    .where(
                        api_keys.c.id == key_id,
                        or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < now),
                    )
                    .values(last_used_at=now)
                )
        except Exception as exc:  # best effort: a use not recorded is retried a minute on
            log.warning("last_used_at of key %s not written: %s", key_id, type(exc).__name__)
            self._touched.pop(key_id, None)

    async def close(self) -> None:
        """Wait for the ``last_used_at`` writes still under way (before the engine goes)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)


def _credential(request: Request, *, basic: bool) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if basic and scheme.lower() == "basic" and value.strip():
        try:
            user = base64.b64decode(value.strip()).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or None
    return None


def credential(request: Request) -> str | None:
    """The key a request carries: a bearer token, or the user name of Basic auth (how
    Segment's SDKs send their write key)."""
    return _credential(request, basic=True)


async def authenticate(request: Request, scope: str, *, basic: bool = False) -> ApiKey:
    key = _credential(request, basic=basic)
    if key is None:
        how = "Authorization: Bearer <key>" + (
            " or Basic auth with the key as user name" if basic else ""
        )
        raise Unauthenticated(f"an API key is required ({how})", field="authorization")
    return await check_key(request, key, scope)


async def check_key(request: Request, key: str, scope: str) -> ApiKey:
    """The API key ``key``, refused unless known, not revoked and holding ``scope``."""
    runtime = request.app.state.runtime
    store: KeyStore = runtime.keys
    found = await store.find(key)
    if found is None:
        raise Unauthenticated("unknown API key", field="authorization")
    now = runtime.clock.now()
    refused = found.refusal(now)
    if refused is not None:
        raise refused
    if scope not in found.scopes:
        raise Forbidden(
            f'this API key lacks the "{scope}" scope (it has: {", ".join(sorted(found.scopes))})',
            code="insufficient_scope",
            field="authorization",
        )
    request.state.api_key = found
    store.touch(found, now)
    return found


async def _ingest(request: Request) -> ApiKey:
    return await authenticate(request, "ingest")


async def _segment(request: Request) -> ApiKey:
    return await authenticate(request, "ingest", basic=True)


async def _read(request: Request) -> ApiKey:
    return await authenticate(request, "read")


async def _admin(request: Request) -> ApiKey:
    return await authenticate(request, "admin")


async def _feedback(request: Request) -> ApiKey:
    return await authenticate(request, "feedback")


IngestKey = Annotated[ApiKey, Depends(_ingest)]
SegmentKey = Annotated[ApiKey, Depends(_segment)]
ReadKey = Annotated[ApiKey, Depends(_read)]
AdminKey = Annotated[ApiKey, Depends(_admin)]
FeedbackKey = Annotated[ApiKey, Depends(_feedback)]


# -- the lifecycle: list, change, revoke (the admin API and the CLI) ---------------------

KEY_FIELDS = (
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
)


async def key_rows(session: AsyncSession, key_id: str | None = None) -> list[dict[str, Any]]:
    """Every key (or the one ``key_id``), oldest first: never the key or its hash."""
    query = select(*(api_keys.c[f] for f in KEY_FIELDS)).order_by(api_keys.c.created_at)
    if key_id is not None:
        query = query.where(api_keys.c.id == key_id)
    rows = [dict(zip(KEY_FIELDS, r, strict=True)) for r in (await session.execute(query)).all()]
    if key_id is not None and not rows:
        raise NotFound(f'no API key with id "{key_id[:64]}"', code="unknown_key", field="id")
    return rows


async def update_key(session: AsyncSession, key_id: str, values: dict[str, Any]) -> dict[str, Any]:
    """Change a key's quota or expiry (``values``: rate_limit, rate_burst, expires_at)."""
    unknown = set(values) - {"rate_limit", "rate_burst", "expires_at"}
    assert not unknown, unknown
    [row] = await key_rows(session, key_id)
    if values:
        await session.execute(update(api_keys).where(api_keys.c.id == key_id).values(**values))
        row.update(values)
    return row


async def revoke_key(session: AsyncSession, key_id: str, *, now: float) -> dict[str, Any]:
    """Revoke a key; revoking it again changes nothing (the first time is kept)."""
    [row] = await key_rows(session, key_id)
    if row["revoked_at"] is None:
        await session.execute(
            update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=now)
        )
        row["revoked_at"] = now
    return row
