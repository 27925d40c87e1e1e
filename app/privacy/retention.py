"""Retention: raw events and webhook response bodies do not stay forever.

Every ``INTERVAL_SECONDS`` (and on ``run_once()``), events received more than
``INTENT_EVENT_RETENTION_DAYS`` ago are deleted and the response bodies of delivery
attempts started more than ``INTENT_DELIVERY_RESPONSE_RETENTION_DAYS`` ago are cleared
(0 keeps them for good). The work goes in batches of ``BATCH`` rows: the ids are read
first, outside any write transaction, then one short transaction deletes (or clears)
exactly those rows by primary key, with a pause between batches, so the single SQLite
writer (``LoopThread.write``, shared with the pipeline) is held a few milliseconds at a
time.

Finished replay jobs (and the decisions they made) go when they are older than the event
limit, a dry run's after ``DRY_RUN_DAYS``; so do the records of batches whose events are
gone (account imports stay: replays need the tiers they set).

Scores do not change: a lead's and an account's intent are accumulators that need no
history. What does change: an ``event_id`` is recognised as a duplicate only while its
event is kept (dedupe holds for the retention window), and a policy replay or what-if
sees only the events still kept. Two dispatcher replicas may sweep at once; the deletes
are idempotent (``WHERE`` repeats the age), so they only share the work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock
from app.config import Settings
from app.db import Transaction, batches, delivery_attempts, events, replay_decisions, replays
from app.observability.periodic import Periodic

log = logging.getLogger(__name__)

DAY = 86400.0
BATCH = 500
PAUSE_SECONDS = 0.05
INTERVAL_SECONDS = 600.0
DRY_RUN_DAYS = 7.0  # a policy preview's replay is kept a week

Writes = Callable[[Transaction[Any]], Awaitable[Any]]


@dataclass
class Swept:
    events: int = 0
    response_bodies: int = 0
    replays: int = 0

    def __iadd__(self, other: Swept) -> Swept:
        self.events += other.events
        self.response_bodies += other.response_bodies
        self.replays += other.replays
        return self


async def sweep_replays(
    session: AsyncSession, *, cutoff: float, dry_run_cutoff: float, limit: int
) -> int:
    """Finished replay jobs older than the events they replayed (a dry run's after a week)
    go with the decisions they made (which name leads); so do the records of batches whose
    events are gone. Account imports stay: a replay still needs the tiers they set."""
    old = (
        select(replays.c.id)
        .where(
            replays.c.status.not_in(("queued", "running")),
            (replays.c.created_at < cutoff)
            | ((replays.c.kind == "dry_run") & (replays.c.created_at < dry_run_cutoff)),
        )
        .limit(limit)
    )
    ids = list((await session.execute(old)).scalars())
    if ids:
        await session.execute(delete(replay_decisions).where(replay_decisions.c.replay_id.in_(ids)))
        await session.execute(delete(replays).where(replays.c.id.in_(ids)))
    gone = select(batches.c.id).where(batches.c.at < cutoff, batches.c.accounts.is_(None))
    await session.execute(delete(batches).where(batches.c.id.in_(gone.limit(limit * 10))))
    return len(ids)


async def old_events(session: AsyncSession, *, cutoff: float, limit: int) -> list[str]:
    q = select(events.c.event_id).where(events.c.received_at < cutoff).limit(limit)
    return list((await session.execute(q)).scalars())


async def delete_events(session: AsyncSession, ids: list[str], *, cutoff: float) -> int:
    result: Any = await session.execute(
        delete(events).where(events.c.event_id.in_(ids), events.c.received_at < cutoff)
    )
    return int(result.rowcount or 0)


async def old_bodies(session: AsyncSession, *, cutoff: float, limit: int) -> list[int]:
    q = (
        select(delivery_attempts.c.id)
        .where(
            delivery_attempts.c.started_at < cutoff,
            delivery_attempts.c.response_body.is_not(None),
        )
        .limit(limit)
    )
    return list((await session.execute(q)).scalars())


async def clear_bodies(session: AsyncSession, ids: list[int], *, cutoff: float) -> int:
    result: Any = await session.execute(
        update(delivery_attempts)
        .where(
            delivery_attempts.c.id.in_(ids),
            delivery_attempts.c.started_at < cutoff,
            delivery_attempts.c.response_body.is_not(None),
        )
        .values(response_body=None)
    )
    return int(result.rowcount or 0)


class Retention:
    """The background sweep; ``step()`` does one batch of each kind, for tests."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        clock: Clock,
        settings: Settings,
        *,
        writes: Writes | None = None,
        batch: int = BATCH,
        pause: float = PAUSE_SECONDS,
        interval: float = INTERVAL_SECONDS,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._clock = clock
        self._event_days = settings.event_retention_days
        self._body_days = settings.delivery_response_retention_days
        # Where the write transactions run: ``LoopThread.write`` on SQLite, else here.
        self._writes: Writes = writes or self._write_here
        self.batch = batch
        self._pause = pause
        self._interval = interval
        self._lock = asyncio.Lock()
        self._periodic = Periodic(
            self.run_once, every=interval, name="retention", what="retention sweep"
        )

    async def _write_here(self, txn: Transaction[Any]) -> Any:
        return await txn(self._sessionmaker)

    def _cutoff(self, days: float) -> float | None:
        return self._clock.now() - days * DAY if days > 0 else None

    async def step(self) -> Swept:
        """One batch: up to ``batch`` old events deleted and response bodies cleared."""
        event_cutoff, body_cutoff = self._cutoff(self._event_days), self._cutoff(self._body_days)
        async with self._sessionmaker() as session:
            event_ids = (
                await old_events(session, cutoff=event_cutoff, limit=self.batch)
                if event_cutoff is not None
                else []
            )
            attempt_ids = (
                await old_bodies(session, cutoff=body_cutoff, limit=self.batch)
                if body_cutoff is not None
                else []
            )
        if not event_ids and not attempt_ids and event_cutoff is None:
            return Swept()

        async def sweeping(sessionmaker: async_sessionmaker[AsyncSession]) -> Swept:
            async with sessionmaker() as session, session.begin():
                done = Swept()
                if event_ids and event_cutoff is not None:
                    done.events = await delete_events(session, event_ids, cutoff=event_cutoff)
                if event_cutoff is not None:
                    done.replays = await sweep_replays(
                        session,
                        cutoff=event_cutoff,
                        dry_run_cutoff=self._clock.now() - DRY_RUN_DAYS * DAY,
                        limit=self.batch,
                    )
                if attempt_ids and body_cutoff is not None:
                    done.response_bodies = await clear_bodies(
                        session, attempt_ids, cutoff=body_cutoff
                    )
                return done

        swept: Swept = await self._writes(sweeping)
        return swept

    async def run_once(self) -> Swept:
        """Sweep until nothing is left older than the limits; the totals."""
        total = Swept()
        async with self._lock:
            while True:
                done = await self.step()
                total += done
                if max(done.events, done.response_bodies) < self.batch:
                    break
                await asyncio.sleep(self._pause)
        if total.events or total.response_bodies:
            log.info(
                "retention: %d events deleted, %d delivery response bodies cleared",
                total.events,
                total.response_bodies,
                extra={"events": total.events, "response_bodies": total.response_bodies},
            )
        return total

    def start(self) -> None:
        if self._event_days > 0 or self._body_days > 0:
            self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
