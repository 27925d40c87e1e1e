"""The scoring engine (app/scoring/engine.py) on its own: ``score`` folds one identified
event into its lead and account, ``evaluate`` reads a lead's score at a given time.

Expectations come from PRODUCT.md's "Scoring semantics": an event of type s at t_e adds
``w · 2^(-(t - t_e)/h)`` at t ≥ t_e, intent is that sum clamped to [0, 50], fit the
clamped sum of the matching fit rules; bands enter at their ``min`` and, with hysteresis,
are left only below ``exit_below`` (hot: enter at 80, leave below 70)."""

from __future__ import annotations

from typing import Any

import pytest

from app.events import Candidate
from app.policy.schema import CompiledPolicy
from app.scoring.engine import evaluate, score
from app.scoring.state import AccountState, LeadState
from tests.support.domain import DAY, HOUR, ICP_ACCOUNT, T0, make_event, new_lead, policy_with

# The default policy's signals: (points, half-life in seconds).
PRICING = (15.0, 7 * DAY)
DEMO = (20.0, 14 * DAY)
SITE_VISIT = (5.0, 3 * DAY)


def spec_contribution(signal: tuple[float, float], t_event: float, t: float) -> float:
    """PRODUCT.md: an event at ``t_event`` contributes ``w · 2^(-(t - t_event)/h)`` at ``t``."""
    w, h = signal
    return w * 2 ** (-(t - t_event) / h)


@pytest.fixture(scope="module")
def policy() -> CompiledPolicy:
    return policy_with()


def icp_account() -> AccountState:
    return AccountState(domain="acme.com", tier="tier_1", owner="jo@ours.example", **ICP_ACCOUNT)


def vp_at_acme(policy: CompiledPolicy) -> tuple[LeadState, AccountState]:
    """A new lead whose fit is the maximum, 50: VP title, US, at an ICP account."""
    lead = new_lead(policy, "dana@acme.com", t=T0, title="VP Sales", country="US")
    lead.account_domain = "acme.com"
    return lead, icp_account()


def apply(
    policy: CompiledPolicy,
    lead: LeadState,
    account: AccountState | None,
    type_: str,
    t: float,
    *,
    now: float,
    attrs_changed: bool = False,
    event_id: str | None = None,
) -> Candidate | None:
    ev = make_event(event_id or f"{type_}@{t}", type_, t, email=lead.email)
    return score(policy, ev, lead, account, attrs_changed=attrs_changed, now=now)


# -- decay ------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["in time order", "reversed", "shuffled"])
def test_intent_is_the_decayed_sum_of_the_spec_whatever_the_arrival_order(
    policy: CompiledPolicy, order: str
) -> None:
    events = [
        ("pricing_page_view", T0),
        ("demo_request", T0 + DAY),
        ("pricing_page_view", T0 + 2 * DAY),
    ]
    arrival = {
        "in time order": events,
        "reversed": events[::-1],
        "shuffled": [events[1], events[2], events[0]],
    }[order]
    now = T0 + 5 * DAY
    lead = new_lead(policy, "a@order.io", t=T0)
    for type_, t in arrival:
        apply(policy, lead, None, type_, t, now=now)

    # The stored intent is the transition's, at the lead's newest event (whatever order
    # the events came in); read at ``now`` it has decayed further.
    newest = T0 + 2 * DAY
    expected = (
        spec_contribution(PRICING, T0, newest)
        + spec_contribution(PRICING, T0 + 2 * DAY, newest)
        + spec_contribution(DEMO, T0 + DAY, newest)
    )
    assert lead.intent == pytest.approx(expected, rel=1e-12)
    read_now = (
        spec_contribution(PRICING, T0, now)
        + spec_contribution(PRICING, T0 + 2 * DAY, now)
        + spec_contribution(DEMO, T0 + DAY, now)
    )
    assert evaluate(policy, lead, None, now).intent == pytest.approx(read_now, rel=1e-12)
    assert lead.fit == 0.0  # no attribute of this lead matches a fit rule
    # One accumulator per signal, "the sum of the contributions evaluated at t_ref", with
    # t_ref the latest event of that signal (PRODUCT.md; kept per point: w · acc).
    acc, t_ref = lead.signals["pricing_page_view"]
    assert t_ref == T0 + 2 * DAY
    assert PRICING[0] * acc == pytest.approx(
        spec_contribution(PRICING, T0, t_ref) + spec_contribution(PRICING, t_ref, t_ref), rel=1e-12
    )
    assert lead.last_event_at == T0 + 2 * DAY


