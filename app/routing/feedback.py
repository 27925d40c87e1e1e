"""Sales feedback on a routed lead: recorded once, settling the SLA, teaching the policy.

A decision is addressed by its id, by the lead's email (its newest lead decision) or by
the CRM's own record id (once a disposition has told us that id). Feedback is idempotent:
by the caller's ``Idempotency-Key``, or else by its content. Acceptance (or anything
beyond it) settles the decision's SLA; a rejection whose reason the policy lists under
``feedback.learn_from_rejections`` adds the lead's email domain to a policy list, as a new
policy version (the caller swaps it in once the transaction has committed).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import new_id
from app.db import decisions, dispositions
from app.errors import InvalidInput, NotFound
from app.events import email_domain
from app.observability import metrics
from app.policy.schema import CompiledPolicy, PolicyDoc
from app.policy.store import save_version

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


@dataclass(frozen=True)
class Disposition:
    id: str
    decision_id: str
    lead_id: str | None
    status: str
    reason: str | None
    note: str | None
    value: float | None
    crm_id: str | None
    created_at: float

    @classmethod
    def of(cls, row: Any) -> Disposition:
        """From a ``dispositions`` row (or anything with its columns as attributes)."""
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Recorded:
    """The disposition (new, or the one recorded before) and what it changed."""

    disposition: Disposition
    duplicate: bool
    learned_policy_version: int | None = None


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


def check(body: FeedbackIn, policy: CompiledPolicy) -> None:
    """The rules the schema cannot say: a rejection's reason is one the policy lists."""
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


def idempotency_key(decision_id: str, body: FeedbackIn, header: str | None) -> str:
    if header:
        return f"key:{decision_id}:{header}"
    digest = hashlib.sha256(
        orjson.dumps(body.model_dump(), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()[:32]
    return f"body:{decision_id}:{digest}"


async def learn(
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


async def _settle(session: AsyncSession, decision: Any, body: FeedbackIn, now: float) -> None:
    """The decision's latest disposition, CRM id and (when sales took it) its SLA."""
    changes: dict[str, Any] = {"disposition": body.status}
    if body.crm_id is not None:
        changes["crm_id"] = body.crm_id
    if body.status in TAKEN and decision.accepted_at is None:
        changes["accepted_at"] = now
        if decision.sla_status == "pending":
            changes["sla_status"] = "met" if now <= decision.sla_due_at else "missed"
            metrics.count_sla(changes["sla_status"], decision.rule)
    await session.execute(update(decisions).where(decisions.c.id == decision.id).values(**changes))


async def record(
    session: AsyncSession,
    policy: CompiledPolicy,
    decision_ref: str,
    body: FeedbackIn,
    *,
    who: str,
    key: str | None,
    now: float,
) -> Recorded:
    """Record ``body`` on the decision ``decision_ref`` names (the caller commits)."""
    check(body, policy)
    decision = await find_decision(session, decision_ref)
    ikey = idempotency_key(decision.id, body, key)
    seen = (
        await session.execute(select(dispositions).where(dispositions.c.idempotency_key == ikey))
    ).first()
    if seen is not None:
        return Recorded(Disposition.of(seen), duplicate=True)
    disposition = Disposition(
        id=new_id("dsp", now),
        decision_id=decision.id,
        lead_id=decision.lead_id,
        status=body.status,
        reason=body.reason,
        note=body.note,
        value=body.value,
        crm_id=body.crm_id,
        created_at=now,
    )
    await session.execute(
        dispositions.insert().values(**asdict(disposition), idempotency_key=ikey, created_by=who)
    )
    await _settle(session, decision, body, now)
    learned = None
    if body.status == "rejected" and body.reason is not None:
        learned = await learn(
            session,
            policy,
            reason=body.reason,
            lead_id=decision.lead_id,
            decision_id=decision.id,
            who=f"feedback:{who}",
            now=now,
        )
    return Recorded(disposition, duplicate=False, learned_policy_version=learned)
