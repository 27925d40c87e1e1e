"""Kafka: HTTP ingest produces to the events topic; consumers run the same pipeline.

Consumer loop (one per process, partitions assigned by the group):
``getmany`` → decode/validate each record (native JSON, or a CloudEvent in either mode:
``app.ingest.cloudevents``; poison → ``<topic>.dlq``, the record as it came with the error
in headers added) → one pipeline transaction for the valid events → commit the offsets.
Offsets are committed only after the transaction; a failed transaction seeks back and
retries the same records, and ``event_id`` idempotency makes a redelivery count once.
Nothing is cached per partition, and each batch is committed before the next poll, so a
rebalance never strands or duplicates work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from app.clock import Clock
from app.errors import first_error
from app.events import Event, EventStatus, email_domain
from app.ingest.cloudevents import Mode, Poison, content_mode, read_cloudevent
from app.ingest.schemas import EVENT_ADAPTER, check_event, to_event
from app.observability import metrics
from app.policy.schema import CompiledPolicy

log = logging.getLogger(__name__)

SCHEMA_VERSIONS = frozenset({"1"})
RECEIVED_AT = "received-at"
# How long the second poll of a batch waits for the fetch the first one set off: a
# loopback or LAN round trip, when the broker has records; the time it adds when not.
FOLLOW_UP_MS = 5


def partition_key(ev: Event, free_mail: frozenset[str]) -> bytes:
    """All events of one account land on one partition: its domain, else the lead's key."""
    domain = email_domain(ev.email)
    if domain and domain not in free_mail:
        return domain.encode()
    if ev.account_domain and ev.account_domain not in free_mail:
        return ev.account_domain.encode()
    return ev.identifiers()[0].encode()


def unwrap(
    value: bytes | None,
    headers: dict[str, bytes],
    *,
    policy: CompiledPolicy,
    received_at: float,
) -> tuple[Any, str | None]:
    """The native event dict from a plain message or a CloudEvent (structured or binary),
    and for a CloudEvent the JSON to store: its structured form."""
    mode: Mode | None = content_mode(headers)
    obj: Any = None
    if mode is None:
        if value is None:
            raise Poison("decode", "empty message")
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise Poison("decode", f"not valid JSON: {exc}") from None
        if isinstance(obj, dict) and "specversion" in obj:
            mode = "structured"
    version = headers.get("schema-version", b"1").decode(errors="replace")
    if version not in SCHEMA_VERSIONS:
        raise Poison("version", f'unknown schema-version "{version}"', "schema-version")
    if mode is None:
        return obj, None
    return read_cloudevent(value or b"", headers, mode, policy=policy, received_at=received_at)


ProcessFn = Callable[[list[Event]], Awaitable[list[EventStatus]]]


