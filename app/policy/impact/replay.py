"""Deterministic replay: the stored batches run again through the real pipeline, on a
scratch state, at the clock they first ran at, with no deliveries.

The live service records every batch (``batches``: its clock and policy version; events
and decisions name their batch and position). A replay reads them in order and applies
each to a *lane*, a private SQLite database holding the same tables, with
``pipeline.process`` itself: the same identity stitching, scoring, surges, cooldowns,
round robin and caps. Nothing a replay does touches the live state; it reads the live
database (events, batches, accounts, policy versions) and writes only its own lanes.

``start="history"``: every batch before the window runs first under the version that was
in force for it, so the lane holds the live state as it was at the window's start; the
window then runs under the candidate, and the baseline is the decisions actually made.
``start="empty"``: the lane starts empty at the window, and a second lane replays the
window under the recorded versions as the baseline.

Replaying a window under the version that was in force reproduces the decisions made,
in order; what can make it differ is said where it happens (accounts re-imported since:
the lanes use today's accounts; SLA escalations to the next rep, which move round robin
outside the pipeline; people erased since, whose events are gone).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import pipeline
from app.config import Settings
from app.db import (
    accounts,
    batches,
    decisions,
    events,
    loads,
    make_engine,
    make_sessionmaker,
    metadata,
)
from app.db import policies as policy_table
from app.events import ACCOUNT_FIELDS, Event
from app.ingest.stored import STORED_COLUMNS, Unreadable, stored_event
from app.matching.abm import AccountImport, upsert_accounts
from app.policy.schema import CompiledPolicy
from app.policy.store import PolicyUnloadable, load_document

# Batches read from the live database per query: adapted so that a read holds about
# CHUNK_EVENTS events, whether batches are single events (a hook's) or thousands.
CHUNK_EVENTS = 20_000
CHUNK_BATCHES = (4, 2_000)  # the fewest and the most batches per read
Start = Literal["history", "empty"]
# What a decision is compared on, in this order (``diff``); created_at is the batch clock.
DECISION_FIELDS = (
    "type",
    "lead_id",
    "account_domain",
    "rule",
    "team",
    "assignee",
    "band",
    "tier",
    "source",
    "created_at",
    "trigger_event_id",
)


@dataclass
class ReplaySpec:
    candidate: CompiledPolicy
    since: float | None = None  # the window, on the batches' clock; None: from the first
    until: float | None = None  # exclusive; None: up to ``last_batch``
    start: Start = "history"
    last_batch: int | None = None  # the newest batch when the job was made: its end
    # A shadow's window: the batches after this one (those up to it are the warm-up).
    after_batch: int | None = None

    def in_window(self, batch: Batch) -> bool:
        if self.after_batch is not None:
            return batch.id is not None and batch.id > self.after_batch
        return self.since is None or batch.at >= self.since


@dataclass
class Progress:
    phase: str = "counting"  # counting | warmup | window | follow | done
    batches_done: int = 0
    batches_total: int = 0
    events_done: int = 0
    events_total: int = 0
    events_unreadable: int = 0
    decisions: int = 0
    last_batch: int | None = None  # the newest batch applied (a shadow's diff goes to it)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Batch:
    id: int | None  # None: events stored before batches were recorded
    at: float
    policy_version: int | None
    events: list[Event] = field(default_factory=list)
    accounts: list[dict[str, Any]] | None = None  # an ABM import, as given


@dataclass
class Replayed:
    """A decision a lane made, in ``DECISION_FIELDS`` plus where it came from."""

    lane: str
    batch_id: int | None
    fields: dict[str, Any]
    payload: str


class Lane:
    """A scratch state: a private SQLite database the real pipeline runs against."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.path = directory / f"{name}.db"
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    async def import_accounts(self, rows: list[dict[str, Any]], at: float) -> None:
        assert self._sessions is not None
        given = [AccountImport.model_validate(r) for r in rows]
        async with self._sessions() as session, session.begin():
            await upsert_accounts(session, given, at, recorded=False)

    async def open(self, account_rows: list[dict[str, Any]]) -> None:
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{self.path}", sqlite_synchronous="OFF"
        )
        self._engine = make_engine(settings)
        async with self._engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            if account_rows:
                await conn.execute(accounts.insert(), account_rows)
        self._sessions = make_sessionmaker(self._engine)

    async def apply(self, batch: Batch, policy: CompiledPolicy) -> list[Replayed]:
        assert self._sessions is not None
        async with self._sessions() as session, session.begin():
            result = await pipeline.process(
                session,
                batch.events,
                policy=policy,
                destinations={},
                now=batch.at,
                lease_until=None,
            )
        return [
            Replayed(self.name, batch.id, {k: row.get(k) for k in DECISION_FIELDS}, row["payload"])
            for row in result.decisions
        ]

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()


