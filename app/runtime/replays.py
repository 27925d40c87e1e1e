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


# Two slots per replica: a shadow policy follows the live batches for as long as it runs,
# so it has one of its own and replays and dry runs are never queued behind it.
SLOTS = ("shadow", "jobs")


class ReplayLauncher:
    """Claims replay jobs and runs each in a child process: per replica one shadow policy
    and one other job (a replay or a dry run) at a time."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self._sessions = sessionmaker
        self._settings = settings
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._children: dict[str, tuple[asyncio.subprocess.Process, str]] = {}
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """A job was just queued: look now rather than at the next tick."""
        self._wake.set()

    async def tick(self) -> None:
        for slot in SLOTS:
            running = self._children.get(slot)
            if running is not None:
                if running[0].returncode is None:
                    continue
                await self._reap(slot)
            job_id = await self._claim(slot)
            if job_id is not None:
                child = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "app.cli",
                    "replay",
                    "--job",
                    job_id,
                    env=_child_env(self._settings),
                    stdin=asyncio.subprocess.DEVNULL,
                )
                self._children[slot] = (child, job_id)

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

    async def _claim(self, slot: str) -> str | None:
        now = time.time()
        kind = replays.c.kind == "shadow" if slot == "shadow" else replays.c.kind != "shadow"
        claimable = or_(
            replays.c.status == "queued",
            (replays.c.status == "running") & (replays.c.lease_until < now),
        )
        async with self._sessions() as session, session.begin():
            job_id = (
                await session.execute(
                    select(replays.c.id)
                    .where(kind, claimable)
                    .order_by(replays.c.created_at)
                    .limit(1)
                )
            ).scalar()
            if job_id is None:
                return None
            won = await session.execute(
                update(replays)
                .where(replays.c.id == job_id, claimable)
                .values(status="running", owner=self._owner, lease_until=now + LEASE_SECONDS)
            )
            return job_id if won.rowcount else None  # type: ignore[attr-defined]

    async def _reap(self, slot: str) -> None:
        """The child ended: a job it left running (it crashed) is marked failed."""
        child, job_id = self._children.pop(slot)
        if child.returncode:
            async with self._sessions() as session, session.begin():
                await session.execute(
                    update(replays)
                    .where(replays.c.id == job_id, replays.c.status == "running")
                    .values(
                        status="failed",
                        error=f"the replay process exited with {child.returncode}",
                        finished_at=time.time(),
                        lease_until=None,
                    )
                )

    async def stop(self) -> None:
        """Stop the children; their jobs' leases run out and they are claimed again (and
        start over)."""
        for child, _ in self._children.values():
            if child.returncode is None:
                child.terminate()
        for child, _ in self._children.values():
            try:
                await asyncio.wait_for(child.wait(), timeout=5)
            except TimeoutError:
                child.kill()
                await child.wait()
        self._children.clear()
