"""Suppression: an erased person who asked not to be processed again stays out.

``suppressions`` holds a keyed hash (HMAC-SHA256 under a key derived from
``INTENT_SECRET_KEY``) of each identifier of the person, never the identifier. Each
process keeps the hashes in memory: loaded at start, added to on an erasure in this
process, and reloaded every ``RELOAD_SECONDS`` (new rows only) for erasures made by
another replica or the CLI. The pipeline drops an event any of whose identifiers
(email, ``user:<id>``, ``anon:<id>``) hashes to a suppressed entry before it is stored
or identified; the sender sees it as ``accepted`` (the HTTP contract is unchanged and a
client cannot probe who is suppressed); ``intent_events_suppressed_total`` counts them.
With no suppressions the check costs nothing (no hashing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import suppressions, upsert
from app.events import Event
from app.observability import metrics

RELOAD_SECONDS = 10.0


Hasher = Callable[[str], str]


class Suppressions:
    def __init__(self, hasher: Hasher) -> None:
        self._hash = hasher
        self._hashes: set[str] = set()
        self._loaded_to = 0.0  # created_at of the newest row loaded

    def __len__(self) -> int:
        return len(self._hashes)

    def hashes(self, identifiers: Iterable[str]) -> list[str]:
        return sorted({self._hash(i) for i in identifiers})

    def add(self, hashes: Iterable[str]) -> None:
        self._hashes.update(hashes)

    async def load(self, session: AsyncSession) -> int:
        """Read the rows added since the last load; how many hashes are held."""
        rows = await session.execute(
            select(suppressions.c.identifier_hash, suppressions.c.created_at).where(
                suppressions.c.created_at >= self._loaded_to
            )
        )
        for h, created_at in rows:
            self._hashes.add(h)
            self._loaded_to = max(self._loaded_to, created_at)
        return len(self._hashes)

    def drops(self, ev: Event) -> bool:
        """Whether ``ev`` names a suppressed person (counted when it does)."""
        if not self._hashes:
            return False
        hit = any(self._hash(k) in self._hashes for k in ev.identifiers())
        if hit:
            metrics.EVENTS_SUPPRESSED.inc()
        return hit


async def store(session: AsyncSession, hashes: list[str], *, now: float) -> int:
    """Record ``hashes`` as suppressed (idempotent); how many were given."""
    if hashes:
        await upsert(
            session,
            suppressions,
            [{"identifier_hash": h, "created_at": now} for h in hashes],
            ["identifier_hash"],
            [],
        )
    return len(hashes)
