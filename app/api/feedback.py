"""Sales feedback: what happened to a routed lead (accepted, rejected and why, opportunity,
won, lost), posted by the CRM or a rep; idempotent, the full history kept.

A decision is addressed by its id, by the lead's email (its newest lead decision) or by
the CRM's own record id (once a disposition has told us that id). Acceptance settles the
decision's SLA; a rejection whose reason the policy lists under
``feedback.learn_from_rejections`` adds the lead's email domain to a policy list, as a
new policy version.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Path, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import RuntimeDep, SessionDep, after_commit
from app.api.views import DispositionView
from app.auth import FeedbackKey
from app.clock import iso, new_id
from app.db import decisions, dispositions
from app.errors import InvalidInput, NotFound, error_responses
from app.events import email_domain
from app.observability import metrics
from app.policy.schema import CompiledPolicy, PolicyDoc
from app.policy.store import active_policy, save_version

router = APIRouter()

Status = Literal["accepted", "rejected", "opportunity", "won", "lost"]
# Statuses that mean sales took the lead: they settle the SLA like an acceptance does.
TAKEN = frozenset({"accepted", "opportunity", "won", "lost"})


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Status
    reason: str | None = Field(
        default=None,
        max_length=100,
        description="rejected only: one of the policy's feedback.rejection_reasons",
    )
    note: str | None = Field(default=None, max_length=2000, description="free text")
    value: float | None = Field(
        default=None, ge=0, description="opportunity / won: the deal's value"
    )
    crm_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="the CRM's record id: later feedback may address the decision by it",
    )


class FeedbackResult(DispositionView):
    duplicate: bool = Field(description="true when this feedback was already recorded")
    learned_policy_version: int | None = Field(
        default=None, description="the policy version this rejection created, if any"
    )


def disposition_view(r: Any) -> DispositionView:
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


async def find_decision(session: AsyncSession, ref: str) -> Any:
    """A decision by id, by lead email (the newest lead decision) or by CRM id."""
    ref = ref.strip()
    if ref.startswith("dec_"):
        cond = decisions.c.id == ref
    elif "@" in ref:
        cond = (decisions.c.lead_id == ref.lower()) & (decisions.c.type == "lead.routed")
    else:
        cond = decisions.c.crm_id == ref
    row = (
        await session.execute(
            select(decisions).where(cond).order_by(decisions.c.created_at.desc()).limit(1)
        )
    ).first()
    if row is None:
        raise NotFound(
            f'no decision for "{ref}" (a decision id, a lead email or a CRM id)',
            field="decision_id",
            code="decision_not_found",
        )
    return row


def _check(body: FeedbackIn, policy: CompiledPolicy) -> None:
    reasons = policy.doc.feedback.rejection_reasons
    if body.status == "rejected":
        if body.reason is None:
            raise InvalidInput(
                f"reason: a rejection needs a reason, one of {', '.join(reasons)}",
                field="reason",
                code="reason_required",
            )
        if body.reason not in reasons:
            raise InvalidInput(
                f'reason: "{body.reason}" is not a rejection reason of policy version '
                f"{policy.version} ({', '.join(reasons)})",
                field="reason",
                code="unknown_reason",
            )
    elif body.reason is not None:
        raise InvalidInput(
            "reason: only a rejection has a reason", field="reason", code="unexpected_field"
        )
    if body.value is not None and body.status not in ("opportunity", "won"):
        raise InvalidInput(
            "value: only an opportunity or a won deal has a value",
            field="value",
            code="unexpected_field",
        )


def _idempotency_key(decision_id: str, body: FeedbackIn, header: str | None) -> str:
    if header:
        return f"key:{decision_id}:{header}"
    digest = hashlib.sha256(
        orjson.dumps(body.model_dump(), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()[:32]
    return f"body:{decision_id}:{digest}"


async def _learn(
    session: AsyncSession,
    policy: CompiledPolicy,
    *,
    reason: str,
    lead_id: str | None,
    decision_id: str,
    who: str,
    now: float,
) -> int | None:
    """Add the rejected lead's domain to the list the policy names for ``reason``."""
    list_name = policy.doc.feedback.learn_from_rejections.get(reason)
    domain = email_domain(lead_id) if lead_id and "@" in lead_id else None
    if list_name is None or domain is None or domain in policy.free_mail:
        return None
    current = policy.doc.lists.get(list_name, [])
    if domain in current:
        return None
    raw = policy.doc.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["lists"][list_name] = [*current, domain]
    doc = PolicyDoc.model_validate(raw)
    learned = await save_version(
        session,
        doc,
        source_text=None,
        created_by=who,
        now=now,
        comment=f"learned: {domain} added to {list_name} ({reason} rejection of {decision_id})",
    )
    return learned.version


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
    body: FeedbackIn,
    key: FeedbackKey,
    session: SessionDep,
    runtime: RuntimeDep,
    response: Response,
    decision_ref: Annotated[
        str,
        Path(max_length=320, description="a decision id, the lead's email, or a CRM id"),
    ],
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> FeedbackResult:
    policy = runtime.policy
    assert policy is not None
    _check(body, policy)
    now = runtime.clock.now()
    learned: int | None = None
    decision = await find_decision(session, decision_ref)
    ikey = _idempotency_key(decision.id, body, idempotency_key)
    seen = (
        await session.execute(select(dispositions).where(dispositions.c.idempotency_key == ikey))
    ).first()
    if seen is not None:
        response.status_code = 200
        return FeedbackResult(**disposition_view(seen).model_dump(), duplicate=True)
    row = {
        "id": new_id("dsp", now),
        "decision_id": decision.id,
        "lead_id": decision.lead_id,
        "status": body.status,
        "reason": body.reason,
        "note": body.note,
        "value": body.value,
        "crm_id": body.crm_id,
        "idempotency_key": ikey,
        "created_at": now,
        "created_by": key.name,
    }
    await session.execute(dispositions.insert().values(**row))
    changes: dict[str, Any] = {"disposition": body.status}
    if body.crm_id is not None:
        changes["crm_id"] = body.crm_id
    if body.status in TAKEN and decision.accepted_at is None:
        changes["accepted_at"] = now
        if decision.sla_status == "pending":
            changes["sla_status"] = "met" if now <= decision.sla_due_at else "missed"
            metrics.count_sla(changes["sla_status"], decision.rule)
    await session.execute(update(decisions).where(decisions.c.id == decision.id).values(**changes))
    if body.status == "rejected" and body.reason is not None:
        learned = await _learn(
            session,
            policy,
            reason=body.reason,
            lead_id=decision.lead_id,
            decision_id=decision.id,
            who=f"feedback:{key.name}",
            now=now,
        )
    if learned is not None:

        async def use_learned() -> None:
            async with runtime.sessionmaker() as s:
                fresh = await active_policy(s)
            if fresh is not None:
                runtime.set_policy(fresh)

        after_commit(session, use_learned)
    return FeedbackResult(
        id=row["id"],
        decision_id=decision.id,
        lead_id=decision.lead_id,
        status=body.status,
        reason=body.reason,
        note=body.note,
        value=body.value,
        crm_id=body.crm_id,
        created_at=iso(now),
        duplicate=False,
        learned_policy_version=learned,
    )
