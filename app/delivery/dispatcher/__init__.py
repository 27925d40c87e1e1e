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

The pieces: ``claim`` (which deliveries this process takes), ``app.delivery.send``
(prepare → send), ``app.delivery.transition`` (outcome → the delivery's and the
destination's new state, pure), ``record`` (writing a batch of them); this class holds
the queues and the two loops that join them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock
from app.db import Transaction
from app.delivery.destinations import DestinationCache
from app.delivery.dispatcher import claim, record
from app.delivery.lifecycle import NewDelivery
from app.delivery.send import Sender
from app.delivery.ssrf import url_problem
from app.delivery.transition import Job, Outcome, Retry, Sent, State, health, transition
from app.observability import metrics

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# A destination with a success this recent queues in memory however long its queue is
# (a burst drains in moments); otherwise past 4 x concurrency, deliveries wait unclaimed.
HEALTHY_SECONDS = 2.0
# How long recording waits after the first result for more to write with it.
RECORD_LINGER_SECONDS = 0.01
INVALID_URL = "invalid_url"  # the error of an attempt refused for its URL's characters

# What runs the dispatcher's write transactions.
Writes = Callable[[Transaction[Any]], Awaitable[Any]]


class Dispatcher:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        destinations: DestinationCache,
        sender: Sender,
        clock: Clock,
        *,
        timeout: float,
        concurrency: int,
        retry: Retry | None = None,
        disable_after: float = 5 * 86400,
        writes: Writes | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        # Where the write transactions run (``LoopThread.write`` on SQLite); by default
        # here, on the dispatcher's own sessions.
        self._writes: Writes = writes or self._write_here
        self._destinations = destinations
        self.sender = sender
        self._clock = clock
        self._retry = retry or Retry()
        self._disable_after = disable_after
        self.lease = self._retry.lease
        self._timeout = timeout
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
        # Set once stop() begins: from then on nothing claimed is sent (it is given back).
        self.stopping = False

    async def _write_here(self, txn: Transaction[Any]) -> Any:
        return await txn(self._sessionmaker)

    # -- running ---------------------------------------------------------------------
    def start(self) -> None:
        self.running = True
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="dispatcher-poll"),
            asyncio.create_task(self._write_loop(), name="dispatcher-write"),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming, let attempts already sending finish (up to ``grace`` s), give
        back every claim not yet sent, record it all, then stop.

        Nothing claimed is started once this has begun: a claim the poller or the
        pipeline hands over now, or one queued behind a destination's concurrency limit,
        is released (another replica, or the next start, sends it at once) rather than
        sent by a process about to exit, whose result could then not be recorded."""
        self.running = False
        self.stopping = True
        self._poll_now.set()  # the poller sees ``stopping`` and ends (after any claim)
        if self._tasks and not self._tasks[0].done():
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._tasks[0]), grace)
        deadline = time.monotonic() + grace
        while self._inflight and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(set(self._inflight), timeout=left)
        async with self._writing:  # never cancel the writer in the middle of a write
            for task in self._tasks:
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush()

    def poke(self) -> None:
        """Run the poller now (after a redelivery request, say)."""
        self._poll_now.set()

    # -- intake ----------------------------------------------------------------------
    def submit(self, new: list[NewDelivery], waiting: set[tuple[str, str]] | None = None) -> None:
        """Send deliveries the pipeline claimed; note lanes left waiting behind them."""
        if waiting:
            self._waiting |= waiting
        for d in new:
            dest_id = d.destination_id
            if self._held[dest_id] >= self._queue_cap and not self._healthy(dest_id):
                self._release.append((d.id, dest_id))
                self._backlogged.add(dest_id)
                self._results_ready.set()  # the writer gives the claims back
                continue
            self._start(
                Job(
                    d.id,
                    d.decision_id,
                    dest_id,
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
        if self.stopping:
            self._give_back(job)
            return
        self._held[job.destination_id] += 1
        task = asyncio.create_task(self._deliver(job))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _give_back(self, job: Job) -> None:
        self._release.append((job.id, job.destination_id))
        self._results_ready.set()

    async def _poll_loop(self) -> None:
        while not self.stopping:
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
        """Claim due deliveries for the destinations whose queues have room."""
        now = self._clock.now()
        known = await self._destinations.all()
        rooms = {
            d.id: self._queue_cap - self._held[d.id]
            for d in known.values()
            if d.enabled and self._held[d.id] < self._queue_cap
        }
        if not rooms:
            return []

        async def claiming(sessionmaker: async_sessionmaker[AsyncSession]) -> list[Job]:
            async with sessionmaker() as session, session.begin():
                return await claim.claim_due(session, rooms, now=now, lease=self.lease)

        jobs: list[Job] = await self._writes(claiming)
        return jobs

    # -- sending ---------------------------------------------------------------------
    async def _deliver(self, job: Job) -> None:
        try:
            sem = self._limits.setdefault(job.destination_id, asyncio.Semaphore(self._concurrency))
            async with sem:
                if self.stopping:  # queued behind the limit when shutdown began
                    self._give_back(job)
                    return
                margin = min(self._timeout, self.lease / 2)
                if job.lease_until is not None and self._clock.now() > job.lease_until - margin:
                    # Queued too long behind a slow endpoint: our claim could lapse
                    # mid-request. Leave it; the poller claims it again afterwards.
                    return
                dest = (await self._destinations.all()).get(job.destination_id)
                if dest is None:  # new since the cache was read, or really deleted
                    self._destinations.invalidate()
                    dest = (await self._destinations.all()).get(job.destination_id)
                problem = url_problem(dest.url) if dest is not None and dest.enabled else None
                if problem is not None:  # stored before URLs were checked for this
                    now = self._clock.now()
                    outcome = Outcome(job, Sent(now, 0.0, None, f"{INVALID_URL}: {problem}"))
                else:
                    outcome = await self.sender.attempt(job, dest)
            self._record(outcome)
        finally:
            self._held[job.destination_id] -= 1
            dest_id = job.destination_id
            if dest_id in self._backlogged and self._held[dest_id] <= self._queue_cap // 2:
                self._backlogged.discard(dest_id)
                self.poke()  # room again: claim what was given back

    # -- recording -------------------------------------------------------------------
    def _record(self, outcome: Outcome) -> None:
        if outcome.sent is not None:
            _observe(outcome.job, outcome.sent)
            if outcome.sent.error is None:
                self._last_success[outcome.job.destination_id] = time.monotonic()
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

            async def giving_back(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
                async with sessionmaker() as session, session.begin():
                    await claim.release(session, [i for i, _ in released])

            try:
                await self._writes(giving_back)
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
        """Record a batch: each outcome's transition, the destinations' health; then
        resend what is due again at once and wake the lanes that finished."""
        now = self._clock.now()
        states = [_dead_if_unsendable(o, transition(o, now=now, policy=self._retry)) for o in batch]
        known = await self._destinations.all()
        moved = health(
            batch,
            {d.id: d.failing_since for d in known.values()},
            now=now,
            disable_after=self._disable_after,
        )
        written = record.rows(batch, states)

        async def recording(sessionmaker: async_sessionmaker[AsyncSession]) -> record.Switched:
            async with sessionmaker() as session, session.begin():
                return await record.record(session, written, moved, now=now)

        switched: record.Switched = await self._writes(recording)
        self._announce(switched)
        if switched.gone or switched.failing or moved.changed:
            self._destinations.invalidate()
        finished = {
            (o.job.destination_id, o.job.order_key)
            for o, st in zip(batch, states, strict=True)
            if st.status != "pending" and o.job.order_key is not None
        }
        if finished & self._waiting:
            self._waiting -= finished
            self.poke()
        for o, st in zip(batch, states, strict=True):
            if st.resend_now:
                job = o.job
                self._start(
                    Job(
                        job.id,
                        job.decision_id,
                        job.destination_id,
                        job.body,
                        job.event_received_at,
                        st.attempts,
                        job.order_key,
                        st.locked_until,
                    )
                )

    def _announce(self, switched: record.Switched) -> None:
        for dest_id in switched.gone:
            log.warning("destination %s answered 410 Gone: disabled until re-enabled", dest_id)
            metrics.DESTINATIONS_DISABLED.labels("http_410").inc()
        for dest_id in switched.failing:
            log.warning(
                "destination %s: every attempt failed for %.0f s: disabled until re-enabled",
                dest_id,
                self._disable_after,
            )
            metrics.DESTINATIONS_DISABLED.labels("failing").inc()


def _dead_if_unsendable(outcome: Outcome, state: State) -> State:
    """A URL that can never be sent (a control character in it) is dead at once, with the
    reason in ``last_error``, rather than retried on the schedule."""
    sent = outcome.sent
    if sent is not None and sent.error is not None and sent.error.startswith(INVALID_URL):
        return dataclasses.replace(state, status="dead", locked_until=None)
    return state


def _observe(job: Job, sent: Sent) -> None:
    """An attempt's metrics and log line."""
    ok = sent.error is None
    metrics.DELIVERIES.labels(job.destination_id, "delivered" if ok else "failed").inc()
    if log.isEnabledFor(logging.INFO):
        log.info(
            "delivery %s to %s: %s",
            job.id,
            job.destination_id,
            sent.status_code if ok else sent.error,
            extra={
                "delivery_id": job.id,
                "decision_id": job.decision_id,
                "destination_id": job.destination_id,
                "attempt": job.attempts + 1,
                "outcome": "delivered" if ok else "failed",
                "status_code": sent.status_code,
                "error": sent.error,
                "latency_ms": round(sent.latency_ms, 3),
            },
        )
    metrics.DELIVERY_SECONDS.observe(sent.latency_ms / 1000)
    if ok and job.event_received_at is not None:
        metrics.EVENT_TO_WEBHOOK.observe(max(0.0, time.time() - job.event_received_at))