def test_the_account_accumulates_the_same_decayed_signals(policy: CompiledPolicy) -> None:
    lead, account = vp_at_acme(policy)
    other = new_lead(policy, "sam@acme.com", t=T0)
    now = T0 + 3 * DAY
    apply(policy, lead, account, "pricing_page_view", T0, now=now)
    apply(policy, other, account, "pricing_page_view", T0 + DAY, now=now)

    acc, t_ref = account.signals["pricing_page_view"]
    at_now = PRICING[0] * acc * 2 ** (-(now - t_ref) / PRICING[1])
    assert at_now == pytest.approx(
        spec_contribution(PRICING, T0, now) + spec_contribution(PRICING, T0 + DAY, now), rel=1e-12
    )
    assert account.last_event_at == T0 + DAY
    assert account.dirty


def test_intent_is_clamped_to_the_policys_range(policy: CompiledPolicy) -> None:
    eager = new_lead(policy, "eager@example.org", t=T0)
    for i in range(3):  # 3 × 20 = 60 points at once
        apply(policy, eager, None, "demo_request", T0, now=T0, event_id=f"d{i}")
    assert eager.intent == policy.intent_max == 50

    seeker = new_lead(policy, "seeker@example.org", t=T0)
    apply(policy, seeker, None, "careers_page_view", T0, now=T0)  # -10 points
    assert seeker.intent == 0.0
    assert seeker.signals["careers_page_view"] == (1.0, T0)  # kept: it offsets later intent
    apply(policy, seeker, None, "demo_request", T0, now=T0)
    assert seeker.intent == 10.0  # 20 - 10


# -- fit ----------------------------------------------------------------------------------


def test_fit_is_recomputed_when_the_events_attributes_change_and_only_then(
    policy: CompiledPolicy,
) -> None:
    lead = new_lead(policy, "dana@acme.com", t=T0, title="VP Sales", country="US")
    apply(policy, lead, None, "site_visit", T0, now=T0, attrs_changed=True)
    assert lead.fit == 15 + 10  # decision-maker title, location in the service area

    # Changed without the identify stage saying so: the fit holds (nothing recomputes it).
    lead.attributes["title"] = "Intern"
    apply(policy, lead, None, "site_visit", T0, now=T0)
    assert lead.fit == 25

    apply(policy, lead, None, "site_visit", T0, now=T0, attrs_changed=True)
    assert lead.fit == 10


def test_fit_is_recomputed_when_the_account_or_the_policy_changes(
    policy: CompiledPolicy,
) -> None:
    lead, account = vp_at_acme(policy)
    apply(policy, lead, account, "site_visit", T0, now=T0)
    assert lead.fit == 50  # title 15, location 10, size 10, industry 10, revenue 5

    # The identify stage bumps an account's revision when an event changes it.
    account.employees = 50  # below the ICP's 200
    account.rev += 1
    apply(policy, lead, account, "site_visit", T0, now=T0)
    assert lead.fit == 40

    def smaller_title(raw: dict[str, Any]) -> None:
        rule = next(r for r in raw["fit"]["rules"] if r["name"] == "decision_maker_title")
        rule["points"] = 5

    v2 = policy_with(smaller_title, version=2)
    apply(v2, lead, account, "site_visit", T0, now=T0)
    assert lead.fit == 30
    assert lead.policy_version == 2


def loaded_lead(policy: CompiledPolicy, *, stored_fit: float, version: int) -> LeadState:
    """A lead as read from its row: scored before (``updated_at`` T0), not new."""
    lead = new_lead(policy, "dana@acme.com", t=T0 - DAY, title="VP Sales", country="US")
    lead.is_new = False
    lead.fit = stored_fit
    lead.policy_version = version
    lead.account_domain = lead.stored_account_domain = "acme.com"
    lead.updated_at = T0
    return lead


