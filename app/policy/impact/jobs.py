"""Replay jobs: a row each in ``replays``, run in a child process so that a replay never
holds the live writer nor competes with it for the event loop (it takes the other core).

The service's ``ReplayLauncher`` (``app.runtime.replays``) claims a queued job (or one
whose runner stopped renewing its lease) and starts ``python -m app.cli replay --job ID``;
that process (``execute``) replays, writes the decisions to ``replay_decisions`` and the
diff to the row, renewing the lease as it reports progress. A job whose process died is
claimed again and starts over: a replay is deterministic, so a second run writes what the
first would have.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import iso, new_id
from app.db import batches, dumps, loads, policies, replay_decisions, replays
from app.policy.impact.diff import diff
from app.policy.impact.replay import (
    Progress,
    Replayed,
    ReplaySpec,
    Start,
    actual_decisions,
    run,
)
from app.policy.store import PolicyUnloadable, load_document
from app.runtime.replays import LEASE_SECONDS

log = logging.getLogger(__name__)

DIFF_EVERY_SECONDS = 2.0  # how often a shadow's live diff is rewritten
ACTIVE = ("queued", "running")


async def create_job(
    session: AsyncSession,
    *,
    kind: str,
    version: int | None,
    document: str | None,
    since: float | None,
    until: float | None,
    start: Start,
    examples: int,
    created_by: str | None,
    now: float,
    owner: str | None = None,
) -> str:
    """A queued job; its end is the newest batch now (a shadow's window starts after it).
    With ``owner`` it is made already claimed by that process (the CLI runs it itself)."""
    job_id = new_id("rpl", now)
    last = (await session.execute(select(func.max(batches.c.id)))).scalar()
    await session.execute(
        insert(replays).values(
            id=job_id,
            kind=kind,
            status="queued" if owner is None else "running",
            owner=owner,
            lease_until=None if owner is None else time.time() + LEASE_SECONDS,
            policy_version=version,
            policy_text=document,
            since=since,
            until=until,
            start=start,
            examples=examples,
            created_at=now,
            created_by=created_by,
            cursor=last or 0,
            progress=dumps(Progress(phase="queued").as_dict()),
        )
    )
    return job_id


async def queue_and_wait(
    live: async_sessionmaker[AsyncSession],
    *,
    poke: Callable[[], None],
    within: float,
    **job: Any,
) -> Any:
    """Queue a job (``create_job``'s arguments) in a transaction of its own, so that the
    process that runs it sees it, then wait up to ``within`` seconds for it to end; its row
    (still queued or running when it took longer)."""
    async with live.begin() as session:
        job_id = await create_job(session, **job)
    poke()
    deadline = time.monotonic() + within
    while True:
        async with live() as session:
            row = (await session.execute(select(replays).where(replays.c.id == job_id))).one()
        if row.status in ("done", "failed") or time.monotonic() >= deadline:
            return row
        await asyncio.sleep(0.1)


def job_view(row: Any) -> dict[str, Any]:
    """A job as ``GET /v1/replays/{id}`` shows it."""
    return {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "policy_version": row.policy_version,
        "since": iso(row.since) if row.since is not None else None,
        "until": iso(row.until) if row.until is not None else None,
        "start": row.start,
        "created_at": iso(row.created_at),
        "started_at": iso(row.started_at) if row.started_at is not None else None,
        "finished_at": iso(row.finished_at) if row.finished_at is not None else None,
        "progress": loads(row.progress) if row.progress else None,
        "diff": loads(row.result) if row.result else None,
        "error": row.error,
    }


async def spec_of(live: async_sessionmaker[AsyncSession], row: Any) -> ReplaySpec:
    """The job's replay: its candidate compiled as the service would run it."""
    if row.policy_version is not None:
        async with live() as session:
            document = (
                await session.execute(
                    select(policies.c.document).where(policies.c.version == row.policy_version)
                )
            ).scalar_one()
        try:
            candidate = load_document(row.policy_version, document)
        except PolicyUnloadable as exc:
            raise PolicyUnloadable(
                f"policy version {row.policy_version} does not load: {exc.reason}"
            ) from None
    else:
        async with live() as session:
            newest = (await session.execute(select(func.max(policies.c.version)))).scalar()
        candidate = load_document((newest or 0) + 1, row.policy_text)
    spec = ReplaySpec(candidate, since=row.since, until=row.until, start=row.start)
    if row.kind == "shadow":
        spec.after_batch = row.cursor  # history up to it is the warm-up; then it follows
    else:
        spec.last_batch = row.cursor
    return spec


class Runner:
    """One job, in the child process: the sink, the progress reports and the diff."""

    def __init__(
        self,
        live: async_sessionmaker[AsyncSession],
        row: Any,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.live = live
        self.row = row
        self._on_progress = on_progress
        self.made: dict[str, list[Replayed]] = {"candidate": [], "baseline": []}
        self._diffed = 0.0
        self._applied: int | None = None  # the newest batch the lanes have applied

    async def sink(self, made: list[Replayed]) -> None:
        rows = []
        for d in made:
            lane = self.made[d.lane]
            rows.append(
                {
                    "replay_id": self.row.id,
                    "lane": d.lane,
                    "pos": len(lane),
                    "batch_id": d.batch_id,
                    **d.fields,
                    "payload": d.payload,
                }
            )
            lane.append(d)
        async with self.live() as session, session.begin():
            await session.execute(insert(replay_decisions), rows)

    async def report(self, progress: Progress) -> None:
        if self._on_progress is not None:
            self._on_progress(progress)
        await self._update(progress=dumps(progress.as_dict()))

    async def follow(self, progress: Progress) -> bool:
        """A shadow: keep following while it is running; the diff rewritten now and then."""
        self._applied = progress.last_batch
        async with self.live() as session:
            status = (
                await session.execute(select(replays.c.status).where(replays.c.id == self.row.id))
            ).scalar()
        if status != "running":
            return False
        if time.monotonic() - self._diffed >= DIFF_EVERY_SECONDS:
            self._diffed = time.monotonic()
            await self._update(progress=dumps(progress.as_dict()), result=dumps(await self.diff()))
        else:
            await self._update()
        return True

    async def diff(self) -> dict[str, Any]:
        spec = await spec_of(self.live, self.row)
        if self.row.start == "empty":
            baseline, kind = self.made["baseline"], "recorded_versions"
        else:
            # A shadow compares what both decided up to the newest batch it has applied
            # (live batches after it are still to come), whether it decided there or not.
            upto = None if self.row.kind != "shadow" else (self._applied or self.row.cursor)
            baseline, kind = await actual_decisions(self.live, spec, upto=upto), "actual"
        return diff(
            baseline, self.made["candidate"], baseline_kind=kind, examples=self.row.examples
        )

    async def _update(self, **values: Any) -> None:
        async with self.live() as session, session.begin():
            await session.execute(
                update(replays)
                .where(replays.c.id == self.row.id)
                .values(lease_until=time.time() + LEASE_SECONDS, **values)
            )


async def execute(
    live: async_sessionmaker[AsyncSession],
    job_id: str,
    *,
    owner: str,
    on_progress: Callable[[Progress], None] | None = None,
) -> str:
    """Run job ``job_id`` to its end (a shadow: until promoted or discarded); its status."""
    async with live() as session, session.begin():
        row = (await session.execute(select(replays).where(replays.c.id == job_id))).first()
        if row is None:
            raise LookupError(f'no replay "{job_id}"')
        if row.status not in ACTIVE:
            return str(row.status)
        # Only while still queued or running: a discard that committed since the read wins.
        taken: Any = await session.execute(
            update(replays)
            .where(replays.c.id == job_id, replays.c.status.in_(ACTIVE))
            .values(
                status="running",
                owner=owner,
                started_at=time.time(),
                lease_until=time.time() + LEASE_SECONDS,
                error=None,
            )
        )
        if not taken.rowcount:  # ended before it ran (a shadow discarded meanwhile)
            await session.execute(
                update(replays)
                .where(replays.c.id == job_id, replays.c.finished_at.is_(None))
                .values(finished_at=time.time(), lease_until=None)
            )
            return "ended"
        await session.execute(
            delete(replay_decisions).where(replay_decisions.c.replay_id == job_id)
        )
    runner = Runner(live, row, on_progress)
    try:
        spec = await spec_of(live, row)
        follow = runner.follow if row.kind == "shadow" else None
        progress = await run(live, spec, sink=runner.sink, report=runner.report, follow=follow)
        runner._applied = progress.last_batch
        result = await runner.diff()
    except Exception as exc:
        log.exception("replay %s failed", job_id)
        await _finish(live, job_id, "failed", error=f"{type(exc).__name__}: {exc}"[:500])
        return "failed"
    status = "done" if row.kind != "shadow" else None
    await _finish(live, job_id, status, progress=dumps(progress.as_dict()), result=dumps(result))
    return status or "stopped"


async def _finish(
    live: async_sessionmaker[AsyncSession], job_id: str, status: str | None, **values: Any
) -> None:
    if status is not None:
        values["status"] = status
    async with live() as session, session.begin():
        await session.execute(
            update(replays)
            .where(replays.c.id == job_id)
            .values(finished_at=time.time(), lease_until=None, **values)
        )
