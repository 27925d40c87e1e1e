"""SLA timers: a routed lead that sales has not accepted in time escalates.

The timer lives in the database, not in memory: a decision whose rule has an SLA is
written with ``sla_status='pending'`` and ``sla_due_at``, so a restart loses no timer.
Every second (and on ``check_now()``) each dispatcher process claims the overdue ones
with one ``UPDATE … WHERE sla_status='pending' … RETURNING`` (the candidates selected
``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so exactly one process escalates each. In
the same transaction it writes a ``lead.sla_missed`` decision for the new assignee and
its outbox deliveries (``lifecycle.enqueue``, as the pipeline writes its own); the
deliveries it claimed go to the dispatcher after the commit. On SQLite that transaction
runs where the pipeline's batches and the dispatcher's records run (``writes``:
``LoopThread.write``), one at a time under the same single-writer lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Row, Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock, iso, new_id
from app.db import Transaction, decisions, dialect_of, loads
from app.delivery.dispatcher import Dispatcher, Writes
from app.delivery.lifecycle import Enqueued, Routed, enqueue
from app.observability import metrics
from app.observability.periodic import Periodic
from app.policy.schema import CompiledPolicy, RoutingRule, Team
from app.routing.assignment import Assignment, Counters, _day

log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0
BATCH = 100  # overdue decisions claimed per transaction

# An escalation walks this chain from the rule's ``escalate_to`` until someone is found.
ESCALATIONS = ("next_rep", "team_lead", "fallback_queue")


def _next_rep(
    spec: Team, team: str, assignee: str | None, counters: Counters, now: float
) -> str | None:
    """The member after ``assignee`` in round-robin order (from the team's cursor when the
    assignee is not a member), skipping the assignee and members at their daily cap."""
    members = spec.members
    if not members:
        return None
    start = members.index(assignee) + 1 if assignee in members else counters.get(f"rr:{team}")
    for i in range(len(members)):
        member = members[(start + i) % len(members)]
        cap_key = f"cap:{team}:{member}:{_day(now)}"
        if member == assignee or (
            spec.daily_cap is not None and counters.get(cap_key) >= spec.daily_cap
        ):
            continue
        counters.set(cap_key, counters.get(cap_key) + 1)
        return member
    return None


def escalate(
    policy: CompiledPolicy,
    *,
    escalate_to: str,
    team: str,
    assignee: str | None,
    counters: Counters,
    now: float,
) -> Assignment:
    """Who takes a lead whose SLA was missed: next_rep → team_lead → fallback_queue,
    starting at ``escalate_to``; the default queue always takes it in the end."""
    queue = policy.doc.routing.default_queue
    spec = policy.doc.teams.get(team)
    for step in ESCALATIONS[ESCALATIONS.index(escalate_to) :]:
        if step == "next_rep" and spec is not None:
            rep = _next_rep(spec, team, assignee, counters, now)
            if rep is not None:
                return Assignment(team, rep, step)
        if step == "team_lead" and spec is not None and spec.lead and spec.lead != assignee:
            return Assignment(team, spec.lead, step)
    return Assignment(queue.team, queue.assignee, "fallback_queue")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def build_sla_missed(
    missed: Any,
    a: Assignment,
    *,
    escalate_to: str,
    policy_version: int,
    now: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(decision row, webhook body) of the ``lead.sla_missed`` decision for ``missed``."""
    decision_id = new_id("dec", now)
    original: dict[str, Any] = loads(missed.payload).get("data") or {}
    accept_within = round(missed.sla_due_at - missed.created_at, 3)
    who = f"{a.assignee}" if a.assignee else "unassigned"
    fell_through = f" ({escalate_to} found nobody)" if a.strategy != escalate_to else ""
    reason = (
        f'SLA missed: decision {missed.id} (rule "{missed.rule}", assigned to '
        f"{missed.assignee or 'nobody'}) was not accepted within {_duration(accept_within)} "
        f"(due {iso(missed.sla_due_at)}); escalated by {a.strategy}{fell_through} "
        f"→ team {a.team}, {who}"
    )
    body = {
        "type": "lead.sla_missed",
        "timestamp": iso(now),
        "data": {
            "decision_id": decision_id,
            "original_decision_id": missed.id,
            "lead": original.get("lead"),
            "account": original.get("account"),
            "score": original.get("score"),
            "rule": missed.rule,
            "team": a.team,
            "assignee": a.assignee,
            "previous_team": missed.team,
            "previous_assignee": missed.assignee,
            "escalation": a.strategy,
            "sla": {"accept_within": accept_within, "due_at": iso(missed.sla_due_at)},
            "reason": reason,
            "policy_version": policy_version,
        },
    }
    row = {
        "id": decision_id,
        "type": "lead.sla_missed",
        "lead_id": missed.lead_id,
        "account_domain": missed.account_domain,
        "rule": missed.rule,
        "team": a.team,
        "assignee": a.assignee,
        "band": missed.band,
        "tier": missed.tier,
        "reason": reason,
        "policy_version": policy_version,
        "trigger_event_id": missed.trigger_event_id,
        # Not an event's arrival: the event→webhook latency histogram leaves it out.
        "event_received_at": None,
        "created_at": now,
        "source": missed.source,
        "campaign": missed.campaign,
        "sla_due_at": None,
        "sla_status": None,
    }
    return row, body


def _overdue(now: float) -> Select[tuple[str]]:
    return (
        select(decisions.c.id)
        .where(
            decisions.c.sla_status == "pending",
            decisions.c.sla_due_at <= now,
            # Sales answered (accepted, or rejected it): nothing to escalate.
            decisions.c.accepted_at.is_(None),
            decisions.c.disposition.is_(None),
        )
        .order_by(decisions.c.sla_due_at)
    )


