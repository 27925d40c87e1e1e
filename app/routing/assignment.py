"""Who gets the decision: account owner → round robin (daily caps) → fixed → default queue.

Round-robin cursors and per-member daily counts live in ``routing_counters``; they are
loaded once per batch (only when the batch routes something) and written back with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import routing_counters
from app.db.bulk import Bulk
from app.policy.schema import CompiledPolicy, RoutingRule


@dataclass
class Assignment:
    team: str
    assignee: str | None
    strategy: str  # account_owner | round_robin | fixed | default_queue


@dataclass
class Counters:
    values: dict[str, int] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    loaded: bool = False

    async def load(self, session: AsyncSession) -> None:
        if not self.loaded:
            bulk = await Bulk.of(session)
            rows = await bulk.select_all(routing_counters, ("key", "value"))
            self.values = {r[0]: r[1] for r in rows}
            self.loaded = True

    def get(self, key: str) -> int:
        return self.values.get(key, 0)

    def set(self, key: str, value: int) -> None:
        self.values[key] = value
        self.dirty.add(key)

    async def save(self, session: AsyncSession) -> None:
        if self.dirty:
            rows = [(k, self.values[k]) for k in sorted(self.dirty)]
            bulk = await Bulk.of(session)
            await bulk.upsert(routing_counters, ("key", "value"), ("key",), rows)
            self.dirty.clear()


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def _round_robin(policy: CompiledPolicy, team: str, counters: Counters, now: float) -> str | None:
    spec = policy.doc.teams.get(team)
    if spec is None or not spec.members:
        return None
    day = _day(now)
    members = spec.members
    start = counters.get(f"rr:{team}")
    for i in range(len(members)):
        member = members[(start + i) % len(members)]
        cap_key = f"cap:{team}:{member}:{day}"
        if spec.daily_cap is not None and counters.get(cap_key) >= spec.daily_cap:
            continue
        counters.set(f"rr:{team}", (start + i + 1) % len(members))
        counters.set(cap_key, counters.get(cap_key) + 1)
        return member
    return None


def assign(
    policy: CompiledPolicy,
    rule: RoutingRule | None,
    *,
    account_owner: str | None,
    counters: Counters,
    now: float,
) -> Assignment:
    """Walk the strategy chain from the rule's strategy; nobody left → the default queue."""
    queue = policy.doc.routing.default_queue
    if rule is None:
        return Assignment(queue.team, queue.assignee, "default_queue")
    chain = ("account_owner", "round_robin", "fixed")
    for strategy in chain[chain.index(rule.assignment) :]:
        if strategy == "account_owner" and account_owner:
            return Assignment(rule.team, account_owner, strategy)
        if strategy == "round_robin":
            member = _round_robin(policy, rule.team, counters, now)
            if member is not None:
                return Assignment(rule.team, member, strategy)
        if strategy == "fixed":
            team_spec = policy.doc.teams.get(rule.team)
            fixed = rule.assignee or (team_spec.assignee if team_spec else None)
            if fixed:
                return Assignment(rule.team, fixed, strategy)
    # The rule matched but its team has nobody to take the lead: keep the team, and let
    # the default queue's assignee (if any) hold it.
    return Assignment(rule.team, queue.assignee, "default_queue")
