"""A background job run every few seconds (the SLA timer's check, the retention sweep):
one task, cancelled on stop; a failed run is logged and counted, and the next one runs on
schedule."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from app.observability import metrics

log = logging.getLogger(__name__)


class Periodic:
    def __init__(
        self, run: Callable[[], Awaitable[Any]], *, every: float, name: str, what: str
    ) -> None:
        """``run`` every ``every`` seconds in a task called ``name``; failures are logged as
        "<what> failed" and counted in the database error metric under ``name``."""
        self._run = run
        self._every = every
        self._name = name
        self._what = what
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self._run()
            except Exception as exc:
                log.warning("%s failed: %s", self._what, exc)
                metrics.count_db_error(self._name, exc)
            await asyncio.sleep(self._every)
