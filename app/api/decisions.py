"""Read API: routing decisions. Lists summarise each decision's webhooks (count, statuses,
attempts); one decision shows the webhook body and every delivery with its attempts."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import SessionDep
from app.api.feedback import dispositions_for
from app.api.views import (
    ERRORS,
    DecisionList,
    DecisionSummary,
    DecisionView,
    DeliveryAttemptView,
    DeliverySummary,
    DeliveryView,
    SlaView,
)
from app.auth import ReadKey
from app.clock import iso
from app.db import decisions, deliveries, delivery_attempts
from app.errors import NotFound

router = APIRouter()
NO_DELIVERIES = DeliverySummary(count=0, statuses={}, attempts=0, last_delivered_at=None)


def _fields(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "type": r.type,
        "lead_id": r.lead_id,
        "account_domain": r.account_domain,
        "rule": r.rule,
        "team": r.team,
        "assignee": r.assignee,
        "band": r.band,
        "tier": r.tier,
        "reason": r.reason,
        "policy_version": r.policy_version,
        "trigger_event_id": r.trigger_event_id,
        "event_received_at": iso(r.event_received_at),
        "created_at": iso(r.created_at),
        "crm_id": r.crm_id,
        "disposition": r.disposition,
        "accepted_at": iso(r.accepted_at),
        "sla": SlaView(due_at=iso(r.sla_due_at), status=r.sla_status) if r.sla_status else None,
    }


async def delivery_summaries(
    session: AsyncSession, decision_ids: list[str]
) -> dict[str, DeliverySummary]:
    """Each decision's deliveries counted by status, in one grouped read."""
    if not decision_ids:
        return {}
    d = deliveries.c
    rows = await session.execute(
        select(
            d.decision_id,
            d.status,
            func.count().label("n"),
            func.sum(d.attempts).label("attempts"),
            func.max(d.delivered_at).label("delivered_at"),
        )
        .where(d.decision_id.in_(decision_ids))
        .group_by(d.decision_id, d.status)
    )
    counts: dict[str, dict[str, int]] = {}
    attempts: dict[str, int] = {}
    delivered: dict[str, float] = {}
    for r in rows:
        counts.setdefault(r.decision_id, {})[r.status] = r.n
        attempts[r.decision_id] = attempts.get(r.decision_id, 0) + int(r.attempts or 0)
        if r.delivered_at is not None:
            delivered[r.decision_id] = max(delivered.get(r.decision_id, 0.0), r.delivered_at)
    return {
        key: DeliverySummary(
            count=sum(statuses.values()),
            statuses=dict(sorted(statuses.items())),
            attempts=attempts[key],
            last_delivered_at=iso(delivered.get(key)),
        )
        for key, statuses in counts.items()
    }


async def summaries(session: AsyncSession, rows: list[Any]) -> list[DecisionSummary]:
    """Decision rows as lists show them: feedback history and webhooks summarised."""
    ids = [r.id for r in rows]
    history = await dispositions_for(session, ids)
    sent = await delivery_summaries(session, ids)
    return [
        DecisionSummary(
            **_fields(r), dispositions=history[r.id], delivery=sent.get(r.id, NO_DELIVERIES)
        )
        for r in rows
    ]


async def decisions_of(
    session: AsyncSession, *, lead_id: str | None = None, domain: str | None = None, limit: int = 20
) -> list[DecisionSummary]:
    """A lead's (or an account's) newest decisions."""
    cond = decisions.c.lead_id == lead_id if lead_id else decisions.c.account_domain == domain
    rows = await session.execute(
        select(decisions).where(cond).order_by(decisions.c.created_at.desc()).limit(limit)
    )
    return await summaries(session, list(rows))


@router.get(
    "/v1/decisions",
    operation_id="listDecisions",
    summary="Routing decisions, newest first, each with its webhooks summarised",
    response_model=DecisionList,
    responses=ERRORS,
)
async def list_decisions(
    key: ReadKey,
    session: SessionDep,
    lead_id: str | None = None,
    account: str | None = None,
    team: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> DecisionList:
    """The webhook body and each delivery's attempts: ``GET /v1/decisions/{id}``."""
    q = select(decisions).order_by(decisions.c.id.desc())
    if lead_id:
        q = q.where(
            decisions.c.lead_id == lead_id.lower()
            if "@" in lead_id
            else decisions.c.lead_id == lead_id
        )
    if account:
        q = q.where(decisions.c.account_domain == account.lower())
    if team:
        q = q.where(decisions.c.team == team)
    if cursor:
        q = q.where(decisions.c.id < cursor)
    rows = (await session.execute(q.limit(limit + 1))).all()
    views = await summaries(session, list(rows[:limit]))
    return DecisionList(decisions=views, next_cursor=views[-1].id if len(rows) > limit else None)


async def deliveries_for(session: AsyncSession, decision_id: str) -> list[DeliveryView]:
    # One statement, so a delivery and its attempts are read as of the same moment.
    a = delivery_attempts
    rows = (
        await session.execute(
            select(
                deliveries,
                a.c.attempt.label("a_attempt"),
                a.c.started_at.label("a_started_at"),
                a.c.status_code.label("a_status_code"),
                a.c.latency_ms.label("a_latency_ms"),
                a.c.error.label("a_error"),
            )
            .outerjoin(a, a.c.delivery_id == deliveries.c.id)
            .where(deliveries.c.decision_id == decision_id)
            .order_by(deliveries.c.created_at, deliveries.c.id, a.c.id)
        )
    ).all()
    by_delivery: dict[str, list[DeliveryAttemptView]] = {}
    firsts: dict[str, Any] = {}
    for r in rows:
        firsts.setdefault(r.id, r)
        history = by_delivery.setdefault(r.id, [])
        if r.a_attempt is not None:
            history.append(
                DeliveryAttemptView(
                    attempt=r.a_attempt,
                    started_at=iso(r.a_started_at),
                    status_code=r.a_status_code,
                    latency_ms=round(r.a_latency_ms, 3),
                    error=r.a_error,
                )
            )
    return [
        DeliveryView(
            id=r.id,
            destination_id=r.destination_id,
            status=r.status,
            attempts=r.attempts,
            next_attempt_at=iso(r.next_attempt_at) if r.status == "pending" else None,
            last_status_code=r.last_status_code,
            last_error=r.last_error,
            delivered_at=iso(r.delivered_at),
            history=by_delivery.get(r.id, []),
        )
        for r in firsts.values()
    ]


@router.get(
    "/v1/decisions/{decision_id}",
    operation_id="getDecision",
    summary="One decision with its webhook body and delivery attempts",
    response_model=DecisionView,
    responses=ERRORS,
)
async def get_decision(decision_id: str, key: ReadKey, session: SessionDep) -> DecisionView:
    row = (await session.execute(select(decisions).where(decisions.c.id == decision_id))).first()
    if row is None:
        raise NotFound(
            f'no decision "{decision_id}"', field="decision_id", code="decision_not_found"
        )
    history = await dispositions_for(session, [decision_id])
    sent = await delivery_summaries(session, [decision_id])
    return DecisionView(
        **_fields(row),
        dispositions=history[decision_id],
        delivery=sent.get(decision_id, NO_DELIVERIES),
        payload=orjson.loads(row.payload),
        deliveries=await deliveries_for(session, decision_id),
    )
