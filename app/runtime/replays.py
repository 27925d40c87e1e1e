"""Replay jobs' processes: a replica claims a queued job (or one whose process stopped
renewing its lease) and runs it as ``python -m app.cli replay --job ID``, in its own
process, so that a replay never holds the live writer nor shares its event loop or core.
The job's work is ``app.policy.impact.jobs.execute``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import replays

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0  # a job's process renews it with every progress report


def _child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["INTENT_DATABASE_URL"] = settings.database_url
    if settings.secret_key is not None:
        env["INTENT_SECRET_KEY"] = settings.secret_key
    return env


class ReplayLauncher:
    """Claims replay jobs and runs each in a child process, one at a time per replica."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self._sessions = sessionmaker
        self._settings = settings
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._child: asyncio.subprocess.Process | None = None
        self._job: str | None = None
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """A job was just queued: look now rather than at the next tick."""
        self._wake.set()

    async def tick(self) -> None:
        if self._child is not None:
            if self._child.returncode is None:
                return
            await self._reap()
        job_id = await self._claim()
        if job_id is not None:
            self._job = job_id
            self._child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "app.cli",
                "replay",
                "--job",
                job_id,
                env=_child_env(self._settings),
                stdin=asyncio.subprocess.DEVNULL,
            )

    async def run(self, every: float = 1.0) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # the next tick tries again
                log.warning("replay launcher: %s", exc)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=every)
            except TimeoutError:
                pass

    async def _claim(self) -> str | None:
        now = time.time()
        async with self._sessions() as session, session.begin():
            job_id = (
                await session.execute(
                    select(replays.c.id)
                    .where(
                        or_(
                            replays.c.status == "queued",
                            (replays.c.status == "running") & (replays.c.lease_until < now),
                        )
                    )
                    .order_by(replays.c.created_at)
                    .limit(1)
                )
            ).scalar()
            if job_id is None:
                return None
            won = await session.execute(
                update(replays)
                .where(
                    replays.c.id == job_id,
                    or_(replays.c.status == "queued", replays.c.lease_until < now),
                )
                .values(status="running", owner=self._owner, lease_until=now + LEASE_SECONDS)
            )
            return job_id if won.rowcount else None  # type: ignore[attr-defined]

    async def _reap(self) -> None:
        """The child ended: a job it left running (it crashed) is marked failed."""
        assert self._child is not None
        code = self._child.returncode
        if code:
            async with self._sessions() as session, session.begin():
                await session.execute(
                    update(replays)
                    .where(replays.c.id == self._job, replays.c.status == "running")
                    .values(
                        status="failed",
                        error=f"the replay process exited with {code}",
                        finished_at=time.time(),
                        lease_until=None,
                    )
                )
        self._child, self._job = None, None

    async def stop(self) -> None:
        """Stop the child; its job's lease runs out and it is claimed again (from scratch)."""
        if self._child is not None and self._child.returncode is None:
            self._child.terminate()
            try:
                await asyncio.wait_for(self._child.wait(), timeout=5)
            except TimeoutError:
                self._child.kill()
                await self._child.wait()
        self._child = None