class Versions:
    """The recorded policy versions, compiled once each; a version that no longer loads is
    replaced by the newest older one that does (what the service itself falls back to)."""

    def __init__(self, live: async_sessionmaker[AsyncSession]) -> None:
        self._live = live
        self._compiled: dict[int, CompiledPolicy] = {}

    async def get(self, version: int) -> CompiledPolicy:
        hit = self._compiled.get(version)
        if hit is not None:
            return hit
        async with self._live() as session:
            rows = await session.execute(
                select(policy_table.c.version, policy_table.c.document)
                .where(policy_table.c.version <= version)
                .order_by(policy_table.c.version.desc())
            )
            for v, document in rows:
                try:
                    compiled = load_document(v, document)
                except PolicyUnloadable:
                    continue
                self._compiled[version] = compiled
                return compiled
        raise LookupError(f"no loadable policy version at or before {version}")


async def seed_accounts(live: async_sessionmaker[AsyncSession]) -> list[dict[str, Any]]:
    """Accounts a lane starts with. Imports are recorded as batches and replayed where they
    happened, so a database that recorded from its start seeds none. One upgraded from
    before batches were recorded has events no import precedes: its lanes start with
    today's ABM fields (tier, owner, firmographics), none of the accumulated state."""
    async with live() as session:
        legacy = (
            await session.execute(
                select(events.c.event_id).where(events.c.batch_id.is_(None)).limit(1)
            )
        ).first()
        if legacy is None:
            return []
        cols = [accounts.c.domain, *(accounts.c[f] for f in ACCOUNT_FIELDS)]
        rows = await session.execute(select(*cols, accounts.c.updated_at))
        return [
            {**r._mapping, "attributes": "{}", "signals": "{}", "active_leads": 0} for r in rows
        ]


async def stream(
    live: async_sessionmaker[AsyncSession],
    *,
    after: int | None,
    upto: int | None,
    until: float | None,
    progress: Progress,
) -> AsyncIterator[Batch]:
    """The recorded batches with id in (``after``, ``upto``] and clock before ``until``, in
    order, each with its events; events stored before batches were recorded come first."""
    if after is None:
        async for b in _legacy(live, until, progress):
            yield b
    last = after or 0
    chunk = 50
    while True:
        async with live() as session:
            q = select(batches).where(batches.c.id > last).order_by(batches.c.id)
            if upto is not None:
                q = q.where(batches.c.id <= upto)
            if until is not None:
                q = q.where(batches.c.at < until)
            rows = (await session.execute(q.limit(chunk))).all()
            if not rows:
                return
            found = await session.execute(
                select(*(events.c[c] for c in STORED_COLUMNS), events.c.payload, events.c.batch_id)
                .where(events.c.batch_id.between(rows[0].id, rows[-1].id))
                .order_by(events.c.batch_id, events.c.batch_pos)
            )
            by_batch: dict[int, list[Any]] = {}
            n = 0
            for r in found:
                by_batch.setdefault(r.batch_id, []).append(r)
                n += 1
        per_batch = max(n / len(rows), 1.0)
        chunk = int(min(max(CHUNK_EVENTS / per_batch, CHUNK_BATCHES[0]), CHUNK_BATCHES[1]))
        for row in rows:
            batch = Batch(row.id, row.at, row.policy_version)
            if row.accounts is not None:
                batch.accounts = loads(row.accounts)
            else:
                batch.events = _events(by_batch.get(row.id, ()), progress)
            yield batch
        last = rows[-1].id


def _events(rows: Any, progress: Progress) -> list[Event]:
    out = []
    for r in rows:
        try:
            out.append(stored_event(r, r.payload))
        except Unreadable:
            progress.events_unreadable += 1
    return out


async def _legacy(
    live: async_sessionmaker[AsyncSession],
    until: float | None,
    progress: Progress,
) -> AsyncIterator[Batch]:
    """Events from before batches were recorded: one batch per ``received_at``, run at it."""
    async with live() as session:
        q = (
            select(
                *(events.c[c] for c in STORED_COLUMNS), events.c.payload, events.c.policy_version
            )
            .where(events.c.batch_id.is_(None))
            .order_by(events.c.received_at, events.c.event_id)
        )
        if until is not None:
            q = q.where(events.c.received_at < until)
        rows = (await session.execute(q)).all()
    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and rows[j].received_at == rows[i].received_at:
            j += 1
        yield Batch(None, rows[i].received_at, rows[i].policy_version, _events(rows[i:j], progress))
        i = j


async def count(
    live: async_sessionmaker[AsyncSession], spec: ReplaySpec, progress: Progress
) -> None:
    """The batches and events the replay reads (the window's and, before it, those it
    warms up on or skips), for its progress."""
    async with live() as session:
        q = select(func.count(), func.min(batches.c.id), func.max(batches.c.id))
        if spec.until is not None:
            q = q.where(batches.c.at < spec.until)
        if spec.last_batch is not None:
            q = q.where(batches.c.id <= spec.last_batch)
        n, lo, hi = (await session.execute(q.select_from(batches))).one()
        progress.batches_total = n or 0
        if n:
            progress.events_total = (
                await session.execute(select(func.count()).where(events.c.batch_id.between(lo, hi)))
            ).scalar_one()


