"""A decision explains itself in full: every signal's contribution at the transition's
evaluation time, every fit rule matched or not (with the clamp), and the routing rules
evaluated before the one that won, each with the condition that failed ("why not").

The service tests run the real service (SQLite and PostgreSQL) and read the stored
decision back over HTTP; the pure tests hold the traced rule match to ``match_rule``."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

import pytest

from app.clock import FakeClock
from app.policy.conditions import Condition, trace_condition
from app.policy.schema import CompiledPolicy
from app.routing.rules import match_rule, trace_rules
from app.scoring.engine import fit_explanation, signal_breakdown
from tests.support.domain import DAY, HOUR, T0, policy_with
from tests.support.harness import Receiver, Service, event
from tests.support.scenarios import setup_crm

# The default policy's signals: (points, half-life in seconds).
SIGNALS = {
    "demo_request": (20.0, 14 * DAY),
    "content_download": (10.0, 10 * DAY),
    "site_visit": (5.0, 3 * DAY),
    "email_click": (5.0, 5 * DAY),
    "email_open": (5.0, 5 * DAY),
    "careers_page_view": (-10.0, 30 * DAY),
    "chat_message": (10.0, 7 * DAY),
    "pricing_page_view": (15.0, 7 * DAY),
    "form_submission": (15.0, 10 * DAY),
}
# fit 50 with a VP title: size 10, industry 10, location 10, revenue 5 (+ title 15)
ICP = {
    "domain": "acme.com",
    "industry": "software",
    "employees": 1200,
    "country": "US",
    "annual_revenue": 50_000_000,
}


async def use_policy(svc: Service, edit: Any) -> None:
    doc = copy.deepcopy((await svc.client.get("/v1/policy")).json()["policy"])
    edit(doc)
    r = await svc.client.put("/v1/policy", json=doc)
    assert r.status_code == 200, r.text


async def post(svc: Service, *events: dict[str, Any]) -> None:
    r = await svc.client.post("/v1/events", json={"events": list(events)})
    assert r.status_code == 202, r.text
    assert all(s["status"] == "accepted" for s in r.json()["results"]), r.text


async def decision_of(svc: Service, **params: str) -> dict[str, Any]:
    """The one decision of a lead (or account): its list entry and stored webhook body."""
    r = await svc.client.get("/v1/decisions", params=params)
    assert r.status_code == 200, r.text
    [listed] = r.json()["decisions"]
    full = (await svc.client.get(f"/v1/decisions/{listed['id']}")).json()
    data: dict[str, Any] = full["payload"]["data"]
    assert data["decision_id"] == listed["id"]
    return data


def posix(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# -- every signal ------------------------------------------------------------------------


async def test_a_decision_lists_every_signal_and_they_add_up_to_the_intent(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    await setup_crm(svc, hook)  # acme.com: tier_1, owned by jo@ → the first rule wins
    t = clock.now()
    sent = [  # (signal, hours before the demo request)
        ("careers_page_view", 30),
        ("site_visit", 20),
        ("email_open", 12),
        ("email_click", 9),
        ("site_visit", 6),
        ("content_download", 5),
        ("chat_message", 2),
        ("demo_request", 0),  # fit 50 + intent ~44.6: hot
    ]
    events = [
        event(f"s-{i}", signal, t - h * HOUR, email="dana@acme.com", title="VP Sales", account=ICP)
        for i, (signal, h) in enumerate(sent)
    ]
    await post(svc, *events)
    [got] = await hook.wait_for(1)
    data = await decision_of(svc, lead_id="dana@acme.com")
    assert got.json()["data"] == data  # the stored body is the webhook's
    assert data["rule"] == "hot_tier_1" and data["rules_evaluated"] == []

    # Evaluated at the newest event (the demo request), not when the batch ran.
    evaluated_at = posix(data["score"]["evaluated_at"])
    assert evaluated_at == pytest.approx(t, abs=0.001)
    expected: dict[str, dict[str, float]] = {}
    for signal, h in sent:  # PRODUCT.md: each event adds w · 2^(-(t - t_e)/h)
        w, half_life = SIGNALS[signal]
        e = expected.setdefault(signal, {"count": 0.0, "last": -1e18})
        e["count"] += 2 ** (-(h * HOUR) / half_life)
        e["last"] = max(e["last"], t - h * HOUR)
    signals = data["signals"]
    assert len(signals) == 7 > 5  # every signal, not the top 5
    assert {s["signal"] for s in signals} == set(expected)
    for s in signals:
        w, half_life = SIGNALS[s["signal"]]
        e = expected[s["signal"]]
        assert (s["points"], s["half_life"]) == (w, half_life), s
        assert s["decayed_count"] == pytest.approx(e["count"], abs=1e-6), s
        assert s["score"] == pytest.approx(w * e["count"], abs=1e-4), s
        assert posix(s["last_event_at"]) == pytest.approx(e["last"], abs=0.001), s
    assert next(s for s in signals if s["signal"] == "site_visit")["decayed_count"] > 1  # two
    scores = [abs(s["score"]) for s in signals]
    assert scores == sorted(scores, reverse=True)  # largest contribution first
    assert signals[0]["signal"] == "demo_request"
    # The contributions add up to the intent (not clamped here), the negative one included.
    assert 0 < data["score"]["intent"] < 50
    assert sum(s["score"] for s in signals) == pytest.approx(data["score"]["intent"], abs=1e-3)
    assert data["score"]["total"] == pytest.approx(50 + data["score"]["intent"], abs=1e-3)
    # The one-line reason still names the top three.
    assert "top signals: demo_request 20.0, " in data["reason"]


# -- every fit rule ----------------------------------------------------------------------


async def test_every_fit_rule_is_listed_matched_or_not_with_the_clamp(
    svc: Service, clock: FakeClock
) -> None:
    await use_policy(svc, lambda doc: doc["scoring"].update(fit_max=40))
    t = clock.now()
    # VP 15 + size 10 + industry 10 + location 10 = 45, clamped to 40; revenue out of range.
    small_revenue = {**ICP, "domain": "lean.io", "annual_revenue": 2_000_000}
    await post(
        svc,
        event(
            "f-1", "demo_request", t, email="vp@lean.io", title="VP Sales", account=small_revenue
        ),
        event("f-2", "pricing_page_view", t, email="vp@lean.io"),
        event("f-3", "form_submission", t, email="vp@lean.io"),
    )
    data = await decision_of(svc, lead_id="vp@lean.io")
    assert data["score"]["fit"] == 40.0
    assert data["fit_breakdown"] == [
        {"rule": "company_size_in_icp", "points": 10.0, "rule_points": 10.0, "matched": True},
        {"rule": "industry_in_icp", "points": 10.0, "rule_points": 10.0, "matched": True},
        {"rule": "decision_maker_title", "points": 15.0, "rule_points": 15.0, "matched": True},
        {"rule": "location_in_service_area", "points": 10.0, "rule_points": 10.0, "matched": True},
        {"rule": "revenue_in_range", "points": 0.0, "rule_points": 5.0, "matched": False},
        {
            "rule": "free_mail_student_or_competitor",
            "points": 0.0,
            "rule_points": -20.0,
            "matched": False,
        },
        {"rule": "fit_max", "points": -5.0, "rule_points": None, "matched": True, "clamp": True},
    ]
    assert sum(f["points"] for f in data["fit_breakdown"]) == data["score"]["fit"]


def test_a_negative_fit_is_clamped_to_zero_and_says_so() -> None:
    policy = policy_with()
    ctx: dict[str, Any] = {"lead": {"email_domain": "gmail.com"}, "account": {}}
    items = fit_explanation(policy, ctx)
    assert [(f["rule"], f["matched"]) for f in items if f["matched"]] == [
        ("free_mail_student_or_competitor", True),
        ("fit_min", True),
    ]
    assert items[-1] == {
        "rule": "fit_min",
        "points": 20.0,
        "rule_points": None,
        "matched": True,
        "clamp": True,
    }
    assert sum(f["points"] for f in items) == policy.fit(ctx)[0] == 0.0
    assert len(items) == len(policy.fit_rules) + 1


def test_a_signal_the_policy_no_longer_knows_is_not_listed() -> None:
    policy = policy_with()
    accs = {"demo_request": (1.0, T0), "retired_signal": (3.0, T0)}
    [only] = signal_breakdown(policy, accs, T0 + 14 * DAY)
    assert only["signal"] == "demo_request"
    assert (only["decayed_count"], only["score"]) == (0.5, 10.0)  # one half-life later


# -- why not -----------------------------------------------------------------------------


ENTERPRISE_VP = {
    "name": "enterprise_vp",
    "kind": "lead",
    "when": {
        "band": "hot",
        "conditions": [
            {"field": "lead.title", "matches": "(?i)\\bvp\\b"},
            {"field": "account.employees", "gte": 5000},
        ],
    },
    "team": "strategic",
    "assignment": "round_robin",
}


async def test_a_lead_routed_by_the_second_rule_says_why_not_the_first(
    svc: Service, clock: FakeClock
) -> None:
    def edit(doc: dict[str, Any]) -> None:
        rules = doc["routing"]["rules"]
        surge = next(r for r in rules if r["kind"] == "account")
        inbound = next(r for r in rules if r["name"] == "hot_inbound")
        # An account rule first: the lead path skips it silently (another kind).
        doc["routing"]["rules"] = [surge, ENTERPRISE_VP, inbound]

    await use_policy(svc, edit)
    t = clock.now()
    await post(
        svc,
        event("w-1", "demo_request", t, email="dana@acme.com", title="VP Sales", account=ICP),
        event("w-2", "pricing_page_view", t, email="dana@acme.com"),
    )
    data = await decision_of(svc, lead_id="dana@acme.com")
    assert data["rule"] == "hot_inbound" and data["team"] == "inbound"
    # The title matched; the first condition that failed is the head count, with 1,200.
    assert data["rules_evaluated"] == [
        {
            "rule": "enterprise_vp",
            "failed": {
                "field": "account.employees",
                "op": "gte",
                "expected": 5000.0,
                "actual": 1200,
            },
        }
    ]


async def test_the_default_queue_lists_every_lead_rule_with_its_failure(
    svc: Service, clock: FakeClock
) -> None:
    def edit(doc: dict[str, Any]) -> None:
        surge = next(r for r in doc["routing"]["rules"] if r["kind"] == "account")
        lead_rule = {"kind": "lead", "team": "inbound", "assignment": "round_robin"}
        doc["routing"]["rules"] = [
            {**lead_rule, "name": "cold_nurture", "when": {"band": "cold"}},
            {**lead_rule, "name": "tier_1_only", "when": {"band": ["hot"], "tier": ["tier_1"]}},
            surge,
            {
                **lead_rule,
                "name": "big_or_fintech",
                "when": {
                    "band": "hot",
                    "conditions": [
                        {
                            "any": [
                                {"field": "account.employees", "gte": 5000},
                                {"field": "account.industry", "eq": "fintech"},
                            ]
                        }
                    ],
                },
            },
            {
                **lead_rule,
                "name": "not_a_vp",
                "when": {"conditions": [{"not": {"field": "lead.title", "matches": "(?i)vp"}}]},
            },
        ]

    await use_policy(svc, edit)
    r = await svc.client.put("/v1/accounts", json=[{"domain": "acme.com", "tier": "tier_3"}])
    assert r.status_code == 200, r.text
    t = clock.now()
    await post(
        svc,
        event("q-1", "demo_request", t, email="dana@acme.com", title="VP Sales", account=ICP),
        event("q-2", "pricing_page_view", t, email="dana@acme.com"),
    )
    data = await decision_of(svc, lead_id="dana@acme.com")
    assert (data["rule"], data["team"]) == ("default_queue", "queue")
    assert data["rules_evaluated"] == [
        {
            "rule": "cold_nurture",
            "failed": {"field": "band", "op": "eq", "expected": "cold", "actual": "hot"},
        },
        {
            "rule": "tier_1_only",
            "failed": {"field": "tier", "op": "in", "expected": ["tier_1"], "actual": "tier_3"},
        },
        {
            "rule": "big_or_fintech",
            "failed": {
                "field": None,
                "op": "any",
                "expected": None,
                "actual": None,
                "failed": [
                    {
                        "field": "account.employees",
                        "op": "gte",
                        "expected": 5000.0,
                        "actual": 1200,
                    },
                    {
                        "field": "account.industry",
                        "op": "eq",
                        "expected": "fintech",
                        "actual": "software",
                    },
                ],
            },
        },
        {
            "rule": "not_a_vp",
            "failed": {
                "field": "lead.title",
                "op": "not matches",
                "expected": "(?i)vp",
                "actual": "VP Sales",
            },
        },
    ]
    assert "no rule matched: default queue" in data["reason"]

    # The actual values are the person's data: erasing the lead scrubs them from the body.
    r = await svc.client.delete("/v1/leads/dana@acme.com")
    assert r.status_code == 200, r.text
    [listed] = (await svc.client.get("/v1/decisions")).json()["decisions"]
    body = (await svc.client.get(f"/v1/decisions/{listed['id']}")).json()["payload"]
    failed = body["data"]["rules_evaluated"][3]["failed"]
    assert failed["op"] == "not matches" and failed["actual"] != "VP Sales"
    assert "VP Sales" not in str(body)


# -- account surges ----------------------------------------------------------------------


async def test_an_account_surge_lists_every_signal_and_the_rules_before_it(
    svc: Service, clock: FakeClock
) -> None:
    def edit(doc: dict[str, Any]) -> None:
        huge = {
            "name": "huge_surge",
            "kind": "account",
            "when": {"tier": "tier_1", "active_leads_gte": 10},
            "team": "strategic",
            "assignment": "account_owner",
        }
        doc["routing"]["rules"].insert(0, huge)

    await use_policy(svc, edit)
    r = await svc.client.put(
        "/v1/accounts", json=[{"domain": "surge.io", "tier": "tier_1", "owner": "ae@ours.example"}]
    )
    assert r.status_code == 200, r.text
    t = clock.now()
    extra = {"a": "site_visit", "b": "email_click", "c": "content_download"}
    for who, signal in extra.items():  # three leads, each active (a pricing view: 15)
        await post(
            svc,
            event(f"p-{who}", "pricing_page_view", t, email=f"{who}@surge.io"),
            event(f"x-{who}", signal, t - HOUR, email=f"{who}@surge.io"),
        )
    data = await decision_of(svc, account="surge.io")
    assert (data["rule"], data["active_leads"]) == ("account_surge", 3)
    signals = {s["signal"]: s for s in data["signals"]}
    assert set(signals) == {"pricing_page_view", *extra.values()}
    assert signals["pricing_page_view"]["decayed_count"] == pytest.approx(3.0, abs=1e-6)
    assert signals["pricing_page_view"]["score"] == pytest.approx(45.0, abs=1e-4)
    w, h = SIGNALS["content_download"]
    assert signals["content_download"]["score"] == pytest.approx(w * 2 ** (-HOUR / h), abs=1e-4)
    assert sum(s["score"] for s in data["signals"]) == pytest.approx(
        data["score"]["intent"], abs=1e-3
    )
    assert data["fit_breakdown"] == []
    # Only the account rule before it: the lead rules are another kind.
    assert data["rules_evaluated"] == [
        {
            "rule": "huge_surge",
            "failed": {"field": "active_leads", "op": "gte", "expected": 10, "actual": 3},
        }
    ]


# -- the traced match is match_rule --------------------------------------------------------


def _with_rules(rules: list[dict[str, Any]]) -> CompiledPolicy:
    def edit(doc: dict[str, Any]) -> None:
        doc["routing"]["rules"] = rules

    return policy_with(edit)


TRACED = _with_rules(
    [
        {"name": "r_cold", "when": {"band": "cold"}, "team": "inbound"},
        {
            "name": "r_t1_big",
            "when": {
                "band": ["hot", "warm"],
                "tier": ["tier_1", "tier_2"],
                "conditions": [{"field": "account.employees", "between": [500, 5000]}],
            },
            "team": "strategic",
        },
        {
            "name": "r_acct",
            "kind": "account",
            "when": {"tier": "tier_1", "active_leads_gte": 2},
            "team": "strategic",
        },
        {
            "name": "r_not_free",
            "when": {
                "band": "hot",
                "conditions": [
                    {"not": {"field": "lead.email_domain", "in_list": "free_mail"}},
                    {
                        "all": [
                            {"field": "lead.country", "exists": True},
                            {"field": "lead.x", "lte": 3},
                        ]
                    },
                ],
            },
            "team": "inbound",
        },
        {"name": "r_none", "kind": "account", "when": {"tier": "none"}, "team": "queue"},
    ]
)


@pytest.mark.parametrize("kind", ["lead", "account"])
@pytest.mark.parametrize("band", ["hot", "warm", "cold", None])
@pytest.mark.parametrize("tier", ["tier_1", "tier_2", None])
@pytest.mark.parametrize("active", [0, 2])
@pytest.mark.parametrize(
    "ctx",
    [
        {
            "lead": {"email_domain": "acme.com", "country": "US", "x": 2},
            "account": {"employees": 900},
        },
        {"lead": {"email_domain": "gmail.com"}, "account": {"employees": 100}},
        {"lead": {"email_domain": "acme.com", "country": "US", "x": "2"}, "account": {}},
    ],
)
def test_trace_rules_picks_what_match_rule_picks(
    kind: str, band: str | None, tier: str | None, active: int, ctx: dict[str, Any]
) -> None:
    args: dict[str, Any] = {
        "kind": kind,
        "band": band,
        "tier": tier,
        "active_leads": active,
        "ctx": ctx,
    }
    winner, evaluated = trace_rules(TRACED, **args)
    assert winner is match_rule(TRACED, **args)
    names = [r.rule.name for r in TRACED.rules if r.rule.kind == kind]
    before = names[: names.index(winner.rule.name)] if winner else names
    assert [e["rule"] for e in evaluated] == before
    for e in evaluated:  # every listed failure is a real one
        failed = e["failed"]
        assert failed["op"] and (failed["field"] or failed["op"] in ("any", "not"))


def test_condition_failures_name_the_operator_and_the_actual_value() -> None:
    lists = {"free_mail": frozenset({"gmail.com"})}

    def why(cond: dict[str, Any], ctx: dict[str, Any]) -> Any:
        return trace_condition(Condition.model_validate(cond), lists)(ctx)

    lead = {"lead": {"title": "Engineer", "email_domain": "gmail.com", "country": "US"}}
    assert why({"field": "lead.title", "matches": "(?i)vp"}, lead) == {
        "field": "lead.title",
        "op": "matches",
        "expected": "(?i)vp",
        "actual": "Engineer",
    }
    assert why({"field": "lead.country", "in": ["DE", "FR"]}, lead)["expected"] == ["DE", "FR"]
    assert why({"field": "lead.country", "in": ["us"]}, lead) is None  # case-insensitive
    assert why({"field": "lead.phone", "exists": True}, lead) == {
        "field": "lead.phone",
        "op": "exists",
        "expected": True,
        "actual": None,
    }
    assert why({"field": "lead.email_domain", "in_list": "free_mail"}, lead) is None
    assert why({"not": {"field": "lead.email_domain", "in_list": "free_mail"}}, lead) == {
        "field": "lead.email_domain",
        "op": "not in_list",
        "expected": "free_mail",
        "actual": "gmail.com",
    }
    nested_not = {"not": {"all": [{"field": "lead.country", "eq": "US"}]}}
    assert why(nested_not, lead) == {
        "field": None,
        "op": "not",
        "expected": {"all": [{"field": "lead.country", "eq": "US"}]},
        "actual": None,
    }
    first_of_all = {
        "all": [
            {"field": "lead.country", "eq": "US"},
            {"field": "account.employees", "between": [10, 20]},
            {"field": "lead.title", "eq": "CEO"},
        ]
    }
    assert why(first_of_all, lead | {"account": {"employees": 5}}) == {
        "field": "account.employees",
        "op": "between",
        "expected": [10.0, 20.0],
        "actual": 5,
    }
