from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.clock import FakeClock
from app.config import Settings
from tests.harness import Receiver, Service, receiver, service


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/intent.db",
        delivery_allowed_hosts=["127.0.0.1"],
        sqlite_synchronous="NORMAL",
    )


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
