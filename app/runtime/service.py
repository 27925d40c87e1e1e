"""Everything a running service holds: engine, policy, batcher, dispatcher, caches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import pipeline
from app.auth import KeyStore, create_key
from app.clock import Clock
from app.config import Settings
from app.crypto import load_box
from app.db import (
    api_keys,
    deliveries,
    destinations,
    leads,
    make_engine,
    make_sessionmaker,
    policies,
)
from app.db.migrate import upgrade
from app.db.wal import Checkpointer
from app.delivery.destinations import DestinationCache
from app.delivery.dispatcher import Dispatcher
from app.delivery.send import Sender
from app.delivery.ssrf import SsrfGuard
from app.delivery.transition import Retry
from app.errors import Unavailable
from app.events import Event, EventStatus
from app.ingest.kafka import KafkaIngest, KafkaProducerIngest, ensure_topics
from app.observability import metrics
from app.policy.schema import CompiledPolicy
from app.policy.store import InForce, ensure_in_force, load_in_force
from app.privacy import Privacy
from app.routing.sla import SlaTimer
from app.runtime.batcher import Batcher
from app.runtime.loop_thread import LoopThread
from app.runtime.replays import ReplayLauncher
from app.runtime.secrets import load_hash_key, seal_secrets
from app.sources import Debugger, SourceStore

log = logging.getLogger(__name__)

POLICY_REFRESH_SECONDS = 5.0
GAUGE_SECONDS = 10.0


LOGGED_IDS = 50  # ids per batch log line, at most


def batch_log_fields(batch: list[Event], result: pipeline.BatchResult) -> dict[str, object]:
    """What one batch's log line carries to correlate it with requests and decisions."""
    counts = Counter(st.status for st in result.statuses)
    request_ids = sorted({ev.request_id for ev in batch if ev.request_id})
    return {
        "events": len(batch),
        "accepted": counts["accepted"],
        "duplicates": counts["duplicate"],
        "rejected": counts["rejected"],
        "event_ids": [ev.event_id for ev in batch[:LOGGED_IDS]],
        "request_ids": request_ids[:LOGGED_IDS],
        "decision_ids": [d["id"] for d in result.decisions[:LOGGED_IDS]],
        "trigger_event_ids": [d.get("trigger_event_id") for d in result.decisions[:LOGGED_IDS]],
    }


