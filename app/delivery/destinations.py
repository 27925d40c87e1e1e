"""Webhook destinations as the pipeline and dispatcher see them, cached in memory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import destinations, loads

FILTER_KEYS = ("band", "tier", "team", "type")


@dataclass(frozen=True)
class Destination:
    id: str
    name: str
    url: str
    secret: str
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


def destination_from_row(r: Any) -> Destination:
    return Destination(
        id=r.id,
        name=r.name,
        url=r.url,
        secret=r.secret,
        enabled=bool(r.enabled),  # SQLite's driver gives 0/1
        format=r.format,
        filter=loads(r.filter),
        previous_secret=r.previous_secret,
        previous_secret_expires_at=r.previous_secret_expires_at,
        failing_since=r.failing_since,
    )


class DestinationCache:
    """All destinations, re-read at most every ``ttl`` seconds or when told they changed."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], ttl: float = 5.0) -> None:
        self._sessionmaker = sessionmaker
        self._ttl = ttl
        self._loaded_at = 0.0
        self._items: dict[str, Destination] = {}

    def invalidate(self) -> None:
        self._loaded_at = 0.0

    async def all(self) -> dict[str, Destination]:
        if time.monotonic() - self._loaded_at > self._ttl:
            async with self._sessionmaker() as session:
                rows = await session.execute(select(destinations))
                self._items = {r.id: destination_from_row(r) for r in rows}
            self._loaded_at = time.monotonic()
        return self._items
