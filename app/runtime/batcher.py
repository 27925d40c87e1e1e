"""Group commit: concurrent HTTP requests share one pipeline transaction.

Requests queue their events and wait; one task drains the queue, runs the pipeline on
everything queued (up to ``batch_max_events``) in one transaction and answers each
request after the commit. At low load a batch is a single request, so latency stays
low; under load batches grow by themselves and the per-request cost falls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import DBAPIError

from app.errors import AppError, InvalidInput, Overloaded, Unavailable
from app.events import Event, EventStatus
from app.observability import metrics

log = logging.getLogger(__name__)

ProcessFn = Callable[[list[Event]], Awaitable[list[EventStatus]]]
_Item = tuple[list[Event], "asyncio.Future[list[EventStatus]]"]


class Batcher:
    def __init__(
        self, process: ProcessFn, *, max_events: int, max_queue: int, linger_ms: float
    ) -> None:
        self._process = process
        self._max_events = max_events
        self._max_queue = max_queue
        self._linger = linger_ms / 1000
        self._queue: deque[tuple[list[Event], asyncio.Future[list[EventStatus]]]] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, events: list[Event]) -> list[EventStatus]:
        if self._closing:
            raise Unavailable("the service is shutting down", headers={"Retry-After": "1"})
        if self._queued + len(events) > self._max_queue and self._queued:
            raise Overloaded(
                "the ingest queue is full; retry shortly", headers={"Retry-After": "1"}
            )
        fut: asyncio.Future[list[EventStatus]] = asyncio.get_running_loop().create_future()
        self._queue.append((events, fut))
        self._queued += len(events)
        metrics.INGEST_QUEUE.set(self._queued)
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._queue:
                self._wake.clear()
                if self._closing:
                    return
                continue
            if self._linger and self._queued < self._max_events:
                await asyncio.sleep(self._linger)
            items = [self._queue.popleft()]
            n = len(items[0][0])
            while self._queue and n + len(self._queue[0][0]) <= self._max_events:
                item = self._queue.popleft()
                items.append(item)
                n += len(item[0])
            self._queued -= n
            metrics.INGEST_QUEUE.set(self._queued)
            try:
                await self._commit(items)
            except Exception as exc:
                if len(items) > 1 and not is_transient(exc):
                    # One request's events broke the batch: run each request alone so only
                    # that request fails and the others are stored.
                    for item in items:
                        try:
                            await self._commit([item])
                        except Exception as single:
                            _fail([item], single)
                else:
                    _fail(items, exc)

    async def _commit(self, items: list[_Item]) -> None:
        batch = [ev for events, _ in items for ev in events]
        statuses = await self._process(batch)
        i = 0
        for events, fut in items:
            if not fut.done():
                fut.set_result(statuses[i : i + len(events)])
            i += len(events)


def is_transient(exc: BaseException) -> bool:
    """Database unreachable, locked or timing out: worth retrying as is."""
    return isinstance(exc, OSError | TimeoutError | ConnectionError | DBAPIError)


def _fail(items: list[_Item], exc: Exception) -> None:
    log.error("pipeline batch failed", exc_info=exc)
    metrics.count_db_error("pipeline", exc)
    err: AppError
    if is_transient(exc):
        err = Unavailable(
            f"the events could not be stored ({type(exc).__name__}); nothing was accepted, retry",
            headers={"Retry-After": "1"},
        )
    else:
        err = InvalidInput(
            f"the events could not be processed ({type(exc).__name__}); nothing was "
            "accepted and retrying the same events will not help",
            code="unprocessable_event",
        )
    for _, fut in items:
        if not fut.done():
            fut.set_exception(err)
