"""Delivers outbox rows to webhook destinations; every attempt is recorded.

Fresh deliveries arrive straight from the pipeline after its commit (claimed with a
lease, so no poller elsewhere takes them); a poller picks up retries that fall due and
anything whose lease expired (a crashed process). Each destination has its own
concurrency limit, so a slow endpoint only ever queues its own deliveries. Results are
written back in batches by one writer task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock
from app.db import decisions, deliveries, delivery_attempts, destinations, dialect_of
from app.delivery import formats, retry, signing
from app.delivery.destinations import Destination, DestinationCache
from app.delivery.outbox import NewDelivery
from app.delivery.ssrf import SsrfGuard, SsrfRefused
from app.delivery.transport import LeanTransport
from app.observability import metrics

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
RESPONSE_BODY_CAP = 4096
GONE = 410  # the receiver says the endpoint is gone for good: stop sending to it


@dataclass
class Job:
    id: str
    decision_id: str
    destination_id: str
    body: bytes
    event_received_at: float | None
    attempts: int  # attempts made before this one


@dataclass
class Outcome:
    job: Job
    started_at: float
    latency_ms: float
    status_code: int | None
    error: str | None
    response_body: str | None
    retry_after: float | None


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
    ) -> None:
        self._sessionmaker = sessionmaker
        self._destinations = destinations
        self._guard = guard
        self._clock = clock
        self._schedule = schedule
        self.lease = lease
        self._timeout = timeout
        # One small connection pool per destination: httpcore scans every pooled
        # connection on each request, and a slow endpoint never holds another's sockets.
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._concurrency = concurrency
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._results: list[Outcome] = []
        self._results_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._poll_now = asyncio.Event()
        self.running = False

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
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush()
        for client in self._clients.values():
            await client.aclose()

    def poke(self) -> None:
        """Run the poller now (after a redelivery request, say)."""
        self._poll_now.set()

    # -- intake --------------------------------------------------------------------------
    def submit(self, new: list[NewDelivery]) -> None:
        for d in new:
            self._start(Job(d.id, d.decision_id, d.destination_id, d.body, d.event_received_at, 0))

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._deliver(job))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _poll_loop(self) -> None:
        while True:
            try:
                for job in await self._claim_due():
                    self._start(job)
            except Exception:
                log.exception("delivery poller failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), POLL_SECONDS)
            self._poll_now.clear()

    async def _claim_due(self, limit: int = 500) -> list[Job]:
        now = self._clock.now()
        async with self._sessionmaker() as session, session.begin():
            due = (
                select(deliveries.c.id)
                .where(
                    deliveries.c.status == "pending",
                    deliveries.c.next_attempt_at <= now,
                    or_(deliveries.c.locked_until.is_(None), deliveries.c.locked_until < now),
                )
                .order_by(deliveries.c.next_attempt_at)
                .limit(limit)
            )
            if dialect_of(session) == "postgresql":
                due = due.with_for_update(skip_locked=True)
            claimed = (
                (
                    await session.execute(
                        update(deliveries)
                        .where(deliveries.c.id.in_(due.scalar_subquery()))
                        .values(locked_until=now + self.lease)
                        .returning(deliveries.c.id)
                    )
                )
                .scalars()
                .all()
            )
            if not claimed:
                return []
            rows = await session.execute(
                select(
                    deliveries.c.id,
                    deliveries.c.decision_id,
                    deliveries.c.destination_id,
                    deliveries.c.event_received_at,
                    deliveries.c.attempts,
                    decisions.c.payload,
                )
                .join(decisions, decisions.c.id == deliveries.c.decision_id)
                .where(deliveries.c.id.in_(claimed))
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
                )
                for r in rows
            ]

    # -- sending -------------------------------------------------------------------------
    async def _deliver(self, job: Job) -> None:
        dest = (await self._destinations.all()).get(job.destination_id)
        sem = self._limits.setdefault(job.destination_id, asyncio.Semaphore(self._concurrency))
        async with sem:
            outcome = await self._attempt(job, dest)
        self._record(outcome)

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

        if dest is None or not dest.enabled:
            return done(None, "destination_disabled")
        try:
            target = await self._guard.resolve(dest.url)
        except SsrfRefused as exc:
            return done(None, f"ssrf_refused: {exc.message}")
        now = self._clock.now()
        content = formats.render(dest.format, job.body)
        headers = signing.headers(dest.secrets(now), job.decision_id, int(now), content)
        headers["user-agent"] = "intent-router/0.1"
        headers.update(target.headers)
        try:
            resp = await self._client(dest.id).post(
                target.url, content=content, headers=headers, extensions=target.extensions
            )
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
        ok = outcome.error is None
        metrics.DELIVERIES.labels(job.destination_id, "delivered" if ok else "failed").inc()
        metrics.DELIVERY_SECONDS.observe(outcome.latency_ms / 1000)
        if ok and job.event_received_at is not None:
            metrics.EVENT_TO_WEBHOOK.observe(max(0.0, time.time() - job.event_received_at))
        self._results.append(outcome)
        self._results_ready.set()

    async def _write_loop(self) -> None:
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            try:
                await self._flush()
            except Exception:
                log.exception("recording delivery results failed; will retry")
                await asyncio.sleep(0.5)
                self._results_ready.set()

    async def _flush(self) -> None:
        if not self._results:
            return
        batch, self._results = self._results, []
        try:
            await self._write(batch)
        except Exception:
            self._results = batch + self._results
            raise

    async def _write(self, batch: list[Outcome]) -> None:
        now = self._clock.now()
        attempts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        retry_now: list[Job] = []
        for o in batch:
            n = o.job.attempts + 1
            attempts.append(
                {
                    "delivery_id": o.job.id,
                    "attempt": n,
                    "started_at": o.started_at,
                    "status_code": o.status_code,
                    "latency_ms": o.latency_ms,
                    "error": o.error,
                    "response_body": o.response_body,
                }
            )
            locked = None
            if o.error is None:
                status, next_at, delivered_at = "delivered", o.started_at, now
            elif o.status_code == GONE:
                status, next_at, delivered_at = "dead", now, None
            else:
                delay = retry.next_delay(n, schedule=self._schedule, retry_after=o.retry_after)
                status = "dead" if delay is None else "pending"
                next_at, delivered_at = (now + (delay or 0.0)), None
                if delay == 0:
                    locked = now + self.lease
                    retry_now.append(
                        Job(
                            o.job.id,
                            o.job.decision_id,
                            o.job.destination_id,
                            o.job.body,
                            o.job.event_received_at,
                            n,
                        )
                    )
            updates.append(
                {
                    "b_id": o.job.id,
                    "b_status": status,
                    "b_attempts": n,
                    "b_next": next_at,
                    "b_code": o.status_code,
                    "b_error": o.error,
                    "b_delivered": delivered_at,
                    "b_locked": locked,
                }
            )
        stmt = (
            update(deliveries)
            .where(and_(deliveries.c.id == bindparam("b_id")))
            .values(
                status=bindparam("b_status"),
                attempts=bindparam("b_attempts"),
                next_attempt_at=bindparam("b_next"),
                last_status_code=bindparam("b_code"),
                last_error=bindparam("b_error"),
                delivered_at=bindparam("b_delivered"),
                locked_until=bindparam("b_locked"),
            )
        )
        gone = sorted({o.job.destination_id for o in batch if o.status_code == GONE})
        async with self._sessionmaker() as session, session.begin():
            conn = await session.connection()
            await conn.execute(delivery_attempts.insert(), attempts)
            await conn.execute(stmt, updates)
            disabled = await self._disable(conn, gone, reason="http_410", now=now)
        for dest_id in disabled:
            log.warning("destination %s answered 410 Gone: disabled until re-enabled", dest_id)
            metrics.DESTINATIONS_DISABLED.labels("http_410").inc()
        if disabled:
            self._destinations.invalidate()
        for job in retry_now:
            self._start(job)

    @staticmethod
    async def _disable(conn: Any, ids: list[str], *, reason: str, now: float) -> list[str]:
        """Switch destinations off (those not off already); returns the ids switched."""
        if not ids:
            return []
        result = await conn.execute(
            update(destinations)
            .where(destinations.c.id.in_(ids), destinations.c.enabled.is_(True))
            .values(enabled=False, disabled_reason=reason, disabled_at=now, updated_at=now)
            .returning(destinations.c.id)
        )
        return list(result.scalars().all())
