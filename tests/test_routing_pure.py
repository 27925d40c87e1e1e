"""Routing rules, cooldown/escalation and assignment, without a database."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from app.policy.conditions import Context
from app.policy.defaults import default_policy_raw
from app.policy.schema import CompiledPolicy, RoutingRule, parse_policy
from app.routing.assignment import Assignment, Counters, assign
from app.routing.rules import cooldown_verdict, match_rule

HOUR = 3600.0
DAY = 86400.0
NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()
EMPTY_CTX: Context = {"lead": {}, "account": {}, "score": {}, "event": {}}


def policy_with(mutate: Callable[[dict[str, Any]], None] | None = None) -> CompiledPolicy:
    raw = default_policy_raw()
    if mutate is not None:
        mutate(raw)
    doc, errors = parse_policy(raw)
    assert errors == [], [str(e) for e in errors]
    assert doc is not None
    return CompiledPolicy(7, doc)


def counters() -> Counters:
    c = Counters()
    c.loaded = True  # no database: the values live in memory
    return c


def rule_named(policy: CompiledPolicy, name: str) -> RoutingRule:
    return next(r.rule for r in policy.rules if r.rule.name == name)


@pytest.fixture(scope="module")
def default() -> CompiledPolicy:
    return policy_with()


# --- match_rule --------------------------------------------------------------------


def matched(
    policy: CompiledPolicy,
    *,
    kind: str = "lead",
    band: str | None = "hot",
    tier: str | None = None,
    active_leads: int = 0,
    ctx: Context = EMPTY_CTX,
) -> str | None:
    rule = match_rule(policy, kind=kind, band=band, tier=tier, active_leads=active_leads, ctx=ctx)
    return rule.rule.name if rule else None


@pytest.mark.parametrize(
    ("band", "tier", "rule"),
    [
        ("hot", "tier_1", "hot_tier_1"),
        ("hot", "tier_2", "hot_inbound"),
        ("hot", "tier_3", "hot_inbound"),
        ("hot", None, "hot_inbound"),
        ("warm", "tier_1", None),
        ("cold", None, None),
        (None, "tier_1", None),
    ],
)
def test_default_lead_rules(
    default: CompiledPolicy, band: str | None, tier: str | None, rule: str | None
) -> None:
    assert matched(default, band=band, tier=tier) == rule


@pytest.mark.parametrize(
    ("tier", "active_leads", "rule"),
    [
        ("tier_1", 3, "account_surge"),
        ("tier_2", 5, "account_surge"),
        ("tier_1", 2, None),
        ("tier_3", 10, None),
        (None, 10, None),
    ],
)
def test_default_account_surge_rule(
    default: CompiledPolicy, tier: str | None, active_leads: int, rule: str | None
) -> None:
    got = matched(default, kind="account", band=None, tier=tier, active_leads=active_leads)
    assert got == rule


def test_lead_rules_never_match_accounts_and_vice_versa(default: CompiledPolicy) -> None:
    assert matched(default, kind="account", band="hot", tier="tier_3", active_leads=99) is None
    assert matched(default, kind="lead", band="hot", tier="tier_1", active_leads=99) == (
        "hot_tier_1"
    )


def _prepend_rule(rule: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw["routing"]["rules"].insert(0, rule)

    return mutate


def test_rule_conditions_are_evaluated_against_the_context() -> None:
    policy = policy_with(
        _prepend_rule(
            {
                "name": "linkedin_hot",
                "when": {
                    "band": ["hot", "warm"],
                    "conditions": [
                        {"field": "event.source", "eq": "LinkedIn_Ads"},
                        {"field": "score.fit", "gte": 30},
                    ],
                },
                "team": "inbound",
            }
        )
    )
    good: Context = {"event": {"source": "linkedin_ads"}, "score": {"fit": 35}}
    low_fit: Context = {"event": {"source": "linkedin_ads"}, "score": {"fit": 20}}
    other: Context = {"event": {"source": "website"}, "score": {"fit": 35}}
    assert matched(policy, band="warm", ctx=good) == "linkedin_hot"
    assert matched(policy, band="hot", tier="tier_1", ctx=good) == "linkedin_hot"
    assert matched(policy, band="warm", ctx=low_fit) is None
    assert matched(policy, band="hot", tier="tier_1", ctx=other) == "hot_tier_1"


def test_tier_none_matches_only_leads_without_a_tier() -> None:
    policy = policy_with(
        _prepend_rule({"name": "no_tier", "when": {"band": "hot", "tier": "none"}, "team": "queue"})
    )
    assert matched(policy, tier=None) == "no_tier"
    assert matched(policy, tier="tier_2") == "hot_inbound"


def test_first_matching_rule_wins_in_priority_order() -> None:
    def swap(raw: dict[str, Any]) -> None:
        rules = raw["routing"]["rules"]
        rules[0], rules[1] = rules[1], rules[0]

    # hot_inbound now comes first and has no tier condition: it shadows hot_tier_1
    assert matched(policy_with(swap), tier="tier_1") == "hot_inbound"


def test_a_rule_without_band_matches_any_band() -> None:
    policy = policy_with(_prepend_rule({"name": "everyone", "team": "queue"}))
    assert matched(policy, band="cold") == "everyone"
    assert matched(policy, band=None) == "everyone"


# --- cooldown and escalation -------------------------------------------------------


def verdict(
    policy: CompiledPolicy,
    *,
    since_last: float | None,
    last_band: str | None = "hot",
    last_tier: str | None = None,
    band: str | None = "hot",
    tier: str | None = None,
) -> tuple[bool, bool]:
    return cooldown_verdict(
        policy,
        now=NOON,
        last_at=None if since_last is None else NOON - since_last,
        last_band=last_band,
        last_tier=last_tier,
        band=band,
        tier=tier,
    )


def test_first_decision_is_allowed(default: CompiledPolicy) -> None:
    assert verdict(default, since_last=None, last_band=None) == (True, False)


@pytest.mark.parametrize(
    ("since_last", "allowed"),
    [(0, False), (HOUR, False), (DAY - 1, False), (DAY, True), (3 * DAY, True)],
)
def test_one_decision_per_24h_window(
    default: CompiledPolicy, since_last: float, allowed: bool
) -> None:
    assert verdict(default, since_last=since_last) == (allowed, False)


@pytest.mark.parametrize(
    ("last_band", "band", "expected"),
    [
        ("warm", "hot", (True, True)),
        ("cold", "warm", (True, True)),
        ("hot", "hot", (False, False)),
        ("hot", "warm", (False, False)),
        (None, "hot", (False, False)),
        ("hot", None, (False, False)),
    ],
)
def test_escalation_by_band_within_the_window(
    default: CompiledPolicy, last_band: str | None, band: str | None, expected: tuple[bool, bool]
) -> None:
    assert verdict(default, since_last=HOUR, last_band=last_band, band=band) == expected


@pytest.mark.parametrize(
    ("last_tier", "tier", "expected"),
    [
        (None, "tier_3", (True, True)),
        ("tier_3", "tier_2", (True, True)),
        ("tier_2", "tier_1", (True, True)),
        (None, "tier_1", (True, True)),
        ("tier_1", "tier_1", (False, False)),
        ("tier_1", "tier_2", (False, False)),
        ("tier_2", None, (False, False)),
        (None, None, (False, False)),
    ],
)
def test_escalation_by_tier_within_the_window(
    default: CompiledPolicy, last_tier: str | None, tier: str | None, expected: tuple[bool, bool]
) -> None:
    assert verdict(default, since_last=HOUR, last_tier=last_tier, tier=tier) == expected


def test_account_decisions_escalate_by_tier_without_bands(default: CompiledPolicy) -> None:
    got = verdict(default, since_last=HOUR, last_band=None, band=None, last_tier="tier_2",
                  tier="tier_1")  # fmt: skip
    assert got == (True, True)


def test_cooldown_comes_from_the_policy() -> None:
    policy = policy_with(lambda raw: raw["routing"].__setitem__("cooldown", "1h"))
    assert verdict(policy, since_last=HOUR - 1) == (False, False)
    assert verdict(policy, since_last=HOUR) == (True, False)


# --- assignment --------------------------------------------------------------------


def team_policy(**teams: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        for name, spec in teams.items():
            raw["teams"][name] = spec

    return mutate


def test_no_rule_goes_to_the_default_queue() -> None:
    policy = policy_with(
        lambda raw: raw["routing"].__setitem__(
            "default_queue", {"team": "queue", "assignee": "q@x"}
        )
    )
    got = assign(policy, None, account_owner="owner@x", counters=counters(), now=NOON)
    assert got == Assignment("queue", "q@x", "default_queue")


def test_account_owner_first(default: CompiledPolicy) -> None:
    rule = rule_named(default, "hot_tier_1")
    got = assign(default, rule, account_owner="olga@x", counters=counters(), now=NOON)
    assert got == Assignment("strategic", "olga@x", "account_owner")


def test_account_owner_falls_back_to_round_robin() -> None:
    policy = policy_with(team_policy(strategic={"members": ["s1@x", "s2@x"]}))
    rule = rule_named(policy, "hot_tier_1")
    c = counters()
    picks = [assign(policy, rule, account_owner=None, counters=c, now=NOON) for _ in range(3)]
    assert [(a.team, a.assignee, a.strategy) for a in picks] == [
        ("strategic", "s1@x", "round_robin"),
        ("strategic", "s2@x", "round_robin"),
        ("strategic", "s1@x", "round_robin"),
    ]


def test_round_robin_rule_ignores_the_account_owner() -> None:
    policy = policy_with(team_policy(inbound={"members": ["a@x", "b@x"]}))
    rule = rule_named(policy, "hot_inbound")
    got = assign(policy, rule, account_owner="olga@x", counters=counters(), now=NOON)
    assert got == Assignment("inbound", "a@x", "round_robin")


def test_round_robin_cycles_and_keeps_its_cursor_in_the_counters() -> None:
    policy = policy_with(team_policy(inbound={"members": ["a@x", "b@x", "c@x"]}))
    rule = rule_named(policy, "hot_inbound")
    c = counters()
    got = [
        assign(policy, rule, account_owner=None, counters=c, now=NOON).assignee for _ in range(7)
    ]
    assert got == ["a@x", "b@x", "c@x", "a@x", "b@x", "c@x", "a@x"]
    assert c.get("rr:inbound") == 1
    assert "rr:inbound" in c.dirty

    # The cursor survives a reload: counters loaded from the store resume where it left off.
    resumed = counters()
    resumed.values = dict(c.values)
    assert assign(policy, rule, account_owner=None, counters=resumed, now=NOON).assignee == "b@x"


def test_daily_cap_skips_members_who_are_full() -> None:
    policy = policy_with(
        team_policy(inbound={"members": ["a@x", "b@x"], "daily_cap": 2, "assignee": "lead@x"})
    )
    rule = rule_named(policy, "hot_inbound")
    c = counters()
    got = [assign(policy, rule, account_owner=None, counters=c, now=NOON) for _ in range(5)]
    assert [(a.assignee, a.strategy) for a in got] == [
        ("a@x", "round_robin"),
        ("b@x", "round_robin"),
        ("a@x", "round_robin"),
        ("b@x", "round_robin"),
        ("lead@x", "fixed"),  # everyone is at the cap: round robin gives way to `fixed`
    ]
    assert c.get("cap:inbound:a@x:2026-11-23") == 2
    assert c.get("cap:inbound:b@x:2026-11-23") == 2


def test_a_full_member_is_skipped_but_others_still_get_leads() -> None:
    policy = policy_with(team_policy(inbound={"members": ["a@x", "b@x"], "daily_cap": 1}))
    rule = rule_named(policy, "hot_inbound")
    c = counters()
    c.values["cap:inbound:a@x:2026-11-23"] = 1  # a@x already took one today
    got = [assign(policy, rule, account_owner=None, counters=c, now=NOON) for _ in range(2)]
    assert got[0] == Assignment("inbound", "b@x", "round_robin")
    assert got[1].strategy == "default_queue"


def test_daily_caps_reset_on_the_next_utc_day() -> None:
    policy = policy_with(team_policy(inbound={"members": ["a@x"], "daily_cap": 1}))
    rule = rule_named(policy, "hot_inbound")
    c = counters()
    assert assign(policy, rule, account_owner=None, counters=c, now=NOON).assignee == "a@x"
    assert assign(policy, rule, account_owner=None, counters=c, now=NOON + HOUR).strategy == (
        "default_queue"
    )
    tomorrow = assign(policy, rule, account_owner=None, counters=c, now=NOON + DAY)
    assert tomorrow == Assignment("inbound", "a@x", "round_robin")


def test_fixed_uses_the_rules_assignee_then_the_teams() -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["teams"]["inbound"] = {"members": ["a@x"], "assignee": "team-lead@x"}
        raw["routing"]["rules"][1]["assignment"] = "fixed"

    policy = policy_with(mutate)
    rule = rule_named(policy, "hot_inbound")
    got = assign(policy, rule, account_owner="olga@x", counters=counters(), now=NOON)
    assert got == Assignment("inbound", "team-lead@x", "fixed")

    named = rule.model_copy(update={"assignee": "named@x"})
    got = assign(policy, named, account_owner="olga@x", counters=counters(), now=NOON)
    assert got == Assignment("inbound", "named@x", "fixed")


def test_nobody_to_take_it_falls_to_the_default_queue_assignee() -> None:
    policy = policy_with(
        lambda raw: raw["routing"].__setitem__(
            "default_queue", {"team": "queue", "assignee": "q@x"}
        )
    )
    rule = rule_named(policy, "hot_inbound")  # inbound has no members in the default policy
    got = assign(policy, rule, account_owner=None, counters=counters(), now=NOON)
    assert got.strategy == "default_queue"
    assert got.assignee == "q@x"


def test_round_robin_does_not_touch_counters_when_the_team_is_empty(
    default: CompiledPolicy,
) -> None:
    c = counters()
    assign(default, rule_named(default, "hot_inbound"), account_owner=None, counters=c, now=NOON)
    assert c.values == {}
    assert c.dirty == set()