class KafkaIngest:
    """The consumer side: one loop, each batch through ``process`` (one pipeline
    transaction), checked against the policy ``policy()`` returns at the time."""

    def __init__(
        self,
        process: ProcessFn,
        *,
        policy: Callable[[], CompiledPolicy],
        clock: Clock,
        bootstrap: str,
        topic: str,
        group: str,
        max_records: int = 5000,
        follow_up_ms: int = FOLLOW_UP_MS,
    ) -> None:
        self.process = process
        self.policy = policy
        self.clock = clock
        self.follow_up_ms = follow_up_ms
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.max_records = max_records
        self.consumer: AIOKafkaConsumer | None = None
        self.dlq: AIOKafkaProducer | None = None
        self.assigned: set[TopicPartition] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self.dlq = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True
        )
        await self.dlq.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_records,
        )
        self.consumer.subscribe([self.topic], listener=_Listener(self))
        await self.consumer.start()
        self._task = asyncio.create_task(self._run(), name="kafka-consumer")

    async def stop(self) -> None:
        """Finish the batch in hand, commit it, leave the group cleanly."""
        self._stopping = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.consumer is not None:
            await _stop_quietly(self.consumer.stop)
        if self.dlq is not None:
            await _stop_quietly(self.dlq.stop)
        log.info("kafka consumer stopped")

    async def _run(self) -> None:
        assert self.consumer is not None
        while not self._stopping:
            try:
                batches = await self._poll()
            except Exception:
                log.exception("kafka poll failed")
                await asyncio.sleep(1)
                continue
            if not batches:
                continue
            try:
                await self._handle(batches)
            except Exception as exc:
                log.exception("kafka batch failed; retrying the same records")
                metrics.count_db_error("pipeline", exc)
                assigned = self.consumer.assignment()
                for tp, records in batches.items():
                    # A partition revoked meanwhile is re-read by its new owner from the
                    # last committed offset; seeking it here would raise.
                    if tp in assigned:
                        self.consumer.seek(tp, records[0].offset)
                await asyncio.sleep(1)

    async def _poll(self) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """The records waiting, then those the broker has had since the last fetch.

        aiokafka's fetcher fetches no more from a broker while any partition it leads has
        records not yet taken, so what the first ``getmany`` returns was fetched just after
        the previous one: records that arrived during the last transaction are still on
        the broker. Taking the buffer sends the next fetch; a short second ``getmany``
        collects its answer, so a batch holds every event up to now, not one transaction
        behind (that lag put each event two to three transactions from its webhook)."""
        assert self.consumer is not None
        batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
        batches = await self.consumer.getmany(timeout_ms=200, max_records=self.max_records)
        room = self.max_records - sum(len(r) for r in batches.values())
        if batches and room > 0 and self.follow_up_ms > 0:
            more = await self.consumer.getmany(timeout_ms=self.follow_up_ms, max_records=room)
            for tp, records in more.items():
                batches.setdefault(tp, []).extend(records)
        return batches

    async def _handle(self, batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        assert self.consumer is not None
        policy = self.policy()
        now = self.clock.now()
        events: list[Event] = []
        for records in batches.values():
            for rec in records:
                headers = {k: v for k, v in (rec.headers or ())}
                try:
                    events.append(self._decode(rec, headers, policy, now))
                except Poison as p:
                    await self._dead_letter(rec, p)
        if events:
            await self.process(events)
        await self.consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
        for tp, records in batches.items():
            end = self.consumer.highwater(tp)
            if end is not None:
                lag = max(0, end - (records[-1].offset + 1))
                metrics.KAFKA_LAG.labels(tp.topic, str(tp.partition)).set(lag)

    def _decode(
        self,
        rec: ConsumerRecord[Any, Any],
        headers: dict[str, bytes],
        policy: CompiledPolicy,
        now: float,
    ) -> Event:
        received = headers.get(RECEIVED_AT)
        received_at = float(received) if received else rec.timestamp / 1000
        version = headers.get("schema-version", b"1").decode(errors="replace")
        if version in SCHEMA_VERSIONS and rec.value and content_mode(headers) is None:
            # Fast path: a native event parsed and validated in one step from its bytes,
            # which are stored as received. CloudEvents (told by a header, or else by
            # failing here) and errors take the slow path.
            try:
                parsed = EVENT_ADAPTER.validate_json(rec.value)
            except ValidationError:
                pass
            else:
                ev = to_event(
                    parsed,
                    received_at=received_at,
                    transport="kafka",
                    raw_json=bytes(rec.value).decode(),
                )
                bad = check_event(ev, policy, now)
                if bad is not None:
                    raise Poison("policy", bad.message or "rejected", bad.field)
                return ev
        raw, stored = unwrap(rec.value, headers, policy=policy, received_at=received_at)
        try:
            parsed = EVENT_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            field, _, message = first_error(exc)
            raise Poison("validate", message, field) from None
        ev = to_event(
            parsed,
            received_at=received_at,
            transport="kafka",
            raw=raw if stored is None and isinstance(raw, dict) else None,
            raw_json=stored,
        )
        bad = check_event(ev, policy, now)
        if bad is not None:
            raise Poison("policy", bad.message or "rejected", bad.field)
        return ev

    async def _dead_letter(self, rec: ConsumerRecord[Any, Any], p: Poison) -> None:
        assert self.dlq is not None
        metrics.EVENTS_REJECTED.labels("kafka", p.stage).inc()
        # The record as it came, every header kept (a binary CloudEvent's attributes are
        # its ce_ headers), ours after them: a reader taking a name's last value sees this
        # failure even on a record dead-lettered before.
        headers = [
            *(rec.headers or ()),
            ("error", p.message.encode()[:2000]),
            ("error-stage", p.stage.encode()),
            ("error-field", (p.field or "").encode()),
            ("original-topic", rec.topic.encode()),
            ("original-partition", str(rec.partition).encode()),
            ("original-offset", str(rec.offset).encode()),
        ]
        await self.dlq.send_and_wait(
            f"{rec.topic}.dlq", value=rec.value, key=rec.key, headers=headers
        )
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            rec.topic,
            rec.partition,
            rec.offset,
            p.stage,
            p.message,
        )


async def _stop_quietly(stop: Callable[[], Awaitable[None]]) -> None:
    """Stop an aiokafka client. With the broker gone, aiokafka's fetcher cancels a task
    sleeping in its retry backoff and lets that CancelledError out of ``stop()`` (which
    made uvicorn report "Application shutdown failed"); only a cancellation of our own
    task is passed on."""
    try:
        await stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.info("kafka client stopped while the broker was unreachable")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingest: KafkaIngest) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Batches are committed before the next poll, so nothing is pending here.
        self.ingest.assigned -= set(revoked)
        for tp in revoked:
            with contextlib.suppress(KeyError):
                metrics.KAFKA_LAG.remove(tp.topic, str(tp.partition))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.ingest.assigned |= set(assigned)


class KafkaProducerIngest:
    """The HTTP side in scale-out mode: produce, answer after the broker's ack."""

    def __init__(self, *, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            max_batch_size=1 << 20,
        )

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await _stop_quietly(self.producer.stop)

    async def publish(self, events: list[Event], free_mail: frozenset[str]) -> None:
        futures = [
            await self.producer.send(
                self.topic,
                value=ev.payload().encode(),
                key=partition_key(ev, free_mail),
                headers=[(RECEIVED_AT, repr(ev.received_at).encode())],
            )
            for ev in events
        ]
        await asyncio.gather(*futures)


async def ensure_topics(bootstrap: str, topic: str, partitions: int) -> None:
    """Create the events topic and its dead-letter topic unless they exist."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(t, num_partitions=n, replication_factor=1)
            for t, n in ((topic, partitions), (f"{topic}.dlq", 1))
            if t not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
    finally:
        await admin.close()
