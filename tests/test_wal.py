"""WAL checkpoints off the commit path, on a real SQLite file: commits leave the log to
the background thread, which copies it back in full so the log starts over."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.db import make_engine
from app.db.wal import BACKSTOP_PAGES, Checkpointer
from app.observability import metrics
from app.runtime.service import Runtime
from tests.support.harness import eventually

PAGE = 4096


async def _write_pages(engine: AsyncEngine, pages: int, commits: int) -> None:
    """About ``pages`` pages of new rows in ``commits`` transactions."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS blobs (b BLOB)"))
    for _ in range(commits):
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO blobs VALUES (randomblob(:n))"),
                [{"n": PAGE}] * (pages // commits),
            )


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """The service's engine (its pragmas) on a file. Open throughout: the last connection
    to close checkpoints and deletes the log."""
    engine = make_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/db.sqlite"))
    yield engine
    await engine.dispose()


def _gauge() -> float:
    return metrics.SQLITE_WAL_PAGES._value.get()


async def test_commits_leave_the_log_for_the_checkpointer(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """Past SQLite's default of 1,000 pages no commit checkpointed: the log holds every
    page since the first write, and one checkpoint copies them all back."""
    path = tmp_path / "db.sqlite"
    await _write_pages(engine, pages=3_000, commits=6)
    conn = sqlite3.connect(path)
    try:
        in_log, copied = Checkpointer(path).checkpoint(conn)
    finally:
        conn.close()
    assert 3_000 < in_log < BACKSTOP_PAGES
    assert copied == in_log
    assert _gauge() == in_log


async def test_the_background_thread_keeps_the_log_short(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    checkpointer = Checkpointer(tmp_path / "db.sqlite", interval=0.05)
    await _write_pages(engine, pages=4, commits=1)  # the file exists
    checkpointer.start()
    try:
        await _write_pages(engine, pages=1_200, commits=4)

        async def seen_at_least(pages: int) -> bool:
            return _gauge() >= pages

        async def short() -> bool:
            return _gauge() < 100

        await eventually(lambda: seen_at_least(1_000), within=10)  # the thread saw the writes
        # Once a checkpoint has copied everything back, the next write starts the log over.
        await asyncio.sleep(0.2)
        await _write_pages(engine, pages=2, commits=1)
        await eventually(short, within=10)
    finally:
        checkpointer.stop()
    assert not checkpointer._thread.is_alive()


async def test_the_runtime_runs_the_checkpointer_on_a_file_database(tmp_path: Path) -> None:
    rt = Runtime(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/intent.db"))
    assert rt.checkpointer is not None
    await rt.start(dispatcher=False)
    try:
        assert rt.checkpointer._thread.is_alive()
    finally:
        await rt.stop()
    assert not rt.checkpointer._thread.is_alive()
    memory = Runtime(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    assert memory.checkpointer is None
