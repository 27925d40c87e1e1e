"""API keys: random, shown once, stored as SHA-256 hashes; scopes checked on every route."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import new_id
from app.db import api_keys
from app.errors import Forbidden, InvalidInput, Unauthenticated, Unavailable

SCOPES = ("ingest", "read", "admin", "feedback")
KEY_PREFIX = "ir_"
CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[str]


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
    session: AsyncSession, *, name: str, scopes: list[str], now: float
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
        )
    )
    return key_id, key


class KeyStore:
    """Verifies keys against the database, with a short in-memory cache of hashes."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def lookup(self, key: str) -> ApiKey | None:
        digest = hash_key(key)
        hit = self._cache.get(digest)
        if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
        try:
            async with self._sessionmaker() as session:
                row = (
                    await session.execute(
                        select(api_keys).where(
                            api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
                        )
                    )
                ).first()
        except (OSError, DBAPIError) as exc:
            # The database is down: the request is refused as a whole and may be retried.
            raise Unavailable(
                f"API keys cannot be checked ({type(exc).__name__}); retry",
                headers={"Retry-After": "1"},
            ) from exc
        found = ApiKey(row.id, row.name, frozenset(row.scopes.split(","))) if row else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic(), found)
        return found


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
    store: KeyStore = request.app.state.runtime.keys
    found = await store.lookup(key)
    if found is None:
        raise Unauthenticated("unknown or revoked API key", field="authorization")
    if scope not in found.scopes:
        raise Forbidden(
            f'this API key lacks the "{scope}" scope (it has: {", ".join(sorted(found.scopes))})',
            code="insufficient_scope",
            field="authorization",
        )
    request.state.api_key = found
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
