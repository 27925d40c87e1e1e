"""The pipeline's thread: write transactions run there one at a time, and on SQLite the
dispatcher's records queue there with the pipeline's batches."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.runtime.loop_thread import LoopThread
from app.runtime.service import Runtime


async def test_writes_run_one_at_a_time_on_the_thread(tmp_path: Path) -> None:
    loop = LoopThread(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/t.db"))
    loop.start()
    spans: list[tuple[str, float, float]] = []

    async def create(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        async with sessionmaker() as session, session.begin():
            await session.execute(text("CREATE TABLE t (n INTEGER)"))

    async def insert(sessionmaker: async_sessionmaker[AsyncSession], n: int) -> int:
        async with sessionmaker() as session, session.begin():
            started = time.monotonic()
            await session.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
            await asyncio.sleep(0.02)  # another transaction could start here, but must not
            spans.append((threading.current_thread().name, started, time.monotonic()))
        return n

    try:
        await loop.write(create)
        got = await asyncio.gather(*(loop.write(lambda sm, n=n: insert(sm, n)) for n in range(6)))
        assert got == list(range(6))

        async def count(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
            async with sessionmaker() as session:
                return int((await session.execute(text("SELECT count(*) FROM t"))).scalar_one())

        assert await loop.write(count) == 6
    finally:
        await loop.stop()
    assert {name for name, _, _ in spans} == {"pipeline"}
    spans.sort(key=lambda s: s[1])
    for (_, _, end), (_, start, _) in itertools.pairwise(spans):
        assert start >= end  # no two transactions open at once


async def test_on_sqlite_the_dispatcher_writes_through_the_pipeline_thread(
    settings: Settings,
) -> None:
    rt = Runtime(settings)
    await rt.start()
    try:
        assert rt.dispatcher is not None and rt.pipeline_loop is not None
        if settings.is_sqlite:
            assert rt.dispatcher._writes == rt.pipeline_loop.write
        else:  # PostgreSQL locks rows: the dispatcher keeps its own sessions
            assert rt.dispatcher._writes == rt.dispatcher._write_here
    finally:
        await rt.stop()
