"""A read held open across a commit: real sessions whose first ``execute`` returns its
result only when the test releases it, so a cache's load can be made to overlap a change
and its invalidation, deterministically."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


class HeldRead:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self.read = asyncio.Event()  # the held read has its rows
        self.release = asyncio.Event()
        self._armed = True

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Any]:
        async with self._sessions() as session:
            if not self._armed:
                yield session
                return
            self._armed = False
            yield _Held(session, self)


class _Held:
    def __init__(self, session: AsyncSession, gate: HeldRead) -> None:
        self._session = session
        self._gate = gate

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._session.execute(*args, **kwargs)
        rows = result.all()  # read now, before the change commits
        self._gate.read.set()
        await self._gate.release.wait()
        return _Rows(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class _Rows:
    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def __iter__(self) -> Any:
        return iter(self._rows)
