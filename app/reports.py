"""The per-source quality scorecard: volume next to what sales did with it.

Two populations share one window ``[since, until)``:

- the **lead cohort**: leads first seen in the window (``leads.first_seen_at``, the event
  time of their first event; leads merged into another are counted in that one). It gives
  volume, ICP-fit rate and hot rate.
- the **routed decisions**: ``lead.routed`` decisions created in the window, whoever their
  lead is. They give routed, acceptance, SLA, opportunity, win rate, rejection reasons and
  the two medians.

Both are grouped by one attribution of the lead, so a row's funnel speaks of one set of
people: its first-touch ``source`` (the source of its earliest event), its first-touch
``campaign`` (the ``campaign`` of its earliest event that names one) or the ABM ``tier``
of its account now. A lead without one is in the group ``none``.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import iso
from app.db import accounts, decisions, dispositions, events, identities, leads
from app.db.bulk import Bulk
from app.policy.schema import CompiledPolicy

GroupBy = Literal["source", "campaign", "tier"]
# A lead is an ICP fit when its fit score reaches this share of the policy's fit_max.
ICP_FIT_SHARE = 0.5
# Statuses after which a decision counts as an opportunity.
OPPORTUNITY = frozenset({"opportunity", "won"})
NONE = "none"


class SourceGroup(BaseModel):
    """The scorecard of one group (or the totals). Rates are null when nothing to divide."""

    group: str = Field(description='the source, campaign or tier; "none" when the lead has none')
    leads: int = Field(description="leads first seen in the window")
    icp_fit: int = Field(description="of those, leads whose fit ≥ fit_threshold")
    icp_fit_rate: float | None = Field(description="icp_fit / leads")
    hot: int = Field(description="of those, leads that reached the top band")
    hot_rate: float | None = Field(description="hot / leads")
    routed: int = Field(description="distinct leads with a lead.routed decision in the window")
    routed_decisions: int = Field(description="lead.routed decisions in the window")
    dispositioned: int = Field(description="routed decisions with any feedback")
    accepted: int = Field(description="routed decisions sales accepted (or went beyond)")
    acceptance_rate: float | None = Field(description="accepted / dispositioned")
    rejected: int = Field(description="routed decisions whose latest feedback is a rejection")
    rejection_reasons: dict[str, int] = Field(description="rejected decisions per reason")
    sla_met: int = Field(description="decisions with an SLA, accepted in time")
    sla_missed: int = Field(description="decisions with an SLA, not accepted in time")
    sla_open: int = Field(description="decisions with an SLA, not accepted, not yet due")
    sla_rate: float | None = Field(description="sla_met / (sla_met + sla_missed)")
    opportunities: int = Field(description="routed decisions that became an opportunity or won")
    opportunity_rate: float | None = Field(description="opportunities / routed_decisions")
    won: int = Field(description="routed decisions whose latest feedback is won")
    lost: int = Field(description="routed decisions whose latest feedback is lost")
    win_rate: float | None = Field(description="won / (won + lost)")
    median_event_to_routed_seconds: float | None = Field(
        description="median of decision time − receipt of the event that triggered it"
    )
    median_routed_to_accepted_seconds: float | None = Field(
        description="median of first acceptance − decision time, over accepted decisions"
    )


class SourceReport(BaseModel):
    since: str
    until: str
    group_by: GroupBy
    generated_at: str
    policy_version: int
    fit_threshold: float = Field(description="ICP fit: a lead's fit score at or above this")
    top_band: str = Field(description="the band the hot rate counts")
    groups: list[SourceGroup]
    totals: SourceGroup


@dataclass(frozen=True)
class LeadFact:
    lead_id: str
    fit: float
    hot: bool


@dataclass(frozen=True)
class DecisionFact:
    lead_id: str | None
    created_at: float
    event_received_at: float | None
    accepted_at: float | None
    disposition: str | None
    sla_status: str | None
    sla_due_at: float | None
    history: tuple[tuple[str, str | None], ...]  # (status, reason), oldest first


@dataclass
class _Acc:
    leads: list[LeadFact] = field(default_factory=list)
    decisions: list[DecisionFact] = field(default_factory=list)


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarise(
    group: str,
    lead_facts: Sequence[LeadFact],
    decision_facts: Sequence[DecisionFact],
    *,
    fit_threshold: float,
    now: float,
) -> SourceGroup:
    """The figures of one group, from its cohort leads and its routed decisions."""
    icp = sum(1 for lf in lead_facts if lf.fit >= fit_threshold)
    hot = sum(1 for lf in lead_facts if lf.hot)
    dispositioned = [d for d in decision_facts if d.history]
    accepted = [d for d in decision_facts if d.accepted_at is not None]
    rejected = [d for d in decision_facts if d.disposition == "rejected"]
    reasons: Counter[str] = Counter()
    for d in rejected:
        last = [reason for status, reason in d.history if status == "rejected"]
        reasons[(last[-1] if last else None) or "other"] += 1
    met = missed = open_ = 0
    for d in decision_facts:
        if d.sla_status == "met":
            met += 1
        elif d.sla_status == "missed":
            missed += 1
        elif d.sla_status == "pending":
            # Overdue and not yet marked by the SLA timer: missed all the same.
            if d.sla_due_at is not None and d.sla_due_at < now:
                missed += 1
            else:
                open_ += 1
    opportunities = sum(1 for d in decision_facts if any(s in OPPORTUNITY for s, _ in d.history))
    won = sum(1 for d in decision_facts if d.disposition == "won")
    lost = sum(1 for d in decision_facts if d.disposition == "lost")
    return SourceGroup(
        group=group,
        leads=len(lead_facts),
        icp_fit=icp,
        icp_fit_rate=_rate(icp, len(lead_facts)),
        hot=hot,
        hot_rate=_rate(hot, len(lead_facts)),
        routed=len({d.lead_id for d in decision_facts}),
        routed_decisions=len(decision_facts),
        dispositioned=len(dispositioned),
        accepted=len(accepted),
        acceptance_rate=_rate(len(accepted), len(dispositioned)),
        rejected=len(rejected),
        rejection_reasons=dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        sla_met=met,
        sla_missed=missed,
        sla_open=open_,
        sla_rate=_rate(met, met + missed),
        opportunities=opportunities,
        opportunity_rate=_rate(opportunities, len(decision_facts)),
        won=won,
        lost=lost,
        win_rate=_rate(won, won + lost),
        median_event_to_routed_seconds=_median(
            [
                d.created_at - d.event_received_at
                for d in decision_facts
                if d.event_received_at is not None
            ]
        ),
        median_routed_to_accepted_seconds=_median(
            [d.accepted_at - d.created_at for d in accepted if d.accepted_at is not None]
        ),
    )


async def _campaigns(session: AsyncSession, lead_ids: Iterable[str]) -> dict[str, str]:
    """Each lead's first-touch campaign: that of its earliest event that names one."""
    bulk = await Bulk.of(session)
    wanted = sorted(set(lead_ids))
    owner = {lid: lid for lid in wanted}  # an event's lead_id is an identifier of the lead
    for identifier, lead_id in await bulk.select_in(
        identities, ("identifier", "lead_id"), "lead_id", wanted
    ):
        owner[identifier] = lead_id
    first: dict[str, tuple[float, float, str, str]] = {}
    rows = await bulk.select_in(
        events,
        ("lead_id", "occurred_at", "received_at", "event_id", "payload"),
        "lead_id",
        sorted(owner),
    )
    for key, occurred_at, received_at, event_id, payload in rows:
        if "campaign" not in payload:
            continue
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        campaign = doc.get("campaign") if isinstance(doc, dict) else None
        if not isinstance(campaign, str) or not campaign:
            continue
        lead_id = owner[key]
        rank = (occurred_at, received_at, event_id, campaign)
        if lead_id not in first or rank < first[lead_id]:
            first[lead_id] = rank
    return {lead_id: rank[3] for lead_id, rank in first.items()}