def test_a_loaded_leads_stored_fit_holds_until_policy_or_account_changed(
    policy: CompiledPolicy,
) -> None:
    # 42 is no sum of this policy's fit rules for the lead: seeing it proves no recompute.
    unchanged = loaded_lead(policy, stored_fit=42.0, version=policy.version)
    account = icp_account()
    account.updated_at = T0 - HOUR  # last changed before the lead was last scored
    apply(policy, unchanged, account, "site_visit", T0 + HOUR, now=T0 + HOUR)
    assert unchanged.fit == 42.0

    account_since = loaded_lead(policy, stored_fit=42.0, version=policy.version)
    changed = icp_account()
    changed.updated_at = T0 + 1.0  # changed after the lead was scored
    apply(policy, account_since, changed, "site_visit", T0 + HOUR, now=T0 + HOUR)
    assert account_since.fit == 50

    older_policy = loaded_lead(policy, stored_fit=42.0, version=policy.version - 1)
    apply(policy, older_policy, account, "site_visit", T0 + HOUR, now=T0 + HOUR)
    assert older_policy.fit == 50

    moved = loaded_lead(policy, stored_fit=42.0, version=policy.version)
    moved.account_domain = "acme.com"
    moved.stored_account_domain = "old.example"  # attached to another account in this batch
    apply(policy, moved, account, "site_visit", T0 + HOUR, now=T0 + HOUR)
    assert moved.fit == 50


# -- bands ------------------------------------------------------------------------------


def test_a_rise_into_a_routable_band_is_a_candidate_and_hot_has_hysteresis(
    policy: CompiledPolicy,
) -> None:
    """All at one instant, so every contribution is exactly its points (2^0 = 1): a
    second's decay would leave 20 + 10 points a hair short of 80."""
    lead, account = vp_at_acme(policy)  # fit 50
    steps = [
        # (signal, total after it, band, a candidate?)
        ("demo_request", 70, "warm", False),  # rose, but no rule routes warm
        ("content_download", 80, "hot", True),  # enters hot at exactly 80
        ("careers_page_view", 70, "hot", False),  # 70 is not below 70: stays hot
        ("careers_page_view", 60, "warm", False),  # below 70: leaves hot
        ("site_visit", 65, "warm", False),
        ("email_click", 70, "warm", False),  # coming back, hot starts at 80, not 70
        ("pricing_page_view", 85, "hot", True),
    ]
    for i, (signal, total, band, routed) in enumerate(steps):
        candidate = apply(policy, lead, account, signal, T0, now=T0, event_id=f"e{i}")
        assert lead.fit + lead.intent == total, signal
        assert lead.band == band, (signal, total)
        assert (candidate is not None) == routed, (signal, total)
        if candidate is not None:
            assert candidate.kind == "lead"
            assert (candidate.band, candidate.previous_band) == ("hot", "warm")
            assert candidate.lead_id == "dana@acme.com"
            assert candidate.trigger_event_id == f"e{i}"
            assert (candidate.tier, candidate.account_owner) == ("tier_1", "jo@ours.example")
            assert candidate.score["total"] == total
            assert candidate.score["band"] == "hot"


def test_the_candidate_explains_the_score(policy: CompiledPolicy) -> None:
    lead, account = vp_at_acme(policy)
    apply(policy, lead, account, "pricing_page_view", T0, now=T0)
    candidate = apply(policy, lead, account, "demo_request", T0, now=T0, event_id="d")
    assert candidate is not None
    at_t0 = "2026-03-02T09:00:00.000Z"
    assert candidate.signals == [
        {
            "signal": "demo_request",
            "score": 20.0,
            "points": DEMO[0],
            "half_life": DEMO[1],
            "decayed_count": 1.0,
            "last_event_at": at_t0,
        },
        {
            "signal": "pricing_page_view",
            "score": 15.0,
            "points": PRICING[0],
            "half_life": PRICING[1],
            "decayed_count": 1.0,
            "last_event_at": at_t0,
        },
    ]
    # Every fit rule, in policy order, the one that did not match too (contributing 0).
    assert [(f["rule"], f["points"], f["matched"]) for f in candidate.fit_breakdown] == [
        ("company_size_in_icp", 10, True),
        ("industry_in_icp", 10, True),
        ("decision_maker_title", 15, True),
        ("location_in_service_area", 10, True),
        ("revenue_in_range", 5, True),
        ("free_mail_student_or_competitor", 0, False),
    ]
    assert candidate.fit_breakdown[-1]["rule_points"] == -20
    assert candidate.ctx["score"]["band"] == "hot"
    assert candidate.ctx["event"]["type"] == "demo_request"
    assert candidate.ctx["account"]["tier"] == "tier_1"
    assert candidate.lead is not None and candidate.lead["title"] == "VP Sales"


