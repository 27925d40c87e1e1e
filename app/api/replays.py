"""Replays: run recorded history against a policy (a stored version or a candidate
document) and read the decision diff (``app.policy.impact``).

``POST /v1/replays`` queues a job (202); a replay process picks it up within a second and
writes its progress, then the diff, to the job; ``GET /v1/replays/{id}`` reads them and
``GET /v1/replays/{id}/decisions`` lists the decisions the replay made, in order.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.body import BODY_ERRORS, RequestBody
from app.api.deps import RuntimeDep, SessionDep, after_commit
from app.api.read import ERRORS
from app.auth import AdminKey, ReadKey
from app.clock import iso
from app.db import replay_decisions, replays
from app.errors import InvalidInput, NotFound
from app.policy.impact.jobs import create_job, job_view
from app.policy.store import storable, stored_size, validate_or_raise

router = APIRouter()

MAX_EXAMPLES = 50


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: dict[str, Any] | None = Field(
        default=None, description="a candidate policy document (as PUT /v1/policy takes)"
    )
    version: int | None = Field(default=None, ge=1, description="or a stored version")
    since: AwareDatetime | None = Field(
        default=None, description="window start; default: the first recorded batch"
    )
    until: AwareDatetime | None = Field(
        default=None, description="window end (exclusive); default: the newest batch now"
    )
    start: Literal["history", "empty"] = Field(
        default="history",
        description="history: the state at `since`, rebuilt by replaying what came before "
        "under the versions then in force (baseline: the decisions actually made); empty: "
        "an empty state (baseline: the window replayed under the recorded versions)",
    )
    examples: int = Field(default=5, ge=0, le=MAX_EXAMPLES, description="examples per kind")


class ReplayQueued(BaseModel):
    id: str
    status: str
    url: str


class ReplayView(BaseModel):
    id: str
    kind: str = Field(description="replay | shadow | dry_run")
    status: str = Field(description="queued | running | done | failed | promoted | discarded")
    policy_version: int | None
    since: str | None
    until: str | None
    start: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: dict[str, Any] | None
    diff: dict[str, Any] | None = Field(
        description="baseline, decisions, counts, timing, by_source, by_tier, examples"
    )
    error: str | None


class ReplayedDecision(BaseModel):
    pos: int
    batch_id: int | None
    type: str
    lead_id: str | None
    account_domain: str | None
    rule: str
    team: str
    assignee: str | None
    band: str | None
    tier: str | None
    source: str | None
    created_at: str
    trigger_event_id: str | None


class ReplayedDecisions(BaseModel):
    decisions: list[ReplayedDecision]
    next_cursor: str | None


async def queue_replay(
    session: AsyncSession, body: ReplayIn, *, kind: str, created_by: str, now: float
) -> str:
    """Check a replay request and queue it; the errors name the field."""
    if (body.policy is None) == (body.version is None):
        raise InvalidInput(
            "give exactly one of policy (a document) or version (a stored one)",
            code="policy_or_version",
            field="policy",
        )
    if body.since is not None and body.until is not None and body.since >= body.until:
        raise InvalidInput("since: must be before until", field="since")
    document = None
    if body.policy is not None:
        try:
            doc = validate_or_raise(body.policy)
        except InvalidInput as exc:
            exc.field = f"policy.{exc.field}" if exc.field else "policy"
            raise
        document, _ = storable(doc, 0)
    elif body.version is not None and await stored_size(session, body.version) is None:
        raise NotFound(
            f"no policy version {body.version}", code="policy_version_not_found", field="version"
        )
    return await create_job(
        session,
        kind=kind,
        version=body.version,
        document=document,
        since=body.since.timestamp() if body.since else None,
        until=body.until.timestamp() if body.until else None,
        start=body.start,
        examples=body.examples,
        created_by=created_by,
        now=now,
    )


async def job_row(session: AsyncSession, job_id: str) -> Any:
    row = (await session.execute(select(replays).where(replays.c.id == job_id))).first()
    if row is None:
        raise NotFound(f'no replay "{job_id[:60]}"', code="replay_not_found", field="id")
    return row


@router.post(
    "/v1/replays",
    operation_id="createReplay",
    status_code=202,
    summary="Replay recorded history against a policy (a job; read its diff when done)",
    response_model=ReplayQueued,
    responses=BODY_ERRORS,
)
async def create_replay(
    key: AdminKey,
    body: Annotated[ReplayIn, RequestBody(ReplayIn)],
    session: SessionDep,
    runtime: RuntimeDep,
) -> ReplayQueued:
    job_id = await queue_replay(
        session, body, kind="replay", created_by=key.name, now=runtime.clock.now()
    )
    after_commit(session, runtime.replays.poke)
    return ReplayQueued(id=job_id, status="queued", url=f"/v1/replays/{job_id}")


@router.get(
    "/v1/replays/{replay_id}",
    operation_id="getReplay",
    summary="A replay's status, progress and, when done, its decision diff",
    response_model=ReplayView,
    responses=ERRORS,
)
async def get_replay(replay_id: str, key: ReadKey, session: SessionDep) -> ReplayView:
    return ReplayView(**job_view(await job_row(session, replay_id)))


@router.get(
    "/v1/replays/{replay_id}/decisions",
    operation_id="listReplayDecisions",
    summary="The decisions a replay made, in the order it made them",
    response_model=ReplayedDecisions,
    responses=ERRORS,
)
async def list_replay_decisions(
    replay_id: str,
    key: ReadKey,
    session: SessionDep,
    lane: Literal["candidate", "baseline"] = "candidate",
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> ReplayedDecisions:
    await job_row(session, replay_id)
    after = -1
    if cursor is not None:
        try:
            after = int(cursor)
        except ValueError:
            raise InvalidInput("cursor: not a cursor this API gave", field="cursor") from None
    rd = replay_decisions.c
    rows = (
        await session.execute(
            select(replay_decisions)
            .where(rd.replay_id == replay_id, rd.lane == lane, rd.pos > after)
            .order_by(rd.pos)
            .limit(limit + 1)
        )
    ).all()
    shown = [
        ReplayedDecision(
            **{k: getattr(r, k) for k in ReplayedDecision.model_fields if k != "created_at"},
            created_at=iso(r.created_at),
        )
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    return ReplayedDecisions(decisions=shown, next_cursor=str(shown[-1].pos) if more else None)
