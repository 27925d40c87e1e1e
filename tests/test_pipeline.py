"""``app.pipeline.process`` on a real database, one batch per transaction: statuses in the
batch's order, idempotent ingest, identify before score per event, routing with the
cooldown, the outbox's deliveries, and one stage timer per stage."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import decisions, deliveries, destinations, events, leads, loads
from app.events import Event
from app.matching.abm import upsert_accounts, validate_rows
from app.pipeline import BatchResult, process
from app.policy.schema import CompiledPolicy
from tests.support.domain import DAY, HOUR, ICP_ACCOUNT, T0, make_event, policy_with

Sessions = async_sessionmaker[AsyncSession]
STAGES = ("ingest", "load", "identify", "score", "surge", "route", "outbox", "save")
DESTINATION = "dst_crm"


@pytest.fixture(scope="module")
def policy() -> CompiledPolicy:
    return policy_with()


async def run(
    sessions: Sessions,
    policy: CompiledPolicy,
    batch: list[Event],
    *,
    now: float,
    lease_until: float | None = None,
) -> BatchResult:
    """One batch in one transaction, as the runtime applies it."""
    async with sessions() as session, session.begin():
        return await process(session, batch, policy=policy, now=now, lease_until=lease_until)


async def add_destination(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            destinations.insert().values(
                id=DESTINATION,
                name="crm",
                url="http://127.0.0.1:9/hook",
                secret="whsec_" + "A" * 32,
                enabled=True,
                format="json",
                filter="{}",
                created_at=T0,
                updated_at=T0,
            )
        )


async def add_abm_account(sessions: Sessions) -> None:
    rows = validate_rows([{"domain": "acme.com", "tier": "tier_1", "owner": "jo@ours.example"}])
    async with sessions() as session, session.begin():
        await upsert_accounts(session, rows, T0 - DAY)


def hot_batch(prefix: str, t: float, email: str = "dana@acme.com") -> list[Event]:
    """Fit 50 (VP title, US, ICP account) + pricing 15 + demo 20 = 85 at ``t``: hot."""
    return [
        make_event(
            f"{prefix}-1",
            "pricing_page_view",
            t,
            email=email,
            account_domain="acme.com",
            account=ICP_ACCOUNT,
            title="VP Sales",
            country="US",
        ),
        make_event(f"{prefix}-2", "demo_request", t, email=email),
    ]


async def lead_row(sessions: Sessions, lead_id: str) -> Any:
    async with sessions() as session:
        return (await session.execute(select(leads).where(leads.c.lead_id == lead_id))).one()


async def count(sessions: Sessions, table: Any) -> int:
    async with sessions() as session:
        return int((await session.execute(select(func.count()).select_from(table))).scalar_one())


def stage_counts() -> dict[str, float]:
    return {
        stage: REGISTRY.get_sample_value("intent_pipeline_stage_seconds_count", {"stage": stage})
        or 0.0
        for stage in STAGES
    }


# -- ingest -------------------------------------------------------------------------------


async def test_statuses_come_back_in_batch_order_and_duplicates_count_once(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    a = make_event("e1", "site_visit", T0, email="a@x.io")
    b = make_event("e2", "site_visit", T0, email="b@x.io")
    demo = make_event("e3", "demo_request", T0, email="a@x.io")
    result = await run(sessions, policy, [a, b, a, demo], now=T0)
    assert [(s.event_id, s.status) for s in result.statuses] == [
        ("e1", "accepted"),
        ("e2", "accepted"),
        ("e1", "duplicate"),
        ("e3", "accepted"),
    ]
    assert await count(sessions, events) == 3
    assert (await lead_row(sessions, "a@x.io")).intent == 5 + 20  # e1 once, not twice

    again = await run(
        sessions, policy, [demo, make_event("e4", "site_visit", T0, email="b@x.io")], now=T0
    )
    assert [(s.event_id, s.status) for s in again.statuses] == [
        ("e3", "duplicate"),
        ("e4", "accepted"),
    ]
    assert (await lead_row(sessions, "a@x.io")).intent == 25
    assert (await lead_row(sessions, "b@x.io")).intent == 10
    assert await count(sessions, events) == 4


async def test_a_batch_of_duplicates_stops_after_ingest(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    batch = hot_batch("h", T0)
    await run(sessions, policy, batch, now=T0)
    before = stage_counts()
    result = await run(sessions, policy, batch, now=T0 + 60)
    after = stage_counts()
    assert [s.status for s in result.statuses] == ["duplicate", "duplicate"]
    assert (result.decisions, result.deliveries, result.suppressed) == ([], [], 0)
    assert {s: after[s] - before[s] for s in STAGES} == {s: float(s == "ingest") for s in STAGES}


async def test_every_stage_of_a_fresh_batch_is_timed_once(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    before = stage_counts()
    await run(sessions, policy, hot_batch("h", T0), now=T0)
    after = stage_counts()
    assert {s: after[s] - before[s] for s in STAGES} == dict.fromkeys(STAGES, 1.0)


# -- identify, then score, per event -------------------------------------------------------


async def test_an_event_is_identified_before_it_is_scored(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    """The second event stitches the first one's anonymous lead into an email lead: the
    first event's points must end up on the email lead, in the same batch."""
    browse = make_event("e1", "pricing_page_view", T0, anonymous_id="c1")
    signup = make_event("e2", "demo_request", T0, email="sam@acme.com", anonymous_id="c1")
    result = await run(sessions, policy, [browse, signup], now=T0)
    assert [s.status for s in result.statuses] == ["accepted", "accepted"]

    sam = await lead_row(sessions, "sam@acme.com")
    assert sam.intent == 15 + 20
    assert set(loads(sam.signals)) == {"pricing_page_view", "demo_request"}
    anon = await lead_row(sessions, "anon:c1")
    assert anon.merged_into == "sam@acme.com" and loads(anon.signals) == {}


