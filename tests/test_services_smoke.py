"""Smoke tests against the real services that `make services` (deploy/services.sh up) starts.

They need INTENT_TEST_DATABASE_URL (postgresql+asyncpg://...) and INTENT_TEST_KAFKA_BOOTSTRAP
(host:port). Without them they skip on a developer's machine and FAIL in CI (CI set), so CI can
never pass by silently not talking to PostgreSQL and Kafka.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

DATABASE_URL_VAR = "INTENT_TEST_DATABASE_URL"
KAFKA_BOOTSTRAP_VAR = "INTENT_TEST_KAFKA_BOOTSTRAP"
MESSAGES = 10


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _required_env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if value:
        return value
    message = (
        f"{name} is not set: start the real services with `make services` "
        "(deploy/services.sh up) and export the variables it prints"
    )
    if _in_ci():
        pytest.fail(f"CI must not skip real-service tests: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def database_url() -> str:
    return _required_env(DATABASE_URL_VAR)


@pytest.fixture
def kafka_bootstrap() -> str:
    return _required_env(KAFKA_BOOTSTRAP_VAR)


@pytest.fixture
async def kafka_topic(kafka_bootstrap: str) -> AsyncIterator[str]:
    topic = f"smoke-{uuid.uuid4().hex}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=topic, num_partitions=1, replication_factor=1)])
        yield topic
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def test_postgres_answers_a_query(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            version = (await conn.execute(text("select version()"))).scalar_one()
            database = (await conn.execute(text("select current_database()"))).scalar_one()
    finally:
        await engine.dispose()
    assert str(version).startswith("PostgreSQL ")
    assert database == database_url.rsplit("/", 1)[-1].split("?", 1)[0]


async def test_kafka_produce_then_consume_and_commit(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    sent = [f"message-{i}".encode() for i in range(MESSAGES)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i, value in enumerate(sent):
            await producer.send(kafka_topic, value=value, key=f"key-{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        kafka_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"smoke-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        received: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(received) < MESSAGES and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1_000, max_records=MESSAGES)
            for records in batches.values():
                received.extend(record.value for record in records if record.value is not None)
        assert received == sent
        await consumer.commit()
        assert await consumer.committed(TopicPartition(kafka_topic, 0)) == MESSAGES
    finally:
        await consumer.stop()
