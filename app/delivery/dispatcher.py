"""Delivers outbox rows to webhook destinations; every attempt is recorded.

Fresh deliveries arrive straight from the pipeline after its commit (claimed with a
lease, so no poller elsewhere takes them); a poller picks up retries that fall due, the
next delivery of a lane whose earlier one finished, and anything whose lease expired (a
crashed process). Each destination has its own concurrency limit and the poller claims
only what its queue can take, so a slow or dead endpoint only ever queues its own
deliveries. Results are written back in batches by one writer task.

A destination is disabled on 410 Gone, or when every attempt to it has failed for
``disable_after`` seconds; its deliveries are then parked (kept, not sent) until an
admin enables it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock
from app.db import (
    Transaction,
    decisions,
    deliveries,
    delivery_attempts,
    destinations,
    dialect_of,
)
from app.db.bulk import Bulk
from app.delivery import formats, retry, signing
from app.delivery.destinations import Destination, DestinationCache
from app.delivery.outbox import NewDelivery
from app.delivery.ssrf import SsrfGuard, SsrfRefused
from app.delivery.transport import LeanTransport
from app.observability import metrics

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# A destination with a success this recent queues in memory however long its queue is
# (a burst drains in moments); otherwise past 4 x concurrency, deliveries wait unclaimed.
HEALTHY_SECONDS = 2.0
RESPONSE_BODY_CAP = 4096
# How long recording waits after the first result for more to write with it.
RECORD_LINGER_SECONDS = 0.01
GONE = 410  # the receiver says the endpoint is gone for good: stop sending to it


@dataclass
class Job:
    id: str
    decision_id: str
    destination_id: str
    body: bytes
    event_received_at: float | None
    attempts: int  # attempts made before this one
    order_key: str | None
    lease_until: float | None  # this process's claim; another may send it after that


@dataclass
class Outcome:
    job: Job
    started_at: float
    latency_ms: float
    status_code: int | None
    error: str | None
    response_body: str | None
    retry_after: float | None
    # Not attempted: "parked" (destination disabled) or "deleted" (destination removed).
    skipped: str | None = None


# What runs the dispatcher's write transactions.
Writes = Callable[[Transaction[Any]], Awaitable[Any]]


class Dispatcher:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        destinations: DestinationCache,
        guard: SsrfGuard,
        clock: Clock,
        *,
        timeout: float,
        concurrency: int,
        lease: float = 60.0,
        schedule: tuple[float, ...] = retry.SCHEDULE,
        jitter: float = retry.JITTER,
        disable_after: float = 5 * 86400,
        writes: Writes | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        # Where the write transactions run (``LoopThread.write`` on SQLite); by default
        # here, on the dispatcher's own sessions.
        self._writes: Writes = writes or self._write_here
        self._destinations = destinations
        self._guard = guard
        self._clock = clock
        self._schedule = schedule
        self._jitter = jitter
        self._disable_after = disable_after
        self.lease = lease
        self._timeout = timeout
        # One small connection pool per destination: httpcore scans every pooled
        # connection on each request, and a slow endpoint never holds another's sockets.
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._concurrency = concurrency
        self._limits: dict[str, asyncio.Semaphore] = {}
        # Jobs held per destination (queued or in flight), at most ``_queue_cap``: what a
        # slow or dead endpoint cannot take yet waits in the database, unclaimed (the
        # pipeline's claims on it are released), and the poller tops the queue up.
        self._held: Counter[str] = Counter()
        self._queue_cap = concurrency * 4
        # Claims we give back: (delivery id, destination id).
        self._release: list[tuple[str, str]] = []
        self._last_success: dict[str, float] = {}  # destination → monotonic time
        self._backlogged: set[str] = set()  # destinations with deliveries given back
        # Lanes with a delivery waiting in the database behind one of ours.
        self._waiting: set[tuple[str, str]] = set()
        self._inflight: set[asyncio.Task[None]] = set()
        self._results: list[Outcome] = []
        self._results_ready = asyncio.Event()
        self._writing = asyncio.Lock()  # held while results are written
        self._tasks: list[asyncio.Task[None]] = []
        self._poll_now = asyncio.Event()
        self.running = False

    async def _write_here(self, txn: Transaction[Any]) -> Any:
        return await txn(self._sessionmaker)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.running = True
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="dispatcher-poll"),
            asyncio.create_task(self._write_loop(), name="dispatcher-write"),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Let in-flight attempts finish (up to ``grace`` s), record them, then stop."""
        self.running = False
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=grace)
        async with self._writing:  # never cancel the writer in the middle of a write
            for task in self._tasks:
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush()
        for client in self._clients.values():
            await client.aclose()

    def poke(self) -> None:
        """Run the poller now (after a redelivery request, say)."""
        self._poll_now.set()

    # -- intake --------------------------------------------------------------------------
    def submit(self, new: list[NewDelivery], waiting: set[tuple[str, str]] | None = None) -> None:
        """Send deliveries the pipeline claimed; note lanes left waiting behind them."""
        if waiting:
            self._waiting |= waiting
        for d in new:
            if self._held[d.destination_id] >= self._queue_cap and not self._healthy(
                d.destination_id
            ):
                self._release.append((d.id, d.destination_id))
                self._backlogged.add(d.destination_id)
                self._results_ready.set()  # the writer gives the claims back
                continue
            self._start(
                Job(
                    d.id,
                    d.decision_id,
                    d.destination_id,
                    d.body,
                    d.event_received_at,
                    0,
                    d.order_key,
                    d.lease_until,
                )
            )

    def _healthy(self, destination_id: str) -> bool:
        """Delivered to within the last few seconds: its queue drains, so queue there."""
        return time.monotonic() - self._last_success.get(destination_id, -1e9) < HEALTHY_SECONDS

    def _start(self, job: Job) -> None:
        self._held[job.destination_id] += 1
        task = asyncio.create_task(self._deliver(job))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _poll_loop(self) -> None:
        while True:
            try:
                for job in await self._claim_due():
                    self._start(job)
            except Exception as exc:
                log.exception("delivery poller failed; retrying")
                metrics.count_db_error("delivery_claim", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), POLL_SECONDS)
            self._poll_now.clear()

    async def _claim_due(self) -> list[Job]:
        """Claim due deliveries: lane heads only, per destination up to its free room."""
        now = self._clock.now()
        due = [
            deliveries.c.status == "pending",
            deliveries.c.next_attempt_at <= now,
            or_(deliveries.c.locked_until.is_(None), deliveries.c.locked_until < now),
        ]
        known = await self._destinations.all()
        rooms = {
            d.id: self._queue_cap - self._held[d.id]
            for d in known.values()
            if d.enabled and self._held[d.id] < self._queue_cap
        }
        if not rooms:
            return []

        async def claim(sessionmaker: async_sessionmaker[AsyncSession]) -> list[Job]:
            return await self._claim(sessionmaker, rooms, due, now)

        jobs: list[Job] = await self._writes(claim)
        return jobs

    async def _claim(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        rooms: dict[str, int],
        due: list[Any],
        now: float,
    ) -> list[Job]:
        jobs: list[Job] = []
        async with sessionmaker() as session, session.begin():
            pg = dialect_of(session) == "postgresql"
            earlier = deliveries.alias("earlier")
            for dest_id, room in rooms.items():
                heads = (
                    select(deliveries.c.id)
                    .where(
                        deliveries.c.destination_id == dest_id,
                        *due,
                        ~exists().where(
                            earlier.c.destination_id == deliveries.c.destination_id,
                            earlier.c.order_key == deliveries.c.order_key,
                            earlier.c.status == "pending",
                            earlier.c.seq < deliveries.c.seq,
                        ),
                    )
                    .order_by(deliveries.c.next_attempt_at)
                    .limit(room)
                )
                if pg:
                    heads = heads.with_for_update(skip_locked=True)
                claimed = (
                    await session.scalars(
                        update(deliveries)
                        .where(deliveries.c.id.in_(heads.scalar_subquery()))
                        .values(locked_until=now + self.lease)
                        .returning(deliveries.c.id)
                    )
                ).all()
                if claimed:
                    jobs += await self._jobs(session, claimed, now + self.lease)
        return jobs

    @staticmethod
    async def _jobs(session: AsyncSession, ids: Sequence[str], lease_until: float) -> list[Job]:
        rows = await session.execute(
            select(
                deliveries.c.id,
                deliveries.c.decision_id,
                deliveries.c.destination_id,
                deliveries.c.event_received_at,
                deliveries.c.attempts,
                deliveries.c.order_key,
                decisions.c.payload,
            )
            .join(decisions, decisions.c.id == deliveries.c.decision_id)
            .where(deliveries.c.id.in_(ids))
            .order_by(deliveries.c.created_at)
        )
        return [
            Job(
                r.id,
                r.decision_id,
                r.destination_id,
                r.payload.encode(),
                r.event_received_at,
                r.attempts,
                r.order_key,
                lease_until,
            )
            for r in rows
        ]

    # -- sending -------------------------------------------------------------------------
    async def _deliver(self, job: Job) -> None:
        try:
            sem = self._limits.setdefault(job.destination_id, asyncio.Semaphore(self._concurrency))
            async with sem:
                margin = min(self._timeout, self.lease / 2)
                if job.lease_until is not None and self._clock.now() > job.lease_until - margin:
                    # Queued too long behind a slow endpoint: our claim could lapse
                    # mid-request. Leave it; the poller claims it again afterwards.
                    return
                dest = (await self._destinations.all()).get(job.destination_id)
                if dest is None:  # new since the cache was read, or really deleted
                    self._destinations.invalidate()
                    dest = (await self._destinations.all()).get(job.destination_id)
                outcome = await self._attempt(job, dest)
            self._record(outcome)
        finally:
            self._held[job.destination_id] -= 1
            dest_id = job.destination_id
            if dest_id in self._backlogged and self._held[dest_id] <= self._queue_cap // 2:
                self._backlogged.discard(dest_id)
                self.poke()  # room again: claim what was given back

    async def _attempt(self, job: Job, dest: Destination | None) -> Outcome:
        started = self._clock.now()
        t0 = time.perf_counter()

        def done(
            code: int | None,
            error: str | None,
            body: str | None = None,
            retry_after: float | None = None,
        ) -> Outcome:
            return Outcome(
                job, started, (time.perf_counter() - t0) * 1000, code, error, body, retry_after
            )

        if dest is None:
            return Outcome(job, started, 0.0, None, None, None, None, skipped="deleted")
        if not dest.enabled:
            return Outcome(job, started, 0.0, None, None, None, None, skipped="parked")
        try:
            target = await self._guard.resolve(dest.url)
        except SsrfRefused as exc:
            return done(None, f"ssrf_refused: {exc.message}")
        now = self._clock.now()
        content = formats.render(dest.format, job.body)
        headers = signing.headers(dest.secrets(now), job.decision_id, int(now), content)
        headers["user-agent"] = "intent-router/0.1"
        headers.update(target.headers)
        client = self._client(dest.id)
        urls = (target.url, *target.fallbacks)
        for i, url in enumerate(urls, 1):
            try:
                resp = await client.post(
                    url, content=content, headers=headers, extensions=target.extensions
                )
                break
            except httpx.ConnectError as exc:
                if i < len(urls):
                    continue  # nothing was sent: the host's next address may answer
                return done(None, f"{type(exc).__name__}: {exc}"[:500])
            except httpx.TimeoutException:
                return done(None, "timeout")
            except httpx.HTTPError as exc:
                return done(None, f"{type(exc).__name__}: {exc}"[:500])
        body = resp.text[:RESPONSE_BODY_CAP]
        if 200 <= resp.status_code < 300:
            return done(resp.status_code, None, body)
        retry_after = None
        if resp.status_code in (429, 503):
            retry_after = retry.parse_retry_after(
                resp.headers.get("retry-after"), self._clock.now()
            )
        return done(resp.status_code, f"http_{resp.status_code}", body, retry_after)

    def _client(self, destination_id: str) -> httpx.AsyncClient:
        client = self._clients.get(destination_id)
        if client is None:
            client = httpx.AsyncClient(
                timeout=self._timeout,
                follow_redirects=False,
                transport=LeanTransport(),
            )
            self._clients[destination_id] = client
        return client

    # -- recording -----------------------------------------------------------------------
    def _record(self, outcome: Outcome) -> None:
        job = outcome.job
        if outcome.skipped:
            self._results.append(outcome)
            self._results_ready.set()
            return
        ok = outcome.error is None
        if ok:
            self._last_success[job.destination_id] = time.monotonic()
        metrics.DELIVERIES.labels(job.destination_id, "delivered" if ok else "failed").inc()
        if log.isEnabledFor(logging.INFO):
            log.info(
                "delivery %s to %s: %s",
                job.id,
                job.destination_id,
                outcome.status_code if ok else outcome.error,
                extra={
                    "delivery_id": job.id,
                    "decision_id": job.decision_id,
                    "destination_id": job.destination_id,
                    "attempt": job.attempts + 1,
                    "outcome": "delivered" if ok else "failed",
                    "status_code": outcome.status_code,
                    "error": outcome.error,
                    "latency_ms": round(outcome.latency_ms, 3),
                },
            )
        metrics.DELIVERY_SECONDS.observe(outcome.latency_ms / 1000)
        if ok and job.event_received_at is not None:
            metrics.EVENT_TO_WEBHOOK.observe(max(0.0, time.time() - job.event_received_at))
        self._results.append(outcome)
        self._results_ready.set()

    async def _write_loop(self) -> None:
        while True:
            await self._results_ready.wait()
            # Gather a few more: at hundreds of webhooks a second a transaction per one or
            # two attempts took a sizeable share of the CPU (and of SQLite's write lock).
            await asyncio.sleep(RECORD_LINGER_SECONDS)
            self._results_ready.clear()
            try:
                async with self._writing:
                    await self._flush()
            except Exception as exc:
                log.exception("recording delivery results failed; will retry")
                metrics.count_db_error("delivery_record", exc)
                await asyncio.sleep(0.5)
                self._results_ready.set()

    async def _flush(self) -> None:
        if self._release:
            released, self._release = self._release, []

            async def release(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
                async with sessionmaker() as session, session.begin():
                    await session.execute(
                        update(deliveries)
                        .where(deliveries.c.id.in_([i for i, _ in released]))
                        .values(locked_until=None)
                    )

            try:
                await self._writes(release)
            except Exception:
                self._release = released + self._release
                raise
            # Claimable now, but only worth a poll where the queue has room again (its
            # room came back while this was written); a full queue's poke comes when it
            # drains (``_deliver``). A poll per hand-back ran a claim for every healthy
            # destination up to a hundred times a second beside a dead endpoint.
            if any(dest_id not in self._backlogged for _, dest_id in released):
                self.poke()
        if not self._results:
            return
        batch, self._results = self._results, []
        try:
            await self._write(batch)
        except BaseException:  # cancelled too: keep them for the final flush
            self._results = batch + self._results
            raise

    async def _write(self, batch: list[Outcome]) -> None:
        now = self._clock.now()
        attempts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        retry_now: list[Job] = []
        finished: set[tuple[str, str]] = set()  # lanes whose current delivery is done
        succeeded: set[str] = set()
        failed: dict[str, float] = {}  # destination → its first failure in this batch
        for o in batch:
            job = o.job
            n = job.attempts + 1
            locked = None
            if o.skipped == "parked":
                status, n, next_at, delivered_at = "parked", job.attempts, now, None
            elif o.skipped == "deleted":
                status, n, next_at, delivered_at = "dead", job.attempts, now, None
            elif o.error is None:
                status, next_at, delivered_at = "delivered", o.started_at, now
            elif o.status_code == GONE:
                status, next_at, delivered_at = "dead", now, None
            else:
                delay = retry.next_delay(
                    n, schedule=self._schedule, jitter=self._jitter, retry_after=o.retry_after
                )
                status = "dead" if delay is None else "pending"
                next_at, delivered_at = (now + (delay or 0.0)), None
                if delay == 0:
                    locked = now + self.lease
                    retry_now.append(
                        Job(
                            job.id,
                            job.decision_id,
                            job.destination_id,
                            job.body,
                            job.event_received_at,
                            n,
                            job.order_key,
                            locked,
                        )
                    )
            if not o.skipped:
                attempts.append(
                    {
                        "delivery_id": job.id,
                        "attempt": n,
                        "started_at": o.started_at,
                        "status_code": o.status_code,
                        "latency_ms": o.latency_ms,
                        "error": o.error,
                        "response_body": o.response_body,
                    }
                )
                if o.error is None:
                    succeeded.add(job.destination_id)
                else:
                    failed.setdefault(job.destination_id, o.started_at)
            if status != "pending" and job.order_key is not None:
                finished.add((job.destination_id, job.order_key))
            updates.append(
                {
                    "id": job.id,
                    "status": status,
                    "attempts": n,
                    "next_attempt_at": next_at,
                    "last_status_code": o.status_code,
                    "last_error": "destination_deleted" if o.skipped == "deleted" else o.error,
                    "delivered_at": delivered_at,
                    "locked_until": locked,
                }
            )
        gone = sorted({o.job.destination_id for o in batch if o.status_code == GONE})
        known = await self._destinations.all()

        async def record(
            sessionmaker: async_sessionmaker[AsyncSession],
        ) -> tuple[list[str], list[str], bool]:
            async with sessionmaker() as session, session.begin():
                # At the driver, a statement per chunk: the write lock this transaction
                # holds is the one the pipeline's next transaction waits for.
                bulk = await Bulk.of(session)
                await bulk.insert_rows(delivery_attempts, attempts)
                await bulk.update_rows(deliveries, "id", updates)
                conn = await session.connection()
                failing, changed = await self._track_failures(conn, known, succeeded, failed, now)
                disabled = await disable(conn, gone, reason="http_410", now=now)
                disabled_failing = await disable(conn, failing, reason="failing", now=now)
                return disabled, disabled_failing, changed

        disabled, disabled_failing, changed = await self._writes(record)
        for dest_id in disabled:
            log.warning("destination %s answered 410 Gone: disabled until re-enabled", dest_id)
            metrics.DESTINATIONS_DISABLED.labels("http_410").inc()
        for dest_id in disabled_failing:
            log.warning(
                "destination %s: every attempt failed for %.0f s: disabled until re-enabled",
                dest_id,
                self._disable_after,
            )
            metrics.DESTINATIONS_DISABLED.labels("failing").inc()
        if disabled or disabled_failing or changed:
            self._destinations.invalidate()
        if finished & self._waiting:
            self._waiting -= finished
            self.poke()
        for job in retry_now:
            self._start(job)

    async def _track_failures(
        self,
        conn: Any,
        known: dict[str, Destination],
        succeeded: set[str],
        failed: dict[str, float],
        now: float,
    ) -> tuple[list[str], bool]:
        """Keep each destination's ``failing_since``: the ids failing past the grace, and
        whether any destination's state changed."""
        healed = [d for d in succeeded if d in known and known[d].failing_since is not None]
        if healed:
            await conn.execute(
                update(destinations).where(destinations.c.id.in_(healed)).values(failing_since=None)
            )
        over: list[str] = []
        changed = bool(healed)
        for dest_id, first in failed.items():
            if dest_id in succeeded or dest_id not in known:
                continue
            since = known[dest_id].failing_since
            if since is None:
                await conn.execute(
                    update(destinations)
                    .where(destinations.c.id == dest_id, destinations.c.failing_since.is_(None))
                    .values(failing_since=first)
                )
                changed = True
            elif self._disable_after and now - since >= self._disable_after:
                over.append(dest_id)
        return over, changed


async def disable(conn: Any, ids: Sequence[str], *, reason: str, now: float) -> list[str]:
    """Switch destinations off (those not off already) and park their pending deliveries;
    returns the ids switched."""
    if not ids:
        return []
    result = await conn.execute(
        update(destinations)
        .where(destinations.c.id.in_(ids), destinations.c.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason, disabled_at=now, updated_at=now)
        .returning(destinations.c.id)
    )
    switched = list(result.scalars().all())
    if switched:
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.destination_id.in_(switched), deliveries.c.status == "pending")
            .values(status="parked", locked_until=None)
        )
    return switched


async def enable(conn: Any, dest_id: str, *, now: float) -> int:
    """Switch a destination on; its parked deliveries become due now. Returns how many."""
    await conn.execute(
        update(destinations)
        .where(destinations.c.id == dest_id)
        .values(
            enabled=True, disabled_reason=None, disabled_at=None, failing_since=None, updated_at=now
        )
    )
    result = await conn.execute(
        update(deliveries)
        .where(deliveries.c.destination_id == dest_id, deliveries.c.status == "parked")
        .values(status="pending", next_attempt_at=now, locked_until=None)
        .returning(deliveries.c.id)
    )
    return len(result.all())
