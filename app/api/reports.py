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

import csv
import io
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import PolicyDep, RuntimeDep, SessionDep
from app.auth import ReadKey
from app.clock import iso
from app.db import accounts, decisions, dispositions, events, identities, leads
from app.db.bulk import Bulk
from app.errors import InvalidInput, error_responses
from app.policy.schema import CompiledPolicy

router = APIRouter()

GroupBy = Literal["source", "campaign", "tier"]
DEFAULT_WINDOW = 30 * 86400.0
# A lead is an ICP fit when its fit score reaches this share of the policy's fit_max.
ICP_FIT_SHARE = 0.5
# Statuses after which a decision counts as an opportunity.
OPPORTUNITY = frozenset({"opportunity", "won"})
NONE = "none"
# Accepted bounds for since/until: events before 2000 are refused anyway, and far dates
# would overflow the conversion to timestamps.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


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


def _timestamp(value: datetime | None, name: str) -> float | None:
    if value is None:
        return None
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST <= value < LATEST:
        raise InvalidInput(
            f"{name}: must be between 2000-01-01 and 9000-01-01", field=name, code="out_of_range"
        )
    return value.timestamp()


def window(since: datetime | None, until: datetime | None, now: float) -> tuple[float, float]:
    """``[since, until)`` in seconds; defaults: until now, since 30 days before until."""
    until_ts = _timestamp(until, "until")
    since_ts = _timestamp(since, "since")
    end = until_ts if until_ts is not None else now
    start = since_ts if since_ts is not None else end - DEFAULT_WINDOW
    if end <= start:
        raise InvalidInput(
            f"until: must be after since ({iso(start)})", field="until", code="invalid_window"
        )
    return start, end


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
    routed_hot = exists().where(
        and_(
            decisions.c.lead_id == leads.c.lead_id,
            decisions.c.type == "lead.routed",
            decisions.c.band == top_band,
        )
    )
    cohort = (
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
                leads.c.first_seen_at >= since,
                leads.c.first_seen_at < until,
            )
        )
    ).all()
    routed = (
        await session.execute(
            select(
                decisions.c.id,
                decisions.c.lead_id,
                decisions.c.source,
                decisions.c.campaign,
                decisions.c.tier,
                decisions.c.created_at,
                decisions.c.event_received_at,
                decisions.c.accepted_at,
                decisions.c.disposition,
                decisions.c.sla_status,
                decisions.c.sla_due_at,
            ).where(
                decisions.c.type == "lead.routed",
                decisions.c.created_at >= since,
                decisions.c.created_at < until,
            )
        )
    ).all()
    history: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for r in await session.execute(
        select(dispositions.c.decision_id, dispositions.c.status, dispositions.c.reason)
        .join(decisions, decisions.c.id == dispositions.c.decision_id)
        .where(
            decisions.c.type == "lead.routed",
            decisions.c.created_at >= since,
            decisions.c.created_at < until,
        )
        .order_by(dispositions.c.created_at, dispositions.c.id)
    ):
        history[r.decision_id].append((r.status, r.reason))

    # The attribution of every lead involved: cohort leads, and the leads of decisions.
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

    def key_of(lead_id: str | None, fallback: Any) -> str:
        if group_by == "campaign":
            value = campaign.get(lead_id or "")
            if value is None and lead_id not in source:
                value = fallback.campaign
        elif lead_id in source:
            value = (source if group_by == "source" else tier)[lead_id or ""]
        else:  # a decision whose lead row is gone: what the decision recorded
            value = fallback.source if group_by == "source" else fallback.tier
        return value or NONE

    groups: dict[str, _Acc] = defaultdict(_Acc)
    all_leads: list[LeadFact] = []
    all_decisions: list[DecisionFact] = []
    for r in cohort:
        lf = LeadFact(r.lead_id, r.fit, r.band == top_band or bool(r.routed_hot))
        groups[key_of(r.lead_id, r)].leads.append(lf)
        all_leads.append(lf)
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
        groups[key_of(d.lead_id, d)].decisions.append(df)
        all_decisions.append(df)

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
        totals=summary("total", _Acc(all_leads, all_decisions)),
    )


CSV_COLUMNS = [name for name in SourceGroup.model_fields if name != "rejection_reasons"]


def to_csv(report: SourceReport, reasons: Sequence[str]) -> str:
    """One row per group; each rejection reason a ``reason_<name>`` column."""
    seen = {r for g in report.groups for r in g.rejection_reasons}
    all_reasons = [*reasons, *sorted(seen - set(reasons))]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([*CSV_COLUMNS, *(f"reason_{r}" for r in all_reasons)])
    for g in report.groups:
        values = g.model_dump()
        writer.writerow(
            [
                *("" if values[c] is None else values[c] for c in CSV_COLUMNS),
                *(g.rejection_reasons.get(r, 0) for r in all_reasons),
            ]
        )
    return buf.getvalue()


@router.get(
    "/v1/reports/sources",
    operation_id="getSourceReport",
    summary="Per-source quality scorecard: volume, fit, acceptance, opportunities, wins",
    response_model=SourceReport,
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "JSON, or CSV (one row per group) with format=csv",
        },
        **error_responses(401, 403, 422, 503),
    },
)
async def get_source_report(
    key: ReadKey,
    session: SessionDep,
    runtime: RuntimeDep,
    policy: PolicyDep,
    since: Annotated[
        datetime | None,
        Query(description="ISO 8601; default: 30 days before until. Inclusive."),
    ] = None,
    until: Annotated[
        datetime | None, Query(description="ISO 8601; default: now. Exclusive.")
    ] = None,
    group_by: Annotated[GroupBy, Query(description="source, campaign or tier")] = "source",
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
) -> SourceReport | Response:
    """Leads first seen in the window (volume, ICP fit, hot) and lead.routed decisions made
    in it (acceptance, SLA, opportunities, wins, rejections, times), grouped by the lead's
    first-touch source or campaign or its account's tier. See the README for definitions."""
    now = runtime.clock.now()
    start, end = window(since, until, now)
    report = await build_report(session, policy, since=start, until=end, group_by=group_by, now=now)
    if format == "csv":
        return Response(
            to_csv(report, policy.doc.feedback.rejection_reasons),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="sources-by-{group_by}.csv"'},
        )
    return report
