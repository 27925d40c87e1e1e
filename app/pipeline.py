"""The event path, one batch at a time, in one transaction:

ingest (dedupe) → load (the batch's leads, accounts, identities) → identify (resolve,
stitch, attach to accounts) → score (signals, fit, band) → surge (accounts) → route
(rules, cooldown, assignment, decisions) → outbox (deliveries) → save (state back).

Each stage's timer (``intent_pipeline_stage_seconds{stage}``) times exactly that stage.

The caller opens the transaction and commits it; only then are HTTP 202s answered,
Kafka offsets committed and the claimed deliveries handed to the dispatcher.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import batches, decisions, events
from app.db.bulk import Bulk
from app.delivery.destinations import Destination
from app.delivery.lifecycle import NewDelivery, Routed, enqueue
from app.events import Candidate, Event, EventStatus
from app.matching.identity import BatchState
from app.observability import metrics
from app.policy.schema import CompiledPolicy
from app.routing.assignment import Counters, assign
from app.routing.decisions import build
from app.routing.rules import cooldown_verdict, trace_rules
from app.routing.surge import surge_candidates
from app.scoring.engine import score
from app.scoring.state import AccountState, LeadState

EVENT_COLUMNS = (
    "event_id",
    "received_at",
    "occurred_at",
    "type",
    "source",
    "transport",
    "lead_id",
    "account_domain",
    "policy_version",
    "payload",
    "batch_id",
    "batch_pos",
)
EVENT_TYPES = (
    *("text", "float8", "float8", "text", "text", "text", "text", "text", "int4", "text"),
    *("int8", "int4"),
)


@dataclass
class BatchResult:
    statuses: list[EventStatus]
    batch_id: int | None = None  # the recorded batch; None when nothing was fresh
    deliveries: list[NewDelivery] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    suppressed: int = 0
    # Lanes with a delivery waiting behind an earlier one (the dispatcher's poller sends it).
    waiting: set[tuple[str, str]] = field(default_factory=set)


class _StageTimer:
    """Observes the time since the previous lap into the per-stage histogram."""

    def __init__(self) -> None:
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        t = time.perf_counter()
        metrics.STAGE_SECONDS.labels(stage).observe(t - self._t)
        self._t = t

    def observe(self, stage: str, seconds: float) -> None:
        """A stage timed piecewise (interleaved with another), as its total."""
        metrics.STAGE_SECONDS.labels(stage).observe(seconds)

    def restart(self) -> None:
        self._t = time.perf_counter()


async def process(
    session: AsyncSession,
    batch: list[Event],
    *,
    policy: CompiledPolicy,
    destinations: dict[str, Destination] | None = None,
    now: float,
    lease_until: float | None,
    drop: Callable[[Event], bool] | None = None,
) -> BatchResult:
    """Apply a batch of validated events; statuses come back in the batch's order.

    ``drop``: events of erased, suppressed people (``app.privacy``), answered as
    accepted and neither stored nor identified."""
    timer = _StageTimer()
    statuses, fresh, batch_id = await _ingest(session, batch, policy, now, drop)
    timer.lap("ingest")
    if not fresh:
        return BatchResult(statuses)

    state = BatchState(policy=policy, now=now, batch_id=batch_id)
    await state.load(session, fresh)
    timer.lap("load")
    candidates = _identify_and_score(state, fresh, timer)
    candidates += await surge_candidates(session, state, set(state.account_trigger))
    timer.lap("surge")

    routed, suppressed = await _route(session, state, candidates)
    timer.lap("route")
    outbox = await enqueue(session, routed, destinations, now=now, lease_until=lease_until)
    timer.lap("outbox")
    await state.save(session)
    timer.lap("save")
    return BatchResult(
        statuses, batch_id, outbox.claimed, [r.row for r in routed], suppressed, outbox.waiting
    )


def _identify_and_score(
    state: BatchState, fresh: list[Event], timer: _StageTimer
) -> list[Candidate]:
    """Identify, then score, each event in order: the next event's stitching may merge the
    lead this one scored. Each stage's time is summed over the batch."""
    policy, now = state.policy, state.now
    candidates: list[Candidate] = []
    identify_s = score_s = 0.0
    clock = time.perf_counter
    for ev in fresh:
        t0 = clock()
        who = state.identify(ev)
        t1 = clock()
        candidate = score(
            policy, ev, who.lead, who.account, attrs_changed=who.attrs_changed, now=now
        )
        score_s += clock() - t1
        identify_s += t1 - t0
        if candidate is not None:
            candidates.append(candidate)
    timer.observe("identify", identify_s)
    timer.observe("score", score_s)
    timer.restart()
    return candidates


