from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import FakeClock
from app.config import Settings
from app.crypto import generate_key
from app.db import make_engine, make_sessionmaker
from app.db.migrate import upgrade
from tests.support.harness import Receiver, Service, receiver, require_service, service

# The Kafka suites' fixtures: bootstrap, topic, kafka_settings, producer.
pytest_plugins = ["tests.support.kafka"]

# PostgreSQL needs a secret key (app.crypto): one per run, inherited by spawned services.
os.environ.setdefault("INTENT_SECRET_KEY", generate_key())


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database per test: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/intent.db"
        return
    base = require_service("INTENT_TEST_DATABASE_URL")
    server, _, _ = base.rpartition("/")
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield f"{server}/{name}"
    admin = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        delivery_allowed_hosts=["127.0.0.1"],
        sqlite_synchronous="NORMAL",
    )


@pytest.fixture
async def sessions(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the fresh database of ``database_url``, migrated to the newest schema
    (for unit tests of the stages; no service runs)."""
    engine = make_engine(settings)
    await upgrade(engine)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
async def svc(settings: Settings, clock: FakeClock) -> AsyncIterator[Service]:
    async with service(settings, clock) as s:
        yield s


@pytest.fixture
async def hook() -> AsyncIterator[Receiver]:
    async with receiver() as r:
        yield r