def test_a_lead_already_hot_makes_no_new_candidate(policy: CompiledPolicy) -> None:
    lead, account = vp_at_acme(policy)
    assert apply(policy, lead, account, "demo_request", T0, now=T0) is None
    assert apply(policy, lead, account, "pricing_page_view", T0, now=T0) is not None
    assert apply(policy, lead, account, "site_visit", T0, now=T0) is None  # still hot: 90


def test_no_candidate_for_a_rise_no_rule_can_route(policy: CompiledPolicy) -> None:
    lead = new_lead(policy, "cool@example.org", t=T0)
    assert apply(policy, lead, None, "demo_request", T0, now=T0) is None
    assert (lead.band, lead.band_at) == ("cold", T0)  # 20: below cool's 25
    # 30 (less a second's decay): cool, a rise, but no rule routes cool
    assert apply(policy, lead, None, "content_download", T0, now=T0 + 1) is None
    assert (lead.band, lead.band_at) == ("cool", T0 + 1)


# -- signals the policy does not know ------------------------------------------------------


def test_an_event_type_the_policy_no_longer_knows_counts_nothing(policy: CompiledPolicy) -> None:
    lead, account = vp_at_acme(policy)
    apply(policy, lead, account, "site_visit", T0, now=T0)
    apply(policy, lead, account, "demo_request", T0, now=T0)
    assert lead.intent == 25

    def without_site_visits(raw: dict[str, Any]) -> None:
        del raw["signals"]["site_visit"]
        raw["segment"]["default_page"] = None

    v2 = policy_with(without_site_visits, version=2)
    lead_signals, account_signals = dict(lead.signals), dict(account.signals)
    candidate = apply(v2, lead, account, "site_visit", T0 + 60, now=T0 + 60)
    assert candidate is None
    # The history stays (a later version may know the signal again), but scores nothing.
    assert lead.signals == lead_signals and account.signals == account_signals
    assert lead.last_event_at == T0
    assert lead.intent == pytest.approx(spec_contribution(DEMO, T0, T0 + 60), rel=1e-12)

    apply(v2, lead, account, "webinar_attended", T0 + 60, now=T0 + 60)  # never a signal
    assert "webinar_attended" not in lead.signals and lead.signals == lead_signals


def test_an_attribute_only_event_counts_nothing(policy: CompiledPolicy) -> None:
    lead, account = vp_at_acme(policy)
    apply(policy, lead, account, "identify", T0, now=T0, attrs_changed=True)
    assert lead.signals == {} and account.signals == {}
    assert (lead.fit, lead.intent) == (50, 0)


# -- evaluate ------------------------------------------------------------------------------


def test_evaluate_reads_fit_and_each_signal_decayed_to_the_given_time(
    policy: CompiledPolicy,
) -> None:
    lead, account = vp_at_acme(policy)
    apply(policy, lead, account, "pricing_page_view", T0, now=T0)
    apply(policy, lead, account, "site_visit", T0 + DAY, now=T0 + DAY)
    t = T0 + 4 * DAY

    e = evaluate(policy, lead, account, t)
    assert e.signals == {
        "pricing_page_view": pytest.approx(spec_contribution(PRICING, T0, t), rel=1e-12),
        "site_visit": pytest.approx(spec_contribution(SITE_VISIT, T0 + DAY, t), rel=1e-12),
    }
    assert e.intent == pytest.approx(sum(e.signals.values()), rel=1e-12)
    assert e.fit == 50 and e.total == pytest.approx(50 + e.intent, rel=1e-12)
    assert sorted(name for name, _ in e.fit_breakdown) == [
        "company_size_in_icp",
        "decision_maker_title",
        "industry_in_icp",
        "location_in_service_area",
        "revenue_in_range",
    ]
    # Reading changes nothing: the same time gives the same figures.
    assert evaluate(policy, lead, account, t).intent == e.intent


def test_evaluate_recomputes_fit_from_current_attributes(policy: CompiledPolicy) -> None:
    lead, account = vp_at_acme(policy)
    account.industry = "mining"  # outside the ICP list
    assert evaluate(policy, lead, account, T0).fit == 40
    free_mail = new_lead(policy, "kim@gmail.com", t=T0, title="VP Sales", country="US")
    # title 15 + location 10 - free-mail 20
    assert evaluate(policy, free_mail, None, T0).fit == 5
