"""An asyncio loop in a thread of its own, for the pipeline's transactions.

On one loop, every ``await`` inside a pipeline transaction queues behind whatever HTTP
parsing and webhook sending is ready to run, so under load a 2 ms transaction took tens
of milliseconds and everything behind it waited. The pipeline's loop has its own engine
(SQLite's C code and the drivers' I/O release the GIL), so its awaits resume promptly.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import Transaction, make_engine, make_sessionmaker
from app.db.bulk import call_sqlite_directly

T = TypeVar("T")

# The interpreter hands the GIL to a waiting thread after this long (default 5 ms); a
# transaction awaits several times, so a shorter slice keeps its latency low.
SWITCH_INTERVAL = 0.001


class LoopThread:
    def __init__(self, settings: Settings, name: str = "pipeline") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.engine: AsyncEngine = make_engine(settings)
        self.sessionmaker: async_sessionmaker[AsyncSession] = make_sessionmaker(self.engine)
        self._write_lock: asyncio.Lock | None = None  # made on the thread's loop

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        call_sqlite_directly()
        self.loop.run_forever()

    def start(self) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._thread.start()

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the thread's loop and await its result from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def write(self, txn: Transaction[T]) -> T:
        """Run a write transaction on this thread's engine, one at a time. SQLite has one
        writer; a connection that finds the write lock taken sleeps in SQLite's busy
        handler (1, 2, 5, 10 ms …) however soon the lock frees, where this lock hands over
        at once. The pipeline's batches and the dispatcher's records both come here."""
        return await self.call(self._one_at_a_time(txn))

    async def _one_at_a_time(self, txn: Transaction[T]) -> T:
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        async with self._write_lock:
            return await txn(self.sessionmaker)

    async def stop(self) -> None:
        if not self._thread.is_alive():
            return
        await self.call(self.engine.dispose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self._thread.join, 10)
        self.loop.close()
