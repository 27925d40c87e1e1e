"""Identity resolution (app/matching/identity.py) on a real database: ``BatchState``
loads what a batch touches, ``identify`` resolves each event's lead, stitches weaker
leads (anonymous, user id) into an email lead, attaches leads to accounts, and ``save``
writes leads, accounts, identities and the remaps of merged leads back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import accounts, identities, leads, loads
from app.events import Event
from app.matching.identity import BatchState
from app.policy.schema import CompiledPolicy
from tests.support.domain import DAY, ICP_ACCOUNT, T0, make_event, policy_with

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
def policy() -> CompiledPolicy:
    return policy_with()


async def run_batch(
    sessions: Sessions,
    policy: CompiledPolicy,
    events: list[Event],
    *,
    now: float,
    then: Callable[[BatchState], None] | None = None,
) -> BatchState:
    """One batch through load → identify (each event in order) → save, in a transaction;
    ``then`` may leave state as the score stage would (signals) before the save."""
    async with sessions() as session, session.begin():
        state = BatchState(policy=policy, now=now)
        await state.load(session, events)
        for ev in events:
            state.identify(ev)
        if then is not None:
            then(state)
        await state.save(session)
    return state


async def identity_rows(sessions: Sessions) -> dict[str, str]:
    async with sessions() as session:
        rows = await session.execute(select(identities.c.identifier, identities.c.lead_id))
        return {r[0]: r[1] for r in rows}


async def lead_rows(sessions: Sessions) -> dict[str, Any]:
    async with sessions() as session:
        return {r.lead_id: r for r in await session.execute(select(leads))}


async def account_signals(sessions: Sessions) -> dict[str, dict[str, list[float]]]:
    async with sessions() as session:
        rows = await session.execute(select(accounts.c.domain, accounts.c.signals))
        return {r[0]: loads(r[1]) for r in rows}


def pairs(signals: Any) -> dict[str, tuple[float, float]]:
    """Accumulators as (acc, t_ref) tuples: loaded from JSON they are lists."""
    return {k: (float(v[0]), float(v[1])) for k, v in signals.items()}


def with_signals(
    lead_id: str, signals: dict[str, tuple[float, float]]
) -> Callable[[BatchState], None]:
    """Give a lead (and its account) signals, as the score stage would have."""

    def apply(state: BatchState) -> None:
        lead = state.leads[lead_id]
        lead.signals = dict(signals)
        if lead.account_domain:
            state.accounts[lead.account_domain].signals = dict(signals)

    return apply


# -- resolve ------------------------------------------------------------------------------


async def test_an_anonymous_visitor_is_a_lead_of_its_own_and_is_found_again(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    first = await run_batch(
        sessions, policy, [make_event("e1", "site_visit", T0, anonymous_id="c1")], now=T0
    )
    [lead] = first.leads.values()
    assert (lead.lead_id, lead.email, lead.is_new) == ("anon:c1", None, True)
    assert await identity_rows(sessions) == {"anon:c1": "anon:c1"}

    again = BatchState(policy=policy, now=T0 + 60)
    async with sessions() as session:
        batch = [make_event("e2", "site_visit", T0 + 60, anonymous_id="c1")]
        await again.load(session, batch)
        assert again.identity == {"anon:c1": "anon:c1"}
        who = again.identify(batch[0])
    assert who.lead.lead_id == "anon:c1" and not who.lead.is_new
    assert again.new_identities == {}  # known already: nothing to write


async def test_a_user_id_outranks_an_anonymous_id(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    ev = make_event("e1", "site_visit", T0, user_id="u1", anonymous_id="c2")
    state = await run_batch(sessions, policy, [ev], now=T0)
    assert list(state.leads) == ["user:u1"]
    assert await identity_rows(sessions) == {"user:u1": "user:u1", "anon:c2": "user:u1"}


async def test_weaker_leads_merge_into_the_email_lead_with_their_history_and_account(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    # A visitor known by a cookie and a user id, browsing as beta.io.
    visit = make_event(
        "e1",
        "pricing_page_view",
        T0,
        anonymous_id="c1",
        user_id="u9",
        account_domain="beta.io",
        source="linkedin_ads",
    )
    await run_batch(
        sessions,
        policy,
        [visit],
        now=T0,
        then=with_signals("user:u9", {"pricing_page_view": (1.0, T0)}),
    )
    assert (await account_signals(sessions))["beta.io"] == {"pricing_page_view": [1.0, T0]}

    # A day later the same cookie signs up with a work email; the user id is not in this batch.
    signup = make_event("e2", "form_submission", T0 + DAY, email="sam@acme.com", anonymous_id="c1")
    state = await run_batch(sessions, policy, [signup], now=T0 + DAY)

    sam, old = state.leads["sam@acme.com"], state.leads["user:u9"]
    assert old.merged_into == "sam@acme.com"
    assert (old.signals, old.account_domain) == ({}, None)
    assert pairs(sam.signals) == {"pricing_page_view": (1.0, T0)}
    assert (sam.first_seen_at, sam.source) == (T0, "linkedin_ads")  # the visitor's first touch
    assert sam.account_domain == "acme.com"
    assert state.remaps == [("user:u9", "sam@acme.com")]

    rows = await lead_rows(sessions)
    assert rows["user:u9"].merged_into == "sam@acme.com"
    assert loads(rows["sam@acme.com"].signals) == {"pricing_page_view": [1.0, T0]}
    # The intent moved with the history: out of beta.io, into acme.com.
    signals = await account_signals(sessions)
    assert signals["beta.io"] == {"pricing_page_view": [0.0, T0]}
    assert signals["acme.com"] == {"pricing_page_view": [1.0, T0]}
    # Both identities follow, the one this batch did not load through the remap.
    assert await identity_rows(sessions) == {
        "anon:c1": "sam@acme.com",
        "user:u9": "sam@acme.com",
    }

    later = await run_batch(
        sessions,
        policy,
        [make_event("e3", "site_visit", T0 + 2 * DAY, user_id="u9")],
        now=T0 + 2 * DAY,
    )
    assert set(later.leads) == {"sam@acme.com"}  # the user id now means sam
    assert later.new_identities == {} and not later.leads["sam@acme.com"].is_new


async def test_a_merge_adds_accumulators_brought_to_the_later_reference_time(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    await run_batch(
        sessions,
        policy,
        [make_event("e1", "demo_request", T0 + DAY, email="sam@acme.com")],
        now=T0 + DAY,
        then=with_signals("sam@acme.com", {"demo_request": (1.0, T0 + DAY)}),
    )

    def visitor_history(state: BatchState) -> None:
        lead = state.leads["anon:c3"]
        lead.signals = {"demo_request": (1.0, T0), "pricing_page_view": (2.0, T0)}
        lead.last_decision_at, lead.last_decision_band = T0 + 1, "hot"
        lead.last_decision_tier = "tier_2"

    await run_batch(
        sessions,
        policy,
        [make_event("e2", "site_visit", T0, anonymous_id="c3")],
        now=T0,
        then=visitor_history,
    )
    state = await run_batch(
        sessions,
        policy,
        [make_event("e3", "site_visit", T0 + DAY, email="sam@acme.com", anonymous_id="c3")],
        now=T0 + DAY,
    )
    sam = state.leads["sam@acme.com"]
    demo_h = policy.half_lives["demo_request"]
    acc, t_ref = sam.signals["demo_request"]
    assert t_ref == T0 + DAY
    assert acc == pytest.approx(1.0 + 2 ** (-DAY / demo_h), rel=1e-12)
    assert pairs(sam.signals)["pricing_page_view"] == (2.0, T0)
    # The merged lead was routed more recently than sam ever was: its cooldown carries over.
    assert (sam.last_decision_at, sam.last_decision_band, sam.last_decision_tier) == (
        T0 + 1,
        "hot",
        "tier_2",
    )


async def test_two_email_leads_never_merge(sessions: Sessions, policy: CompiledPolicy) -> None:
    await run_batch(
        sessions,
        policy,
        [make_event("e1", "site_visit", T0, email="a@beta.io", anonymous_id="c2")],
        now=T0,
    )
    # The same cookie, now with another email (a shared laptop): a lead of its own.
    state = await run_batch(
        sessions,
        policy,
        [make_event("e2", "site_visit", T0 + 60, email="b@beta.io", anonymous_id="c2")],
        now=T0 + 60,
    )
    assert state.remaps == []
    rows = await lead_rows(sessions)
    assert set(rows) == {"a@beta.io", "b@beta.io"}
    assert rows["a@beta.io"].merged_into is None and rows["b@beta.io"].merged_into is None
    assert await identity_rows(sessions) == {"anon:c2": "a@beta.io"}  # the first owner keeps it

    # Within one batch too.
    await run_batch(
        sessions,
        policy,
        [
            make_event("e3", "site_visit", T0, email="c@gamma.io", anonymous_id="c9"),
            make_event("e4", "site_visit", T0, email="d@gamma.io", anonymous_id="c9"),
        ],
        now=T0,
    )
    rows = await lead_rows(sessions)
    assert rows["c@gamma.io"].merged_into is None and rows["d@gamma.io"].merged_into is None


async def test_load_follows_a_merge_that_no_identity_row_recorded(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    await run_batch(
        sessions,
        policy,
        [
            make_event("e1", "site_visit", T0, anonymous_id="x"),
            make_event("e2", "site_visit", T0, email="b@x.io"),
        ],
        now=T0,
    )
    async with sessions() as session, session.begin():
        await session.execute(
            update(leads).where(leads.c.lead_id == "anon:x").values(merged_into="b@x.io")
        )
    assert (await identity_rows(sessions))["anon:x"] == "anon:x"  # stale

    state = BatchState(policy=policy, now=T0 + 60)
    ev = make_event("e3", "site_visit", T0 + 60, anonymous_id="x")
    async with sessions() as session:
        await state.load(session, [ev])
    assert set(state.leads) == {"anon:x", "b@x.io"}
    assert state.identify(ev).lead.lead_id == "b@x.io"


# -- accounts ----------------------------------------------------------------------------


async def test_free_mail_domains_never_form_an_account(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    assert "gmail.com" in policy.free_mail
    state = await run_batch(
        sessions,
        policy,
        [
            make_event("e1", "site_visit", T0, email="kim@gmail.com"),
            make_event("e2", "site_visit", T0, anonymous_id="c5", account_domain="gmail.com"),
        ],
        now=T0,
    )
    assert state.leads["kim@gmail.com"].account_domain is None
    assert state.leads["anon:c5"].account_domain is None
    assert state.accounts == {}
    assert await account_signals(sessions) == {}

    # A free-mail lead may still work somewhere: the event's account says where.
    state = await run_batch(
        sessions,
        policy,
        [make_event("e3", "site_visit", T0, email="kim@gmail.com", account_domain="acme.com")],
        now=T0,
    )
    assert state.leads["kim@gmail.com"].account_domain == "acme.com"
    assert set(await account_signals(sessions)) == {"acme.com"}


async def test_a_free_mail_domain_described_by_an_event_forms_no_account(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    ev = make_event(
        "e1",
        "site_visit",
        T0,
        anonymous_id="c9",
        account_domain="gmail.com",
        account={"name": "Google Mail", "employees": 100},
    )
    state = await run_batch(sessions, policy, [ev], now=T0)
    assert state.accounts == {}
    async with sessions() as session:
        rows = (await session.execute(select(accounts.c.domain))).all()
    assert rows == []


async def test_a_work_email_decides_the_account_over_the_events_account(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    ev = make_event("e1", "site_visit", T0, email="dana@acme.com", account_domain="other.io")
    state = await run_batch(sessions, policy, [ev], now=T0)
    assert state.leads["dana@acme.com"].account_domain == "acme.com"


async def test_attaching_a_lead_to_another_account_moves_its_intent(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    await run_batch(
        sessions,
        policy,
        [make_event("e1", "demo_request", T0, email="kim@gmail.com", account_domain="acme.com")],
        now=T0,
        then=with_signals("kim@gmail.com", {"demo_request": (1.0, T0)}),
    )
    state = await run_batch(
        sessions,
        policy,
        [make_event("e2", "site_visit", T0 + DAY, email="kim@gmail.com", account_domain="beta.io")],
        now=T0 + DAY,
    )
    assert state.leads["kim@gmail.com"].account_domain == "beta.io"
    signals = await account_signals(sessions)
    assert signals["acme.com"] == {"demo_request": [0.0, T0]}
    assert signals["beta.io"] == {"demo_request": [1.0, T0]}

    # An event that names no account leaves the lead where it is.
    state = await run_batch(
        sessions,
        policy,
        [make_event("e3", "site_visit", T0 + 2 * DAY, email="kim@gmail.com")],
        now=T0 + 2 * DAY,
    )
    assert state.leads["kim@gmail.com"].account_domain == "beta.io"


async def test_identify_applies_the_events_attributes_to_lead_and_account(
    sessions: Sessions, policy: CompiledPolicy
) -> None:
    state = BatchState(policy=policy, now=T0)
    first = make_event(
        "e1",
        "site_visit",
        T0,
        email="dana@acme.com",
        account_domain="acme.com",
        account=ICP_ACCOUNT,
        title="VP Sales",
    )
    same = make_event("e2", "site_visit", T0, email="dana@acme.com", title="VP Sales")
    promoted = make_event("e3", "identify", T0, email="dana@acme.com", title="SVP Sales")
    async with sessions() as session:
        await state.load(session, [first, same, promoted])

    who = state.identify(first)
    assert who.attrs_changed and who.lead.attributes == {"title": "VP Sales"}
    assert who.account is not None
    assert (who.account.industry, who.account.employees) == ("software", 1200)
    assert who.account.rev == 1  # the fit stage sees the account changed
    assert state.account_trigger["acme.com"] is first

    again = state.identify(same)
    assert not again.attrs_changed and again.account is who.account and who.account.rev == 1
    assert state.account_trigger["acme.com"] is same

    changed = state.identify(promoted)
    assert changed.attrs_changed and changed.lead.attributes["title"] == "SVP Sales"
    # An attribute-only event is no activity: it does not trigger an account surge.
    assert state.account_trigger["acme.com"] is same
