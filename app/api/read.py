"""Read API: leads, accounts and decisions, with scores evaluated at request time."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.decisions import decisions_of
from app.api.deps import PolicyDep, RuntimeDep, SessionDep
from app.api.views import ERRORS as ERRORS  # also for the admin routes' responses
from app.api.views import (
    AccountRef,
    AccountView,
    FitItem,
    LeadList,
    LeadSummary,
    LeadView,
    Score,
    SignalItem,
)
from app.auth import ReadKey
from app.clock import iso
from app.db import identities, leads
from app.errors import InvalidInput, NotFound
from app.events import normalise_domain
from app.policy.schema import CompiledPolicy
from app.scoring.decay import clamp, raw_intent, signal_scores
from app.scoring.engine import evaluate
from app.scoring.state import (
    AccountState,
    LeadState,
    _accs,
    lead_from_row,
    load_account,
)

router = APIRouter()


def _score(
    policy: CompiledPolicy, lead: LeadState, account: AccountState | None, now: float
) -> tuple[Score, Any]:
    ev = evaluate(policy, lead, account, now)
    band = policy.band_for(ev.total, lead.band)
    return Score(
        total=round(ev.total, 4),
        fit=round(ev.fit, 4),
        intent=round(ev.intent, 4),
        band=band,
        evaluated_at=iso(now) or "",
        policy_version=policy.version,
    ), ev


def _signals(scores: dict[str, float]) -> list[SignalItem]:
    return [
        SignalItem(signal=k, score=round(v, 4))
        for k, v in sorted(scores.items(), key=lambda kv: -abs(kv[1]))
    ]


async def _find_lead(session: AsyncSession, lead_id: str) -> LeadState | None:
    key = lead_id.strip()
    key = key.lower() if "@" in key and ":" not in key else key
    target = key
    if key.startswith(("anon:", "user:")):
        mapped = (
            await session.execute(
                select(identities.c.lead_id).where(identities.c.identifier == key)
            )
        ).scalar()
        target = mapped or key
    for _ in range(3):  # follow merges
        row = (await session.execute(select(leads).where(leads.c.lead_id == target))).first()
        if row is None:
            return None
        lead = lead_from_row(row)
        if not lead.merged_into:
            return lead
        target = lead.merged_into
    return None


@router.get(
    "/v1/leads/{lead_id}",
    operation_id="getLead",
    summary="A lead's score now",
    response_model=LeadView,
    responses=ERRORS,
)
async def get_lead(
    lead_id: Annotated[str, Path(description="normalised email, or anon:<anonymous_id>")],
    key: ReadKey,
    session: SessionDep,
    runtime: RuntimeDep,
    policy: PolicyDep,
) -> LeadView:
    """Score evaluated at request time (decay continues between events), with breakdowns."""
    lead = await _find_lead(session, lead_id)
    if lead is None:
        raise NotFound(f'no lead "{lead_id}"', field="lead_id", code="lead_not_found")
    account = await load_account(session, lead.account_domain)
    score, ev = _score(policy, lead, account, runtime.clock.now())
    ids = (
        (
            await session.execute(
                select(identities.c.identifier).where(identities.c.lead_id == lead.lead_id)
            )
        )
        .scalars()
        .all()
    )
    return LeadView(
        lead_id=lead.lead_id,
        email=lead.email,
        anonymous_ids=sorted(i.removeprefix("anon:") for i in ids if i.startswith("anon:")),
        attributes=lead.attributes,
        source=lead.source,
        first_seen_at=iso(lead.first_seen_at),
        last_event_at=iso(lead.last_event_at),
        account=AccountRef(
            domain=account.domain,
            name=account.name,
            tier=account.tier,
            owner=account.owner,
            territory=account.territory,
        )
        if account
        else (AccountRef(domain=lead.account_domain) if lead.account_domain else None),
        score=score,
        fit_breakdown=[FitItem(rule=r, points=p) for r, p in ev.fit_breakdown],
        intent_breakdown=_signals(ev.signals),
        decisions=await decisions_of(session, lead_id=lead.lead_id),
    )


@router.get(
    "/v1/leads",
    operation_id="listLeads",
    summary="Leads, optionally by current band",
    response_model=LeadList,
    responses=ERRORS,
)
async def list_leads(
    key: ReadKey,
    session: SessionDep,
    runtime: RuntimeDep,
    policy: PolicyDep,
    band: Annotated[str | None, Query(description="hot, warm, cool or cold")] = None,
    account: Annotated[str | None, Query(description="account domain")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> LeadList:
    """Bands are evaluated now; decay can only lower a stored band, so the stored band at
    or above the requested one bounds the scan."""
    if band is not None and band not in policy.band_rank:
        raise InvalidInput(
            f'band: unknown band "{band}" (use {", ".join(policy.band_rank)})',
            field="band",
            code="unknown_band",
        )
    now = runtime.clock.now()
    q = select(leads).where(leads.c.merged_into.is_(None)).order_by(leads.c.lead_id)
    if band is not None:
        rank = policy.band_rank[band]
        q = q.where(leads.c.band.in_([b for b, r in policy.band_rank.items() if r >= rank]))
    if account:
        q = q.where(leads.c.account_domain == account.lower())
    if cursor:
        q = q.where(leads.c.lead_id > cursor)
    out: list[LeadSummary] = []
    next_cursor = None
    accts: dict[str, AccountState | None] = {}
    scanned = 0
    for r in (await session.execute(q.limit(limit * 5))).all():
        scanned += 1
        lead = lead_from_row(r)
        d = lead.account_domain
        if d and d not in accts:
            accts[d] = await load_account(session, d)
        score, _ = _score(policy, lead, accts.get(d) if d else None, now)
        next_cursor = lead.lead_id
        if band is None or score.band == band:
            out.append(
                LeadSummary(lead_id=lead.lead_id, email=lead.email, account_domain=d, score=score)
            )
            if len(out) >= limit:
                break
    if len(out) < limit and scanned < limit * 5:
        next_cursor = None
    return LeadList(leads=out, next_cursor=next_cursor)


@router.get(
    "/v1/accounts/{domain}",
    operation_id="getAccount",
    summary="An account's intent, fit, tier, leads and decisions",
    response_model=AccountView,
    responses=ERRORS,
)
async def get_account(
    domain: str, key: ReadKey, session: SessionDep, runtime: RuntimeDep, policy: PolicyDep
) -> AccountView:
    try:
        domain = normalise_domain(domain)
    except ValueError as exc:
        raise InvalidInput(f"domain: {exc}", field="domain") from None
    acct = await load_account(session, domain)
    if acct is None:
        raise NotFound(f'no account "{domain}"', field="domain", code="account_not_found")
    now = runtime.clock.now()
    scores = signal_scores(acct.signals, now, policy.signals)
    fit, breakdown = policy.fit({"lead": {}, "account": acct.context()})
    rows = (
        await session.execute(
            select(leads)
            .where(leads.c.account_domain == domain, leads.c.merged_into.is_(None))
            .order_by(leads.c.last_event_at.desc())
            .limit(50)
        )
    ).all()
    summaries = []
    for r in rows:
        lead = lead_from_row(r)
        score, _ = _score(policy, lead, acct, now)
        summaries.append(
            LeadSummary(lead_id=lead.lead_id, email=lead.email, account_domain=domain, score=score)
        )
    summaries.sort(key=lambda s: -s.score.total)
    # Active leads now (the stored count is as of the account's last event).
    surge = policy.doc.routing.surge
    recent = await session.execute(
        select(leads.c.signals, leads.c.last_event_at).where(
            leads.c.account_domain == domain,
            leads.c.merged_into.is_(None),
            leads.c.last_event_at >= now - surge.window,
        )
    )
    active_now = sum(
        1
        for r in recent
        if raw_intent(_accs(r.signals), now, policy.signals) >= surge.active_lead_intent
    )
    return AccountView(
        domain=acct.domain,
        name=acct.name,
        tier=acct.tier,
        owner=acct.owner,
        territory=acct.territory,
        industry=acct.industry,
        employees=acct.employees,
        country=acct.country,
        annual_revenue=acct.annual_revenue,
        attributes=acct.attributes,
        intent=round(clamp(sum(scores.values()), 0.0, float("inf")), 4),
        intent_breakdown=_signals(scores),
        fit=fit,
        fit_breakdown=[FitItem(rule=r, points=p) for r, p in breakdown],
        active_leads=active_now,
        leads=summaries,
        decisions=await decisions_of(session, domain=domain),
        evaluated_at=iso(now) or "",
        policy_version=policy.version,
    )