class Runtime:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or Clock()
        self.box = load_box(settings)  # webhook and source secrets at rest (app.crypto)
        self.engine: AsyncEngine = make_engine(settings)
        self.sessionmaker: async_sessionmaker[AsyncSession] = make_sessionmaker(self.engine)
        self.keys = KeyStore(self.sessionmaker)
        self.destinations = DestinationCache(self.sessionmaker)
        self.sources = SourceStore(self.sessionmaker, self.box)
        self.debugger = Debugger()  # each source's recent messages and their outcomes
        # Erasure, export, suppression of erased people, retention (app.privacy).
        self.privacy = Privacy(self.sessionmaker, self.clock, settings, hasher=self.box.keyed_hash)
        self.guard = SsrfGuard(settings.delivery_allowed_hosts)
        # Signs, pins and sends webhooks: the dispatcher's, and the API's test sends.
        self.sender = Sender(
            self.guard, self.clock, timeout=settings.delivery_timeout_seconds, box=self.box
        )
        self.policy: CompiledPolicy | None = None
        self.policy_skipped: dict[int, str] = {}  # applied versions newer than it, unloadable
        self.dispatcher: Dispatcher | None = None
        self.sla: SlaTimer | None = None  # runs with the dispatcher
        self.replays = ReplayLauncher(self.sessionmaker, settings)  # replay processes
        self.batcher = Batcher(
            self.process,
            max_events=settings.batch_max_events,
            max_queue=settings.ingest_queue_max_events,
            linger_ms=settings.batch_max_wait_ms,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.bootstrap_key: str | None = None
        self.consumer: KafkaIngest | None = None
        self.producer: KafkaProducerIngest | None = None
        self.pipeline_loop = LoopThread(settings) if settings.pipeline_thread else None
        path = settings.sqlite_path()
        self.checkpointer = (
            Checkpointer(path, synchronous=settings.sqlite_synchronous) if path else None
        )

    async def prepare(self, *, migrate: bool = True) -> None:
        """Schema at head, the active policy (the default on a first start) and, on an
        empty database, the bootstrap admin key. Safe when several processes start at
        once on an empty database: the one that loses the race reads what the other made."""
        if migrate:
            await upgrade(self.engine)
        # Legacy plaintext secrets encrypted; one the key cannot open: SecretKeyError.
        await seal_secrets(self.sessionmaker, self.box)
        await load_hash_key(self.sessionmaker, self.box)  # suppression hashes' own key
        for attempt in (1, 2):
            try:
                async with self.sessionmaker() as session, session.begin():
                    self.use_in_force(await ensure_in_force(session, self.clock.now()))
                    if self.settings.bootstrap_admin_key:
                        n_keys = await session.execute(select(func.count()).select_from(api_keys))
                        if not n_keys.scalar():
                            _, self.bootstrap_key = await create_key(
                                session,
                                name="bootstrap-admin",
                                scopes=["ingest", "read", "admin", "feedback"],
                                now=self.clock.now(),
                            )
                return
            except IntegrityError:
                self.bootstrap_key = None
                if attempt == 2:
                    raise

    async def start(self, *, migrate: bool = True, dispatcher: bool = True) -> None:
        roles = set(self.settings.roles)
        dispatcher = dispatcher and "dispatcher" in roles
        await self.prepare(migrate=migrate)
        if self.checkpointer is not None:
            self.checkpointer.start()
        if self.pipeline_loop is not None:
            self.pipeline_loop.start()
        if dispatcher:
            # SQLite: its writes queue with the pipeline's batches for the one write lock
            # (PostgreSQL locks rows, so there the dispatcher and the SLA timer write on
            # their own sessions).
            writes = (
                self.pipeline_loop.write
                if self.pipeline_loop is not None and self.settings.is_sqlite
                else None
            )
            self.dispatcher = Dispatcher(
                self.sessionmaker,
                self.destinations,
                self.sender,
                self.clock,
                timeout=self.settings.delivery_timeout_seconds,
                concurrency=self.settings.delivery_concurrency_per_destination,
                retry=Retry(
                    schedule=tuple(self.settings.delivery_retry_schedule),
                    jitter=self.settings.delivery_retry_jitter,
                    lease=self.settings.delivery_lease_seconds,
                ),
                disable_after=self.settings.delivery_disable_after_seconds,
                writes=writes,
            )
            self.dispatcher.start()
            self.sla = SlaTimer(
                self.sessionmaker,
                self.clock,
                policy=lambda: self.policy,
                dispatcher=self.dispatcher,
                writes=writes,
            )
            self.sla.start()
            self._tasks.append(asyncio.create_task(self.replays.run(), name="replays"))
        # The suppression set is loaded before the first batch; erasures run one at a time
        # with the pipeline's batches; retention runs with the dispatcher.
        await self.privacy.start(
            writes=self.pipeline_loop.write if self.pipeline_loop is not None else None,
            retention=dispatcher,
        )
        self.batcher.start()
        self._tasks.append(asyncio.create_task(self._refresh_policy(), name="policy-refresh"))
        self._tasks.append(asyncio.create_task(self._sample_gauges(), name="gauges"))
        bootstrap = self.settings.kafka_bootstrap
        if bootstrap:
            await ensure_topics(
                bootstrap, self.settings.kafka_topic, self.settings.kafka_partitions
            )
            if "api" in roles:
                self.producer = KafkaProducerIngest(
                    bootstrap=bootstrap, topic=self.settings.kafka_topic
                )
                await self.producer.start()
            if "consumer" in roles:
                self.consumer = KafkaIngest(
                    self.process,
                    policy=self.current_policy,
                    clock=self.clock,
                    bootstrap=bootstrap,
                    topic=self.settings.kafka_topic,
                    group=self.settings.kafka_group,
                    max_records=self.settings.batch_max_events,
                )
                await self.consumer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        if self.consumer is not None:
            await self.consumer.stop()
        await self.batcher.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.replays.stop()
        await self.privacy.stop()
        if self.sla is not None:
            await self.sla.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop()  # before the loop its last records are written on
        await self.sender.aclose()
        if self.pipeline_loop is not None:
            await self.pipeline_loop.stop()
        if self.checkpointer is not None:
            await asyncio.to_thread(self.checkpointer.stop)
        await self.keys.close()  # last_used_at writes still under way
        await self.engine.dispose()

    def current_policy(self) -> CompiledPolicy:
        """The policy in force (loaded by ``prepare``)."""
        assert self.policy is not None
        return self.policy

    def set_policy(self, policy: CompiledPolicy) -> None:
        self.policy = policy
        metrics.POLICY_VERSION.set(policy.version)
        self.policy_skipped = {v: r for v, r in self.policy_skipped.items() if v > policy.version}
        metrics.POLICY_UNLOADABLE.set(len(self.policy_skipped))

    def use_in_force(self, found: InForce) -> None:
        """Run ``found.policy``; each version newly passed over gets one log line."""
        in_force = found.policy.version if found.policy is not None else None
        for version, reason in found.skipped.items():
            if version not in self.policy_skipped:
                log.error(
                    "policy version %d cannot be loaded and is skipped (%s); version %s is "
                    "in force",
                    version,
                    reason,
                    in_force,
                    extra={"policy_version": version, "in_force": in_force, "reason": reason},
                )
        self.policy_skipped.update(found.skipped)
        if found.policy is not None:
            self.set_policy(found.policy)
        metrics.POLICY_UNLOADABLE.set(len(self.policy_skipped))

    async def _refresh_policy(self) -> None:
        """Pick up versions applied by another replica or the CLI."""
        while True:
            await asyncio.sleep(POLICY_REFRESH_SECONDS)
            try:
                async with self.sessionmaker() as session:
                    newest = (
                        await session.execute(
                            select(func.max(policies.c.version)).where(
                                policies.c.status == "active"
                            )
                        )
                    ).scalar()
                    if self.policy is None or (
                        newest
                        and newest != self.policy.version
                        and newest not in self.policy_skipped
                    ):
                        self.use_in_force(
                            await load_in_force(
                                session, current=self.policy, known=self.policy_skipped
                            )
                        )
            except Exception as exc:
                log.exception("policy refresh failed")
                metrics.count_db_error("policy_refresh", exc)

    async def _sample_gauges(self) -> None:
        """Outbox depth and age, disabled destinations, leads by band: read from the
        database (the same figures on every replica), the band counts less often."""
        n = 0
        while True:
            try:
                await self.sample_gauges(leads_too=n % 6 == 0)
                await self.sources.names()  # registered sources: the metrics' source labels
            except Exception as exc:
                log.warning("sampling gauges failed: %s", exc)
                metrics.count_db_error("gauges", exc)
            n += 1
            await asyncio.sleep(GAUGE_SECONDS)

    async def sample_gauges(self, *, leads_too: bool = True) -> None:
        now = self.clock.now()
        bands: dict[str, int] | None = None
        async with self.sessionmaker() as session:
            rows = await session.execute(
                select(deliveries.c.status, func.count())
                .where(deliveries.c.status.in_(("pending", "parked")))
                .group_by(deliveries.c.status)
            )
            by_status = {status: n for status, n in rows}
            oldest = await session.scalar(
                select(func.min(deliveries.c.created_at)).where(deliveries.c.status == "pending")
            )
            off = await session.scalar(
                select(func.count())
                .select_from(destinations)
                .where(destinations.c.enabled.is_(False))
            )
            if leads_too:
                rows = await session.execute(
                    select(leads.c.band, func.count())
                    .where(leads.c.merged_into.is_(None))
                    .group_by(leads.c.band)
                )
                bands = {band: n for band, n in rows}
        for status in ("pending", "parked"):
            metrics.OUTBOX_DELIVERIES.labels(status).set(by_status.get(status, 0))
        metrics.OUTBOX_OLDEST_PENDING.set(max(0.0, now - oldest) if oldest is not None else 0.0)
        metrics.DESTINATIONS_OFF.set(off or 0)
        if bands is not None and self.policy is not None:
            for band in {b.name for b in self.policy.bands} | set(bands):
                metrics.LEADS_BY_BAND.labels(band).set(bands.get(band, 0))

    async def ingest(self, events: list[Event]) -> list[EventStatus]:
        """Accept validated events: produced to Kafka when it is on, else group-committed."""
        if self.producer is None:
            return await self.batcher.submit(events)
        assert self.policy is not None
        try:
            await self.producer.publish(events, self.policy.free_mail)
        except Exception as exc:
            raise Unavailable(
                f"the event log is unavailable ({type(exc).__name__}); retry",
                headers={"Retry-After": "1"},
            ) from exc
        # Queued durably (acks=all); duplicates are recognised when the consumer applies them.
        return [EventStatus(ev.event_id, "accepted") for ev in events]

    async def process(self, batch: list[Event]) -> list[EventStatus]:
        """One pipeline transaction; deliveries go to the dispatcher after the commit."""
        assert self.policy is not None
        policy = self.policy
        now = self.clock.now()
        lease = now + self.dispatcher.lease if self.dispatcher is not None else None
        started = time.perf_counter()

        async def transaction(
            sessionmaker: async_sessionmaker[AsyncSession],
        ) -> pipeline.BatchResult:
            async with sessionmaker() as session, session.begin():
                return await pipeline.process(
                    session,
                    batch,
                    policy=policy,
                    destinations=None,  # read in the transaction: never stale
                    now=now,
                    lease_until=lease,
                    drop=self.privacy.suppressions.drops,
                )

        if self.pipeline_loop is not None:
            result = await self.pipeline_loop.write(transaction)
        else:
            result = await transaction(self.sessionmaker)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(batch))
        counts: Counter[tuple[str, ...]] = Counter()
        for ev, st in zip(batch, result.statuses, strict=True):
            if st.status == "accepted":
                counts[("ok", ev.source, ev.type, ev.transport)] += 1
            elif st.status == "duplicate":
                counts[("dup", ev.transport)] += 1
            else:
                counts[("bad", ev.transport, st.code or "invalid")] += 1
        for key, n in counts.items():
            if key[0] == "ok":
                metrics.EVENTS_INGESTED.labels(*key[1:]).inc(n)
            elif key[0] == "dup":
                metrics.EVENTS_DUPLICATE.labels(*key[1:]).inc(n)
            else:
                metrics.EVENTS_REJECTED.labels(*key[1:]).inc(n)
        for d in result.decisions:
            metrics.DECISIONS.labels(d["type"], d["rule"], d["team"]).inc()
        if log.isEnabledFor(logging.INFO):
            log.info(
                "batch applied: %d events, %d decisions",
                len(batch),
                len(result.decisions),
                extra=batch_log_fields(batch, result),
            )
        if result.suppressed:
            metrics.DECISIONS_SUPPRESSED.inc(result.suppressed)
        if self.dispatcher is not None and (result.deliveries or result.waiting):
            self.dispatcher.submit(result.deliveries, waiting=result.waiting)
        return result.statuses
