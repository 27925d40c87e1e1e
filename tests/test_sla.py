"""SLA timers (issue 6): an unaccepted hot lead escalates on time, by the rule, over a real
signed webhook, and the timer survives a restart (it lives in the database)."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from app.clock import FakeClock
from app.config import Settings
from app.db import decisions
from app.routing.sla import SlaTimer
from tests.support.harness import Receiver, Service, service
from tests.support.scenarios import feedback, routed, setup_crm

MINUTE = 60.0
OWNER = "jo@ours.example"  # acme.com's account owner: who hot_tier_1 assigns
TEAM_LEAD = "lee@ours.example"
TRIAGE = "triage@ours.example"


@pytest.fixture
def clock() -> FakeClock:
    # Start in the past, so that once the test moves past the deadline the clock (and the
    # webhook-timestamp it signs) is near real time again: the reference verifier checks it.
    return FakeClock(time.time() - 6 * MINUTE)


async def sla_policy(svc: Service, escalate_to: str, *, daily_cap: int | None = None) -> None:
    """hot_tier_1 must be accepted within 5 minutes, else it escalates to ``escalate_to``."""
    policy = copy.deepcopy((await svc.client.get("/v1/policy")).json()["policy"])
    for rule in policy["routing"]["rules"]:
        if rule["name"] == "hot_tier_1":
            rule["sla"] = {"accept_within": "5m", "escalate_to": escalate_to}
    policy["teams"]["strategic"] = {
        "members": ["amy@ours.example", OWNER, "kim@ours.example"],
        "lead": TEAM_LEAD,
        **({"daily_cap": daily_cap} if daily_cap else {}),
    }
    policy["routing"]["default_queue"] = {"team": "queue", "assignee": TRIAGE}
    r = await svc.client.put("/v1/policy", json=policy)
    assert r.status_code == 200, r.text


def timer(svc: Service) -> SlaTimer:
    assert svc.runtime.sla is not None, "the dispatcher role runs the SLA timer"
    return svc.runtime.sla


def sla_missed(hook: Receiver) -> list[dict[str, Any]]:
    return [r.json() for r in hook.requests if r.json()["type"] == "lead.sla_missed"]


async def escalations(svc: Service) -> list[Any]:
    async with svc.runtime.sessionmaker() as session:
        rows = await session.execute(select(decisions).where(decisions.c.type == "lead.sla_missed"))
        return list(rows)


def counted(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"rule": "hot_tier_1"}) or 0.0


async def test_sla_escalation_fires_on_time_with_a_signed_webhook(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    dest = await setup_crm(svc, hook)
    await sla_policy(svc, "next_rep")
    missed_before = counted("intent_sla_missed_total")
    original = await routed(svc, hook, clock, "dana@acme.com")
    await hook.wait_for(1)  # the lead.routed webhook

    clock.advance(4 * MINUTE + 59)
    assert await timer(svc).check_now() == []
    await asyncio.sleep(0.3)
    assert sla_missed(hook) == []
    view = (await svc.client.get(f"/v1/decisions/{original}")).json()
    assert view["sla"]["status"] == "pending"

    clock.advance(2)  # +5m01s
    await timer(svc).check_now()  # the background check may have fired first: same outcome
    [got] = [r for r in await hook.wait_for(2) if r.json()["type"] == "lead.sla_missed"]
    payload = Webhook(dest["secret"]).verify(got.body, got.headers)
    data = payload["data"]
    assert got.headers["webhook-id"] == data["decision_id"]
    assert data["original_decision_id"] == original
    assert (data["team"], data["assignee"], data["previous_assignee"]) == (
        "strategic",
        "kim@ours.example",  # the member after the owner in round-robin order
        OWNER,
    )
    assert data["rule"] == "hot_tier_1" and data["lead"]["email"] == "dana@acme.com"
    assert data["account"]["domain"] == "acme.com"
    assert data["sla"]["accept_within"] == 300
    assert original in data["reason"] and "5m" in data["reason"]

    view = (await svc.client.get(f"/v1/decisions/{original}")).json()
    assert view["sla"]["status"] == "missed"
    new = (await svc.client.get(f"/v1/decisions/{data['decision_id']}")).json()
    assert new["type"] == "lead.sla_missed" and new["assignee"] == "kim@ours.example"
    assert new["payload"] == payload and new["reason"] == data["reason"]
    assert counted("intent_sla_missed_total") == missed_before + 1

    # Checked again (and again later): it fired once.
    clock.advance(MINUTE)
    assert await timer(svc).check_now() == []
    assert len(await escalations(svc)) == 1
    # Accepting late settles nothing more: the SLA stays missed.
    await feedback(svc, original, {"status": "accepted"})
    view = (await svc.client.get(f"/v1/decisions/{original}")).json()
    assert view["sla"]["status"] == "missed"


async def test_accepted_before_the_deadline_never_fires(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    await setup_crm(svc, hook)
    await sla_policy(svc, "team_lead")
    met_before = counted("intent_sla_met_total")
    decision_id = await routed(svc, hook, clock, "dana@acme.com")
    clock.advance(4 * MINUTE)
    r = await feedback(svc, decision_id, {"status": "accepted"})
    assert r.status_code == 201, r.text
    clock.advance(10 * MINUTE)
    assert await timer(svc).check_now() == []
    await asyncio.sleep(0.3)
    assert sla_missed(hook) == [] and await escalations(svc) == []
    view = (await svc.client.get(f"/v1/decisions/{decision_id}")).json()
    assert view["sla"]["status"] == "met"
    assert counted("intent_sla_met_total") == met_before + 1


async def test_each_escalation_target_gets_the_right_assignee(
    settings: Settings, hook: Receiver
) -> None:
    # Midday, so that daily caps do not reset halfway through the test.
    t = time.time()
    clock = FakeClock(t - t % 86400 - 12 * 3600)
    async with service(settings, clock) as svc:
        await each_target(svc, hook, clock)


async def each_target(svc: Service, hook: Receiver, clock: FakeClock) -> None:
    await setup_crm(svc, hook)
    cases = [
        ("team_lead", "lee@acme.com", ("strategic", TEAM_LEAD)),
        ("fallback_queue", "fay@acme.com", ("queue", TRIAGE)),
    ]
    for escalate_to, email, expected in cases:
        await sla_policy(svc, escalate_to)
        decision_id = await routed(svc, hook, clock, email)
        clock.advance(5 * MINUTE + 1)
        [row] = await timer(svc).check_now()
        assert row["lead_id"] == email
        assert (row["team"], row["assignee"]) == expected, escalate_to
        assert decision_id in row["reason"] and escalate_to in row["reason"]

    # next_rep respects the daily cap: two leads miss together; the rep after the owner
    # (kim) takes one, the cap sends the other on to amy, and never back to the owner.
    await sla_policy(svc, "next_rep", daily_cap=1)
    for n in ("nia", "ned"):
        await routed(svc, hook, clock, f"{n}@acme.com")
    clock.advance(5 * MINUTE + 1)
    rows = await timer(svc).check_now()
    assert sorted(r["assignee"] for r in rows) == ["amy@ours.example", "kim@ours.example"]
    # Nobody left under the cap: next_rep falls through to the team lead.
    await routed(svc, hook, clock, "nat@acme.com")
    clock.advance(5 * MINUTE + 1)
    [row] = await timer(svc).check_now()
    assert (row["assignee"], "next_rep found nobody" in row["reason"]) == (TEAM_LEAD, True)

    def delivered() -> set[tuple[str, str]]:
        return {(p["data"]["lead"]["email"], p["data"]["assignee"]) for p in sla_missed(hook)}

    await hook.wait_for(10)  # 5 routed + 5 escalated
    assert ("lee@acme.com", TEAM_LEAD) in delivered() and ("fay@acme.com", TRIAGE) in delivered()


async def test_the_timer_survives_a_restart_and_fires_once(
    settings: Settings, hook: Receiver, clock: FakeClock
) -> None:
    async with service(settings, clock) as svc:
        key = svc.admin_key
        await setup_crm(svc, hook)
        await sla_policy(svc, "team_lead")
        original = await routed(svc, hook, clock, "dana@acme.com")
        await hook.wait_for(1)
        clock.advance(4 * MINUTE)
        assert await timer(svc).check_now() == []
    # Down over the deadline: nothing in memory could have fired it.
    clock.advance(2 * MINUTE)
    assert sla_missed(hook) == []

    async with service(settings, clock, key=key) as svc:
        # The new process's timer finds the overdue decision on its own (no poke).
        await hook.wait_for(2)
        [payload] = sla_missed(hook)
        assert payload["data"]["original_decision_id"] == original
        assert payload["data"]["assignee"] == TEAM_LEAD
        view = (await svc.client.get(f"/v1/decisions/{original}")).json()
        assert view["sla"]["status"] == "missed"

    clock.advance(10 * MINUTE)
    async with service(settings, clock, key=key) as svc:
        assert await timer(svc).check_now() == []
        await asyncio.sleep(1.5)  # a background check or two as well
        assert len(await escalations(svc)) == 1
    assert len(sla_missed(hook)) == 1


async def test_two_timers_on_one_database_escalate_once(
    settings: Settings, hook: Receiver, clock: FakeClock
) -> None:
    """Two processes' checks race for the same overdue decisions: each is claimed once."""
    async with service(settings, clock) as svc:
        await setup_crm(svc, hook)
        await sla_policy(svc, "fallback_queue")
        for n in ("a1", "a2", "a3", "a4"):
            await routed(svc, hook, clock, f"{n}@acme.com")
        async with service(settings, clock, key=svc.admin_key) as other:
            clock.advance(5 * MINUTE + 1)
            a, b = await asyncio.gather(timer(svc).check_now(), timer(other).check_now())
            # (the background loops may have claimed some too)
            await asyncio.sleep(0.3)
            rows = await escalations(svc)
        assert len(rows) == 4
        assert len({r.lead_id for r in rows}) == 4
        assert {r["id"] for r in a}.isdisjoint({r["id"] for r in b})