# -- routing ----------------------------------------------------------------------------


@pytest.mark.parametrize("lease", [T0 + 60, None], ids=["claimed", "unclaimed"])
async def test_a_band_rise_is_routed_decided_and_delivered(
    sessions: Sessions, policy: CompiledPolicy, lease: float | None
) -> None:
    await add_abm_account(sessions)
    await add_destination(sessions)
    result = await run(sessions, policy, hot_batch("h", T0), now=T0, lease_until=lease)

    [decision] = result.decisions
    assert decision["type"] == "lead.routed"
    assert (decision["lead_id"], decision["band"], decision["tier"]) == (
        "dana@acme.com",
        "hot",
        "tier_1",
    )
    assert (decision["rule"], decision["team"], decision["assignee"]) == (
        "hot_tier_1",
        "strategic",
        "jo@ours.example",
    )
    assert decision["trigger_event_id"] == "h-2"
    assert decision["policy_version"] == policy.version
    async with sessions() as session:
        [stored] = (await session.execute(select(decisions))).all()
        [delivery] = (await session.execute(select(deliveries))).all()
    assert stored.id == decision["id"] and stored.rule == "hot_tier_1"
    body = orjson.loads(stored.payload)
    assert body["data"]["decision_id"] == decision["id"]
    assert body["data"]["score"]["total"] == 85.0
    assert (delivery.decision_id, delivery.destination_id) == (decision["id"], DESTINATION)
    assert (delivery.status, delivery.order_key) == ("pending", "dana@acme.com")
    assert delivery.locked_until == lease

    if lease is None:  # nobody to send it now: the dispatcher's poller will
        assert result.deliveries == []
        assert result.waiting == {(DESTINATION, "dana@acme.com")}
        return
    [claimed] = result.deliveries
    assert (claimed.id, claimed.decision_id) == (delivery.id, decision["id"])
    assert (claimed.destination_id, claimed.lease_until) == (DESTINATION, lease)
    assert orjson.loads(claimed.body) == body
    assert result.waiting == set()


async def test_a_rise_within_the_cooldown_is_suppressed_and_counted(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    await add_destination(sessions)
    first = await run(sessions, policy, hot_batch("h", T0), now=T0, lease_until=T0 + 60)
    assert len(first.decisions) == 1 and first.decisions[0]["rule"] == "hot_inbound"

    def flap(prefix: str, t: float) -> list[Event]:
        # Two careers views (-10 each) take 85 to 65, below hot's exit at 70 (warm); a demo
        # request (+20) takes it back to 85, a rise into hot again.
        return [
            make_event(f"{prefix}-c1", "careers_page_view", t, email="dana@acme.com"),
            make_event(f"{prefix}-c2", "careers_page_view", t, email="dana@acme.com"),
            make_event(f"{prefix}-d", "demo_request", t, email="dana@acme.com"),
        ]

    hour = await run(sessions, policy, flap("f1", T0 + HOUR), now=T0 + HOUR, lease_until=None)
    assert hour.suppressed == 1
    assert (hour.decisions, hour.deliveries) == ([], [])
    assert await count(sessions, decisions) == 1
    assert await count(sessions, deliveries) == 1
    assert (await lead_row(sessions, "dana@acme.com")).band == "hot"

    # 25 h after the decision the 24 h cooldown is over: the same flap routes again.
    later = await run(sessions, policy, flap("f2", T0 + 25 * HOUR), now=T0 + 25 * HOUR)
    assert later.suppressed == 0
    assert [d["rule"] for d in later.decisions] == ["hot_inbound"]
    assert await count(sessions, decisions) == 2
