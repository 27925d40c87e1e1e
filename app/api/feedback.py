"""Sales feedback on a routed lead (accepted, rejected and why, opportunity, won, lost),
posted by the CRM or a rep; the recording, the SLA and the learning are in
``app.routing.feedback``. Also the dispositions as the read API shows them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Response
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.body import RequestBody
from app.api.deps import RuntimeDep, SessionDep, after_commit
from app.api.views import DispositionView
from app.auth import FeedbackKey
from app.clock import iso
from app.db import dispositions
from app.errors import error_responses
from app.policy.store import active_policy
from app.routing.feedback import Disposition, FeedbackIn, record

router = APIRouter()


class FeedbackResult(DispositionView):
    duplicate: bool = Field(description="true when this feedback was already recorded")
    learned_policy_version: int | None = Field(
        default=None, description="the policy version this rejection created, if any"
    )


def disposition_view(r: Any) -> DispositionView:
    """A ``dispositions`` row (or a ``Disposition``) as the API shows it."""
    return DispositionView(
        id=r.id,
        decision_id=r.decision_id,
        lead_id=r.lead_id,
        status=r.status,
        reason=r.reason,
        note=r.note,
        value=r.value,
        crm_id=r.crm_id,
        created_at=iso(r.created_at),
    )


async def dispositions_for(
    session: AsyncSession, decision_ids: list[str]
) -> dict[str, list[DispositionView]]:
    """The history of each decision, oldest first."""
    out: dict[str, list[DispositionView]] = {d: [] for d in decision_ids}
    if decision_ids:
        rows = await session.execute(
            select(dispositions)
            .where(dispositions.c.decision_id.in_(decision_ids))
            .order_by(dispositions.c.created_at, dispositions.c.id)
        )
        for r in rows:
            out[r.decision_id].append(disposition_view(r))
    return out


@router.post(
    "/v1/decisions/{decision_ref}/feedback",
    operation_id="postFeedback",
    summary="Record what sales did with a routed lead (idempotent)",
    status_code=201,
    response_model=FeedbackResult,
    responses={
        200: {"model": FeedbackResult},
        **error_responses(400, 401, 403, 404, 413, 422, 503),
    },
)
async def post_feedback(
    key: FeedbackKey,
    body: Annotated[FeedbackIn, RequestBody(FeedbackIn)],
    session: SessionDep,
    runtime: RuntimeDep,
    response: Response,
    decision_ref: Annotated[
        str,
        Path(max_length=320, description="a decision id, the lead's email, or a CRM id"),
    ],
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> FeedbackResult:
    """Acceptance (or anything beyond it) settles the decision's SLA; a rejection whose
    reason the policy lists under ``feedback.learn_from_rejections`` adds the lead's email
    domain to that policy list, as a new policy version."""
    assert runtime.policy is not None
    done = await record(
        session,
        runtime.policy,
        decision_ref,
        body,
        who=key.name,
        key=idempotency_key,
        now=runtime.clock.now(),
    )
    if done.duplicate:
        response.status_code = 200
    if done.learned_policy_version is not None:

        async def use_learned() -> None:
            async with runtime.sessionmaker() as s:
                fresh = await active_policy(s)
            if fresh is not None:
                runtime.set_policy(fresh)

        after_commit(session, use_learned)
    return _result(done.disposition, done.duplicate, done.learned_policy_version)


def _result(d: Disposition, duplicate: bool, learned: int | None) -> FeedbackResult:
    view = disposition_view(d)
    return FeedbackResult(**view.model_dump(), duplicate=duplicate, learned_policy_version=learned)
