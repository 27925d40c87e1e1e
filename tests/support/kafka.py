"""Kafka fixtures and helpers the Kafka suites share: the test broker, a topic and
consumer group of the test's own, a producer, and a reader of the dead-letter topic.

Import the fixtures into a test module (``from tests.support.kafka import bootstrap,
...``) for pytest to find them there."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.config import Settings
from tests.support.harness import require_service


@pytest.fixture
def bootstrap() -> str:
    return require_service("INTENT_TEST_KAFKA_BOOTSTRAP")


@pytest.fixture
def topic() -> str:
    return f"events-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kafka_settings(settings: Settings, bootstrap: str, topic: str) -> Settings:
    return settings.model_copy(
        update={
            "kafka_bootstrap": bootstrap,
            "kafka_topic": topic,
            "kafka_group": f"g-{uuid.uuid4().hex[:8]}",
            "kafka_partitions": 4,
        }
    )


@pytest.fixture
async def producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()


async def dead_letters(bootstrap: str, topic: str, n: int) -> list[Any]:
    """Up to ``n`` records of ``<topic>.dlq`` (waiting at most 20 s for them)."""
    consumer = AIOKafkaConsumer(
        f"{topic}.dlq",
        bootstrap_servers=bootstrap,
        group_id=f"dlq-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[Any] = []
    try:
        deadline = time.monotonic() + 20
        while len(got) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(records)
    finally:
        await consumer.stop()
    return got