async def any_overdue(session: AsyncSession, *, now: float) -> bool:
    """A cheap read first, so an idle check never takes SQLite's write lock."""
    return (await session.execute(_overdue(now).limit(1))).first() is not None


async def claim_overdue(session: AsyncSession, *, now: float, limit: int) -> list[Row[Any]]:
    """Mark up to ``limit`` overdue, unaccepted decisions missed; the rows this call won."""
    due = _overdue(now).limit(limit)
    if dialect_of(session) == "postgresql":
        due = due.with_for_update(skip_locked=True)
    rows = await session.execute(
        update(decisions)
        .where(decisions.c.id.in_(due), decisions.c.sla_status == "pending")
        .values(sla_status="missed")
        .returning(*decisions.c)
    )
    return sorted(rows, key=lambda r: (r.sla_due_at, r.id))


async def escalate_missed(
    session: AsyncSession, missed: list[Row[Any]], *, policy: CompiledPolicy, now: float
) -> list[Routed]:
    """Write one ``lead.sla_missed`` decision per missed one, for the outbox."""
    rules: dict[str, RoutingRule] = {r.name: r for r in policy.doc.routing.rules}
    counters = Counters()
    out: list[Routed] = []
    for m in missed:
        rule = rules.get(m.rule)
        # A rule removed (or its SLA dropped) since routing: the default queue takes it.
        escalate_to = rule.sla.escalate_to if rule and rule.sla else "fallback_queue"
        if escalate_to == "next_rep":
            await counters.load(session)
        a = escalate(
            policy,
            escalate_to=escalate_to,
            team=m.team,
            assignee=m.assignee,
            counters=counters,
            now=now,
        )
        row, body = build_sla_missed(
            m, a, escalate_to=escalate_to, policy_version=policy.version, now=now
        )
        payload = orjson.dumps(body)
        row["payload"] = payload.decode()
        out.append(Routed(row, payload, rule.destinations if rule else None))
    if out:
        await session.execute(decisions.insert(), [r.row for r in out])
        await counters.save(session)
    return out


@dataclass
class Escalation:
    """One check's transaction: the decisions it found missed, the ``lead.sla_missed``
    decisions it wrote for them, and their outbox deliveries."""

    missed: list[Row[Any]]
    routed: list[Routed]
    outbox: Enqueued


async def escalate_overdue(
    session: AsyncSession, *, policy: CompiledPolicy, now: float, lease_until: float
) -> Escalation:
    """Claim up to ``BATCH`` overdue decisions, escalate them and enqueue the webhooks."""
    missed = await claim_overdue(session, now=now, limit=BATCH)
    if not missed:
        return Escalation([], [], Enqueued([], set()))
    escalated = await escalate_missed(session, missed, policy=policy, now=now)
    # Destinations read in the transaction, like the pipeline's.
    outbox = await enqueue(session, escalated, None, now=now, lease_until=lease_until)
    return Escalation(missed, escalated, outbox)


class SlaTimer:
    """Escalates overdue decisions every ``interval`` seconds; ``check_now()`` for tests."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        clock: Clock,
        *,
        policy: Callable[[], CompiledPolicy | None],
        dispatcher: Dispatcher,
        writes: Writes | None = None,
        interval: float = CHECK_SECONDS,
    ) -> None:
        self._sessionmaker = sessionmaker
        # Where the write transaction runs: ``LoopThread.write`` on SQLite (the one
        # writer's lock, shared with the pipeline and the dispatcher), else here.
        self._writes: Writes = writes or self._write_here
        self._clock = clock
        self._policy = policy
        self._dispatcher = dispatcher
        self._interval = interval
        self._lock = asyncio.Lock()  # one check at a time in this process
        self._periodic = Periodic(
            self.check_now, every=interval, name="sla_check", what="SLA check"
        )

    async def _write_here(self, txn: Transaction[Any]) -> Any:
        return await txn(self._sessionmaker)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def check_now(self) -> list[dict[str, Any]]:
        """Escalate every decision overdue now; the ``lead.sla_missed`` rows written."""
        written: list[dict[str, Any]] = []
        async with self._lock:
            while True:
                batch = await self._check_batch()
                written += batch
                if len(batch) < BATCH:
                    return written

    async def _check_batch(self) -> list[dict[str, Any]]:
        policy = self._policy()
        if policy is None:
            return []
        now = self._clock.now()
        async with self._sessionmaker() as session:
            if not await any_overdue(session, now=now):
                return []
        lease_until = now + self._dispatcher.lease

        async def escalating(sessionmaker: async_sessionmaker[AsyncSession]) -> Escalation:
            # The claiming UPDATE comes first: on SQLite the transaction starts as a writer.
            async with sessionmaker() as session, session.begin():
                return await escalate_overdue(
                    session, policy=policy, now=now, lease_until=lease_until
                )

        done: Escalation = await self._writes(escalating)
        for m in done.missed:
            metrics.SLA_MISSED.labels(m.rule).inc()
        rows = [r.row for r in done.routed]
        for r in rows:
            metrics.DECISIONS.labels(r["type"], r["rule"], r["team"]).inc()
        if rows:
            log.info(
                "SLA missed: %d decisions escalated",
                len(rows),
                extra={
                    "decision_ids": [r["id"] for r in rows],
                    "missed_ids": [m.id for m in done.missed],
                },
            )
        if done.outbox.claimed or done.outbox.waiting:
            self._dispatcher.submit(done.outbox.claimed, waiting=done.outbox.waiting)
        return rows