async def _ingest(
    session: AsyncSession,
    batch: list[Event],
    policy: CompiledPolicy,
    now: float,
    drop: Callable[[Event], bool] | None = None,
) -> tuple[list[EventStatus], list[Event], int | None]:
    """Keep only never-seen event ids (the adapters checked the events against the policy)
    of people not suppressed, stored with the batch they came in (recorded in ``batches``
    with its clock and policy version: what a replay runs again)."""
    statuses: list[EventStatus] = []
    candidates: list[Event] = []
    seen: set[str] = set()
    for ev in batch:
        if ev.event_id in seen:
            statuses.append(EventStatus(ev.event_id, "duplicate"))
        elif drop is not None and drop(ev):
            seen.add(ev.event_id)
            statuses.append(EventStatus(ev.event_id, "accepted"))
        else:
            seen.add(ev.event_id)
            candidates.append(ev)
            statuses.append(EventStatus(ev.event_id, "accepted"))
    if not candidates:
        return statuses, [], None
    batch_id = await _record_batch(session, now, policy.version)
    rows = [
        (
            ev.event_id,
            ev.received_at,
            ev.occurred_at,
            ev.type,
            ev.source,
            ev.transport,
            ev.identifiers()[0],
            ev.account_domain,
            policy.version,
            ev.payload(),
            batch_id,
            pos,
        )
        for pos, ev in enumerate(candidates)
    ]
    bulk = await Bulk.of(session)
    inserted = await bulk.insert_new(events, EVENT_COLUMNS, "event_id", EVENT_TYPES, rows)
    if len(inserted) != len(candidates):
        for st in statuses:
            if st.status == "accepted" and st.event_id not in inserted:
                st.status = "duplicate"
    if not inserted:
        await session.execute(delete(batches).where(batches.c.id == batch_id))
        return statuses, [], None
    return statuses, [ev for ev in candidates if ev.event_id in inserted], batch_id


async def _record_batch(session: AsyncSession, now: float, version: int) -> int:
    result = await session.execute(
        insert(batches).values(at=now, policy_version=version).returning(batches.c.id)
    )
    return int(result.scalar_one())


async def _route(
    session: AsyncSession, state: BatchState, candidates: list[Candidate]
) -> tuple[list[Routed], int]:
    """Rules → cooldown/escalation → assignment → decision rows, in candidate order."""
    policy, now = state.policy, state.now
    counters = Counters()
    routed: list[Routed] = []
    suppressed = 0
    for c in candidates:
        # The rules evaluated before the winner, each with the condition it failed (why not).
        compiled, rules_evaluated = trace_rules(
            policy, kind=c.kind, band=c.band, tier=c.tier, active_leads=c.active_leads, ctx=c.ctx
        )
        if compiled is None and not (c.kind == "lead" and c.band in policy.route_bands):
            continue
        holder: LeadState | AccountState = (
            state.leads[c.lead_id] if c.lead_id else state.accounts[c.account_domain or ""]
        )
        allowed, escalation = cooldown_verdict(
            policy,
            now=now,
            last_at=holder.last_decision_at,
            last_band=holder.last_decision_band if isinstance(holder, LeadState) else None,
            last_tier=holder.last_decision_tier,
            band=c.band,
            tier=c.tier,
        )
        if not allowed:
            suppressed += 1
            continue
        await counters.load(session)
        rule = compiled.rule if compiled else None
        a = assign(policy, rule, account_owner=c.account_owner, counters=counters, now=now)
        row, body = build(
            c,
            rule=rule.name if rule else None,
            team=a.team,
            assignee=a.assignee,
            strategy=a.strategy,
            escalation=escalation,
            policy_version=policy.version,
            now=now,
            rules_evaluated=rules_evaluated,
        )
        payload = orjson.dumps(body)
        row["payload"] = payload.decode()
        row["source"] = holder.source if isinstance(holder, LeadState) else None
        row["campaign"] = c.ctx.get("event", {}).get("campaign")
        sla = rule.sla if rule is not None else None
        row["sla_due_at"] = now + sla.accept_within if sla else None
        row["sla_status"] = "pending" if sla else None
        routed.append(Routed(row, payload, rule.destinations if rule else None))
        holder.last_decision_at = now
        holder.last_decision_tier = c.tier
        if isinstance(holder, LeadState):
            holder.last_decision_band = c.band
        holder.dirty = True
    if routed:
        for pos, r in enumerate(routed):
            r.row["batch_id"], r.row["batch_pos"] = state.batch_id, pos
        await (await Bulk.of(session)).insert_rows(decisions, [r.row for r in routed])
        await counters.save(session)
    return routed, suppressed