@dataclass(frozen=True)
class _Window:
    since: float
    until: float

    def routed(self) -> Any:
        """The ``lead.routed`` decisions made in the window."""
        return and_(
            decisions.c.type == "lead.routed",
            decisions.c.created_at >= self.since,
            decisions.c.created_at < self.until,
        )


async def _cohort(session: AsyncSession, w: _Window, top_band: str) -> Sequence[Any]:
    """Leads first seen in the window (not merged away), with tier and whether routed hot."""
    routed_hot = exists().where(
        and_(
            decisions.c.lead_id == leads.c.lead_id,
            decisions.c.type == "lead.routed",
            decisions.c.band == top_band,
        )
    )
    return (
        await session.execute(
            select(
                leads.c.lead_id,
                leads.c.source,
                leads.c.fit,
                leads.c.band,
                accounts.c.tier,
                routed_hot.label("routed_hot"),
            )
            .select_from(leads.outerjoin(accounts, accounts.c.domain == leads.c.account_domain))
            .where(
                leads.c.merged_into.is_(None),
                leads.c.first_seen_at >= w.since,
                leads.c.first_seen_at < w.until,
            )
        )
    ).all()


async def _routed(session: AsyncSession, w: _Window) -> Sequence[Any]:
    c = decisions.c
    return (
        await session.execute(
            select(
                c.id,
                c.lead_id,
                c.source,
                c.campaign,
                c.tier,
                c.created_at,
                c.event_received_at,
                c.accepted_at,
                c.disposition,
                c.sla_status,
                c.sla_due_at,
            ).where(w.routed())
        )
    ).all()


