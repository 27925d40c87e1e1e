"""The privacy work of a running service (or of one CLI command): erasure with optional
suppression, export, the in-memory suppression set and the retention sweep.

An erasure runs where the pipeline's batches run (``writes``: ``LoopThread.write``), one
at a time with them: on SQLite that is the one writer's lock, and on PostgreSQL it keeps
a batch of this process that read the person's lead before the erasure from writing it
back after (a batch on another replica at that very moment still can: the pipeline does
not lock the leads it reads; erasing again removes it). Retention batches run there on
SQLite only; on PostgreSQL they take their own sessions (row locks, no single writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock
from app.config import Settings
from app.db import Transaction
from app.observability import metrics
from app.privacy.erase import erase_person, new_pseudonym
from app.privacy.export import export_person
from app.privacy.person import find_person
from app.privacy.retention import Retention, Writes
from app.privacy.suppress import RELOAD_SECONDS, Hasher, Suppressions, store

log = logging.getLogger(__name__)


@dataclass
class Erasure:
    """What one erasure did: rows changed per table, and the suppressed hashes."""

    erased: dict[str, int]
    suppressed: list[str]
    # The person's identifiers as senders wrote them (email, anonymous and user ids): what
    # in-memory copies (the source debugger) are searched for. Never logged or stored.
    mentions: list[str]


class Privacy:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        clock: Clock,
        settings: Settings,
        *,
        hasher: Hasher,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._clock = clock
        self._settings = settings
        self.suppressions = Suppressions(hasher)
        self._writes: Writes = self._write_here
        self.retention: Retention | None = None
        self._task: asyncio.Task[None] | None = None

    async def _write_here(self, txn: Transaction[Any]) -> Any:
        return await txn(self._sessionmaker)

    async def start(self, *, writes: Writes | None = None, retention: bool = True) -> None:
        """Load the suppression set, keep it fresh, and (``retention``) start the sweep."""
        self._writes = writes or self._write_here
        await self.reload()
        self._task = asyncio.create_task(self._reload_loop(), name="suppressions")
        if retention:
            self.retention = Retention(
                self._sessionmaker,
                self._clock,
                self._settings,
                writes=writes if self._settings.is_sqlite else None,
            )
            self.retention.start()

    async def stop(self) -> None:
        if self.retention is not None:
            await self.retention.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reload(self) -> int:
        async with self._sessionmaker() as session:
            return await self.suppressions.load(session)

    async def _reload_loop(self) -> None:
        """Erasures made by another replica or the CLI reach this process's set."""
        while True:
            await asyncio.sleep(RELOAD_SECONDS)
            try:
                await self.reload()
            except Exception as exc:
                log.warning("reloading suppressions failed: %s", exc)
                metrics.count_db_error("suppressions", exc)

    async def erase(self, identifier: str, *, suppress: bool = False) -> Erasure | None:
        """Erase the person ``identifier`` names, in one write transaction; None when no
        lead has it. With ``suppress``, later events naming them are dropped."""
        now = self._clock.now()

        async def erasing(sessionmaker: async_sessionmaker[AsyncSession]) -> Erasure | None:
            async with sessionmaker() as session, session.begin():
                person = await find_person(session, identifier)
                if person is None:
                    return None
                hashes = self.suppressions.hashes(person.suppression_keys()) if suppress else []
                erased = await erase_person(session, person, pseudonym=new_pseudonym())
                erased["suppressions"] = await store(session, hashes, now=now)
                mentions = sorted(
                    {k.split(":", 1)[1] if ":" in k else k for k in person.suppression_keys()}
                )
                return Erasure(erased, hashes, mentions)

        done: Erasure | None = await self._writes(erasing)
        if done is not None:
            self.suppressions.add(done.suppressed)  # committed: this process drops them now
            # Counts only: the identifier itself is never logged.
            log.info("person erased", extra={"erased": done.erased})
        return done

    async def export(self, identifier: str) -> dict[str, Any] | None:
        """Everything held about the person ``identifier`` names; None when no lead has it."""
        async with self._sessionmaker() as session:
            person = await find_person(session, identifier)
            return None if person is None else await export_person(session, person)
