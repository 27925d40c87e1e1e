"""Webhook destinations as the pipeline and dispatcher see them, cached in memory, and
read for the API. (What changes them is ``app.delivery.lifecycle``.)"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import destinations, loads
from app.db.bulk import Bulk
from app.errors import NotFound

FILTER_KEYS = ("band", "tier", "team", "type")


@dataclass(frozen=True)
class Destination:
    id: str
    name: str
    url: str
    secret: str  # as stored (enc:v1:…, app.crypto); the Sender opens it to sign
    enabled: bool
    format: str
    filter: dict[str, list[str]] = field(default_factory=dict)
    previous_secret: str | None = None
    previous_secret_expires_at: float | None = None
    failing_since: float | None = None

    def secrets(self, now: float) -> list[str]:
        """The secrets to sign with: the current one, and the previous while it overlaps."""
        expires = self.previous_secret_expires_at
        if self.previous_secret and expires is not None and now < expires:
            return [self.secret, self.previous_secret]
        return [self.secret]

    def matches(self, decision: dict[str, Any], rule_destinations: list[str] | None) -> bool:
        """Named by the rule (if it names any) and every filter key satisfied."""
        if rule_destinations is not None and self.name not in rule_destinations:
            return False
        for key, allowed in self.filter.items():
            value = decision.get(key) or ("none" if key == "tier" else None)
            if allowed and value not in allowed:
                return False
        return True


COLUMNS = tuple(c.name for c in destinations.columns)


def destination(r: Mapping[Any, Any]) -> Destination:
    """A destination from its row's columns."""
    return Destination(
        id=r["id"],
        name=r["name"],
        url=r["url"],
        secret=r["secret"],
        enabled=bool(r["enabled"]),  # SQLite's driver gives 0/1
        format=r["format"],
        filter=loads(r["filter"]),
        previous_secret=r["previous_secret"],
        previous_secret_expires_at=r["previous_secret_expires_at"],
        failing_since=r["failing_since"],
    )


async def read_all(bulk: Bulk) -> dict[str, Destination]:
    """Every destination, read in the bulk reader's transaction, by id."""
    rows = await bulk.select_all(destinations, COLUMNS)
    return {r[0]: destination(dict(zip(COLUMNS, r, strict=True))) for r in rows}


async def destination_row(session: AsyncSession, dest_id: str) -> Row[Any]:
    """A destination's row; ``NotFound`` (404 ``destination_not_found``) if there is none."""
    found = await session.execute(select(destinations).where(destinations.c.id == dest_id))
    row = found.first()
    if row is None:
        raise NotFound(
            f'no destination "{dest_id}"', field="destination_id", code="destination_not_found"
        )
    return row


async def destination_rows(session: AsyncSession) -> list[Row[Any]]:
    """Every destination's row, oldest first."""
    found = await session.execute(select(destinations).order_by(destinations.c.created_at))
    return list(found)


class DestinationCache:
    """All destinations, re-read at most every ``ttl`` seconds or when told they changed."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], ttl: float = 5.0) -> None:
        self._sessionmaker = sessionmaker
        self._ttl = ttl
        self._loaded_at = 0.0
        self._items: dict[str, Destination] = {}
        self._generation = 0  # bumped by each invalidation

    def invalidate(self) -> None:
        self._generation += 1
        self._loaded_at = 0.0

    async def all(self) -> dict[str, Destination]:
        if time.monotonic() - self._loaded_at > self._ttl:
            generation = self._generation
            async with self._sessionmaker() as session:
                rows = await session.execute(select(destinations))
                items = {r.id: destination(r._mapping) for r in rows}
            if generation != self._generation:
                return items  # a change committed meanwhile: used once, not kept
            self._items = items
            self._loaded_at = time.monotonic()
        return self._items