async def _histories(session: AsyncSession, w: _Window) -> dict[str, list[tuple[str, str | None]]]:
    """Each routed decision's feedback (status, reason), oldest first."""
    history: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for r in await session.execute(
        select(dispositions.c.decision_id, dispositions.c.status, dispositions.c.reason)
        .join(decisions, decisions.c.id == dispositions.c.decision_id)
        .where(w.routed())
        .order_by(dispositions.c.created_at, dispositions.c.id)
    ):
        history[r.decision_id].append((r.status, r.reason))
    return history


@dataclass
class _Attribution:
    """Which group a lead is in: its first-touch source or campaign, or its tier now."""

    group_by: GroupBy
    source: dict[str, str | None]
    tier: dict[str, str | None]
    campaign: dict[str, str]

    def group(self, lead_id: str | None, fallback: Any) -> str:
        """``fallback``: the row (cohort lead or decision) for a lead we know nothing of."""
        if self.group_by == "campaign":
            value = self.campaign.get(lead_id or "")
            if value is None and lead_id not in self.source:
                value = fallback.campaign
        elif lead_id in self.source:
            value = (self.source if self.group_by == "source" else self.tier)[lead_id or ""]
        else:  # a decision whose lead row is gone: what the decision recorded
            value = fallback.source if self.group_by == "source" else fallback.tier
        return value or NONE


async def _attribution(
    session: AsyncSession, cohort: Sequence[Any], routed: Sequence[Any], group_by: GroupBy
) -> _Attribution:
    """The attribution of every lead involved: cohort leads, and the leads of decisions."""
    source: dict[str, str | None] = {r.lead_id: r.source for r in cohort}
    tier: dict[str, str | None] = {r.lead_id: r.tier for r in cohort}
    others = sorted({d.lead_id for d in routed if d.lead_id and d.lead_id not in source})
    if others:
        bulk = await Bulk.of(session)
        rows = await bulk.select_in(
            leads, ("lead_id", "source", "account_domain"), "lead_id", others
        )
        domains = sorted({r[2] for r in rows if r[2]})
        tiers: dict[str, str | None] = {
            r[0]: r[1]
            for r in await bulk.select_in(accounts, ("domain", "tier"), "domain", domains)
        }
        for lead_id, src, domain in rows:
            source[lead_id] = src
            tier[lead_id] = tiers.get(domain) if domain else None
    campaign: dict[str, str] = {}
    if group_by == "campaign":
        campaign = await _campaigns(session, [*source, *others])
    return _Attribution(group_by, source, tier, campaign)


async def build_report(
    session: AsyncSession,
    policy: CompiledPolicy,
    *,
    since: float,
    until: float,
    group_by: GroupBy,
    now: float,
) -> SourceReport:
    """The scorecard for ``[since, until)``; call inside one read transaction."""
    top_band = policy.bands[0].name
    fit_threshold = ICP_FIT_SHARE * policy.fit_max
    w = _Window(since, until)
    cohort = await _cohort(session, w, top_band)
    routed = await _routed(session, w)
    history = await _histories(session, w)
    attribution = await _attribution(session, cohort, routed, group_by)

    groups: dict[str, _Acc] = defaultdict(_Acc)
    total = _Acc()
    for r in cohort:
        lf = LeadFact(r.lead_id, r.fit, r.band == top_band or bool(r.routed_hot))
        groups[attribution.group(r.lead_id, r)].leads.append(lf)
        total.leads.append(lf)
    for d in routed:
        df = DecisionFact(
            lead_id=d.lead_id,
            created_at=d.created_at,
            event_received_at=d.event_received_at,
            accepted_at=d.accepted_at,
            disposition=d.disposition,
            sla_status=d.sla_status,
            sla_due_at=d.sla_due_at,
            history=tuple(history.get(d.id, ())),
        )
        groups[attribution.group(d.lead_id, d)].decisions.append(df)
        total.decisions.append(df)

    def summary(name: str, acc: _Acc) -> SourceGroup:
        return summarise(name, acc.leads, acc.decisions, fit_threshold=fit_threshold, now=now)

    out = [summary(name, acc) for name, acc in groups.items()]
    out.sort(key=lambda g: (-g.leads, -g.routed_decisions, g.group))
    return SourceReport(
        since=iso(since) or "",
        until=iso(until) or "",
        group_by=group_by,
        generated_at=iso(now) or "",
        policy_version=policy.version,
        fit_threshold=fit_threshold,
        top_band=top_band,
        groups=out,
        totals=summary("total", total),
    )