async def test_on_sqlite_the_escalation_waits_for_the_single_writer_lock(
    tmp_path: Path, hook: Receiver, clock: FakeClock
) -> None:
    """SQLite has one writer: the SLA timer's transaction takes its turn on the pipeline's
    write lock (``LoopThread.write``), as the pipeline's batches and the dispatcher's
    records do. While a write holds the lock nothing is escalated; once it lets go, the
    overdue decision is. (An SLA write on a session of its own would go ahead at once.)"""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/intent.db",
        delivery_allowed_hosts=["127.0.0.1"],
        sqlite_synchronous="NORMAL",
    )
    async with service(settings, clock) as svc:
        loop_thread = svc.runtime.pipeline_loop
        assert loop_thread is not None
        await setup_crm(svc, hook)
        await sla_policy(svc, "team_lead")
        await routed(svc, hook, clock, "dana@acme.com")
        entered, release = threading.Event(), threading.Event()

        async def hold(_sessionmaker: Any) -> None:
            entered.set()
            await asyncio.to_thread(release.wait, 30)  # the pipeline's loop runs on

        holder = asyncio.create_task(loop_thread.write(hold))
        await asyncio.to_thread(entered.wait, 5)
        try:
            clock.advance(5 * MINUTE + 1)
            check = asyncio.create_task(timer(svc).check_now())
            await asyncio.sleep(1.5)  # the background check has had its turn too
            assert not check.done()
            assert await escalations(svc) == []
        finally:
            release.set()
        await holder
        await check
        [row] = await escalations(svc)
        assert row.assignee == TEAM_LEAD