ProgressFn = Callable[[Progress], Awaitable[None]]
SinkFn = Callable[[list[Replayed]], Awaitable[None]]
# Called when the replay has caught up with the newest batch: True to wait for more (a
# shadow policy follows the live batches until it is promoted or discarded).
FollowFn = Callable[[Progress], Awaitable[bool]]
FOLLOW_SECONDS = 0.5


async def run(
    live: async_sessionmaker[AsyncSession],
    spec: ReplaySpec,
    *,
    sink: SinkFn,
    report: ProgressFn | None = None,
    directory: Path | None = None,
    follow: FollowFn | None = None,
) -> Progress:
    """Replay ``spec`` against ``live``; every decision of the window goes to ``sink`` (in
    order, a batch's at a time), progress to ``report`` about once a second; with
    ``follow``, new batches are applied as they are recorded until it says stop."""
    progress = Progress()
    await count(live, spec, progress)
    versions = Versions(live)
    account_rows = await seed_accounts(live)
    with tempfile.TemporaryDirectory(prefix="replay-", dir=directory) as tmp:
        lanes = [Lane("candidate", Path(tmp))]
        if spec.start == "empty":
            lanes.append(Lane("baseline", Path(tmp)))
        for lane in lanes:
            await lane.open(account_rows)
        try:
            last = await _run(live, spec, lanes, versions, progress, sink, report, after=None)
            last = last or 0  # followed from here (events before batches were recorded: done)
            while follow is not None and await follow(progress):
                progress.phase = "follow"
                tail = ReplaySpec(spec.candidate, start=spec.start, after_batch=spec.after_batch)
                last = await _run(live, tail, lanes, versions, progress, sink, None, after=last)
                await asyncio.sleep(FOLLOW_SECONDS)
        finally:
            for lane in lanes:
                await lane.close()
    progress.phase = "done"
    if report is not None:
        await report(progress)
    return progress


async def _run(
    live: async_sessionmaker[AsyncSession],
    spec: ReplaySpec,
    lanes: list[Lane],
    versions: Versions,
    progress: Progress,
    sink: SinkFn,
    report: ProgressFn | None,
    *,
    after: int | None,
) -> int | None:
    """Apply the batches after ``after``; returns the last one applied."""
    reported = time.monotonic()
    warm = spec.start == "history" and (spec.since is not None or spec.after_batch is not None)
    if after is None:
        progress.phase = "warmup" if warm else "window"
    async for batch in stream(
        live, after=after, upto=spec.last_batch, until=spec.until, progress=progress
    ):
        after = batch.id if batch.id is not None else after
        progress.last_batch = after
        progress.batches_done += 1
        if batch.accounts is not None:  # an import: the same in every lane, at any time
            for lane in lanes:
                await lane.import_accounts(batch.accounts, batch.at)
            continue
        in_window = spec.in_window(batch)
        if not in_window and spec.start == "empty":
            progress.events_done += len(batch.events)  # read, and not needed
            continue
        assert batch.policy_version is not None
        recorded = await versions.get(batch.policy_version)
        made: list[Replayed] = []
        if in_window:
            progress.phase = "window"
            made += await lanes[0].apply(batch, spec.candidate)
            for lane in lanes[1:]:
                made += await lane.apply(batch, recorded)
        else:
            await lanes[0].apply(batch, recorded)
        if made:
            progress.decisions += len(made)
            await sink(made)
        progress.events_done += len(batch.events)
        if report is not None and time.monotonic() - reported >= 1.0:
            reported = time.monotonic()
            await report(progress)
    return after


async def actual_decisions(
    live: async_sessionmaker[AsyncSession], spec: ReplaySpec, upto: int | None = None
) -> list[Replayed]:
    """The decisions the live service made in the window, in batch order (the baseline of a
    replay that started from history)."""
    q = select(decisions).where(decisions.c.batch_id.is_not(None))
    if spec.after_batch is not None:
        q = q.where(decisions.c.batch_id > spec.after_batch)
    if spec.since is not None:
        q = q.where(decisions.c.created_at >= spec.since)
    if spec.until is not None:
        q = q.where(decisions.c.created_at < spec.until)
    if spec.last_batch is not None:
        q = q.where(decisions.c.batch_id <= spec.last_batch)
    if upto is not None:
        q = q.where(decisions.c.batch_id <= upto)
    async with live() as session:
        rows = await session.execute(q.order_by(decisions.c.batch_id, decisions.c.batch_pos))
        return [
            Replayed("actual", r.batch_id, {k: getattr(r, k) for k in DECISION_FIELDS}, r.payload)
            for r in rows
        ]
