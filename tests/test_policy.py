"""The policy document: schema validation, conditions, the default policy's ICP and bands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from app.policy.conditions import Condition, Context, compile_condition
from app.policy.defaults import default_policy_raw
from app.policy.schema import CompiledPolicy, PolicyDoc, SignalSpec, parse_duration, parse_policy
from app.policy.store import save_version
from tests.support.harness import Service

DAY = 86400.0


def compiled(raw: dict[str, Any] | None = None) -> CompiledPolicy:
    doc, errors = parse_policy(default_policy_raw() if raw is None else raw)
    assert errors == []
    assert doc is not None
    return CompiledPolicy(1, doc)


def errors_after(mutate: Callable[[dict[str, Any]], None]) -> list[str]:
    raw = default_policy_raw()
    mutate(raw)
    doc, errors = parse_policy(raw)
    assert doc is None
    return [str(e) for e in errors]


@pytest.fixture(scope="module")
def policy() -> CompiledPolicy:
    return compiled()


# --- the shipped default -----------------------------------------------------------


def test_default_policy_parses_without_errors() -> None:
    doc, errors = parse_policy(default_policy_raw())
    assert errors == []
    assert isinstance(doc, PolicyDoc)


def test_default_signals_follow_the_product_table(policy: CompiledPolicy) -> None:
    assert policy.signals == {
        "demo_request": SignalSpec(20, 14 * DAY),
        "pricing_page_view": SignalSpec(15, 7 * DAY),
        "content_download": SignalSpec(10, 10 * DAY),
        "site_visit": SignalSpec(5, 3 * DAY),
        "email_click": SignalSpec(5, 5 * DAY),
        "email_open": SignalSpec(5, 5 * DAY),
        "careers_page_view": SignalSpec(-10, 30 * DAY),
        "form_submission": SignalSpec(15, 10 * DAY),
        "meeting_booked": SignalSpec(20, 14 * DAY),
        "chat_message": SignalSpec(10, 7 * DAY),
    }
    assert policy.fit_max == 50
    assert policy.intent_max == 50
    assert policy.doc.routing.cooldown == DAY


@pytest.mark.parametrize(
    ("event_name", "signal"),
    [
        ("Demo Requested", "demo_request"),
        ("Content Downloaded", "content_download"),
        ("Email Link Clicked", "email_click"),
        ("Email Opened", "email_open"),
        ("Order Completed", None),
    ],
)
def test_default_segment_track_mapping(
    policy: CompiledPolicy, event_name: str, signal: str | None
) -> None:
    assert policy.signal_for_segment_track(event_name) == signal


@pytest.mark.parametrize(
    ("path", "signal"),
    [
        ("/pricing", "pricing_page_view"),
        ("/pricing/enterprise", "pricing_page_view"),
        ("/careers", "careers_page_view"),
        ("/jobs/42", "careers_page_view"),
        ("/blog/intent-decay", "site_visit"),
        ("/", "site_visit"),
    ],
)
def test_default_segment_page_mapping(policy: CompiledPolicy, path: str, signal: str) -> None:
    assert policy.signal_for_page(path) == signal


# --- ICP fit of the default policy -------------------------------------------------


def fit_ctx(
    *,
    title: str | None = "VP Sales",
    email_domain: str | None = "acme.com",
    lead_country: str | None = None,
    employees: int | None = 1200,
    industry: str | None = "software",
    country: str | None = "US",
    annual_revenue: float | None = 50_000_000,
) -> Context:
    return {
        "lead": {"title": title, "email_domain": email_domain, "country": lead_country},
        "account": {
            "employees": employees,
            "industry": industry,
            "country": country,
            "annual_revenue": annual_revenue,
        },
    }


def rules_matched(policy: CompiledPolicy, ctx: Context) -> set[str]:
    return {name for name, _ in policy.fit(ctx)[1]}


def test_ideal_lead_scores_fifty_clamped(policy: CompiledPolicy) -> None:
    fit, matched = policy.fit(fit_ctx())
    assert fit == 50
    assert dict(matched) == {
        "company_size_in_icp": 10,
        "industry_in_icp": 10,
        "decision_maker_title": 15,
        "location_in_service_area": 10,
        "revenue_in_range": 5,
    }


@pytest.mark.parametrize(
    "domain", ["gmail.com", "GMail.com", "yahoo.com", "hotmail.com", "outlook.com", "mit.edu"]
)
def test_free_mail_and_academic_domains_get_minus_twenty(
    policy: CompiledPolicy, domain: str
) -> None:
    fit, matched = policy.fit(fit_ctx(email_domain=domain))
    assert ("free_mail_student_or_competitor", -20) in matched
    assert fit == 30


@pytest.mark.parametrize("domain", ["ox.ac.uk", "cs.ox.ac.uk", "student.uni.ac.jp"])
def test_ac_cc_domains_are_academic(policy: CompiledPolicy, domain: str) -> None:
    assert "free_mail_student_or_competitor" in rules_matched(policy, fit_ctx(email_domain=domain))


@pytest.mark.parametrize("domain", ["acme.com", "education.com", "mac.company.io", None])
def test_business_domains_are_not_penalised(policy: CompiledPolicy, domain: str | None) -> None:
    assert "free_mail_student_or_competitor" not in rules_matched(
        policy, fit_ctx(email_domain=domain)
    )


def test_competitor_list_triggers_the_negative_rule() -> None:
    raw = default_policy_raw()
    raw["lists"]["competitors"] = ["Rival.io"]
    policy = compiled(raw)
    assert "free_mail_student_or_competitor" in rules_matched(
        policy, fit_ctx(email_domain="rival.io")
    )


def test_fit_is_clamped_at_zero(policy: CompiledPolicy) -> None:
    ctx = fit_ctx(
        title="Student",
        email_domain="gmail.com",
        employees=3,
        industry="retail",
        country="BR",
        annual_revenue=0,
    )
    fit, matched = policy.fit(ctx)
    assert matched == [("free_mail_student_or_competitor", -20)]
    assert fit == 0


@pytest.mark.parametrize(
    ("employees", "matches"),
    [(199, False), (200, True), (1200, True), (10_000, True), (10_001, False), (None, False)],
)
def test_company_size_bounds_are_inclusive(
    policy: CompiledPolicy, employees: int | None, matches: bool
) -> None:
    assert ("company_size_in_icp" in rules_matched(policy, fit_ctx(employees=employees))) is matches


@pytest.mark.parametrize(
    ("revenue", "matches"),
    [
        (9_999_999, False),
        (10_000_000, True),
        (1_000_000_000, True),
        (1_000_000_001, False),
    ],
)
def test_revenue_bounds_are_inclusive(
    policy: CompiledPolicy, revenue: float, matches: bool
) -> None:
    ctx = fit_ctx(annual_revenue=revenue)
    assert ("revenue_in_range" in rules_matched(policy, ctx)) is matches


@pytest.mark.parametrize(
    ("industry", "matches"),
    [
        ("software", True),
        ("internet", True),
        ("financial_services", True),
        ("healthcare", True),
        ("Software", True),
        ("retail", False),
        (None, False),
    ],
)
def test_industry_in_icp(policy: CompiledPolicy, industry: str | None, matches: bool) -> None:
    assert ("industry_in_icp" in rules_matched(policy, fit_ctx(industry=industry))) is matches


@pytest.mark.parametrize(
    "title",
    [
        "VP Sales",
        "Head of Growth",
        "cto",
        "CTO",
        "Co-Founder",
        "Founder & CEO",
        "Vice President, Marketing",
        "vice-president",
        "SVP Revenue",
        "Director of Engineering",
        "Chief Revenue Officer",
        "CFO",
    ],
)
def test_decision_maker_titles_match(policy: CompiledPolicy, title: str) -> None:
    assert "decision_maker_title" in rules_matched(policy, fit_ctx(title=title))


@pytest.mark.parametrize(
    "title", ["Senior Engineer", "Marketing Manager", "VPN Administrator", "Directory Admin", None]
)
def test_other_titles_do_not_match(policy: CompiledPolicy, title: str | None) -> None:
    assert "decision_maker_title" not in rules_matched(policy, fit_ctx(title=title))


@pytest.mark.parametrize(
    ("lead_country", "account_country", "matches"),
    [
        (None, "US", True),
        (None, "us", True),
        ("GB", "BR", True),
        ("de", None, True),
        ("BR", "US", False),  # the lead's own country wins over the account's
        (None, "BR", False),
        (None, None, False),
    ],
)
def test_location_in_service_area(
    policy: CompiledPolicy, lead_country: str | None, account_country: str | None, matches: bool
) -> None:
    ctx = fit_ctx(lead_country=lead_country, country=account_country)
    assert ("location_in_service_area" in rules_matched(policy, ctx)) is matches


# --- bands with hysteresis ---------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "previous", "band"),
    [
        (80, None, "hot"),
        (80, "warm", "hot"),
        (79.99, None, "warm"),
        (79, "cool", "warm"),
        (50, "cool", "warm"),
        (50, None, "warm"),
        (49.99, None, "cool"),
        (25, "cold", "cool"),
        (24.99, None, "cold"),
        (0, None, "cold"),
        (100, "cold", "hot"),
        # hysteresis: once hot, a lead stays hot until it falls below 70
        (75, "hot", "hot"),
        (70, "hot", "hot"),
        (69.99, "hot", "warm"),
        (69, "hot", "warm"),
        (30, "hot", "cool"),
        # bands without exit_below leave at their own min
        (49, "warm", "cool"),
        (24, "cool", "cold"),
        # a previous band the policy no longer knows has no effect
        (75, "scorching", "warm"),
    ],
)
def test_band_for_with_hysteresis(
    policy: CompiledPolicy, total: float, previous: str | None, band: str
) -> None:
    assert policy.band_for(total, previous) == band


def test_band_rank_orders_bands(policy: CompiledPolicy) -> None:
    rank = policy.band_rank
    assert rank["hot"] > rank["warm"] > rank["cool"] > rank["cold"]


# --- parse_policy errors name exact paths ------------------------------------------


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        node: Any = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def test_unknown_band_in_a_rule() -> None:
    assert errors_after(_set(["routing", "rules", 0, "when", "band"], "hott")) == [
        'routing.rules[0].when.band: unknown band "hott"'
    ]


def test_unknown_band_in_a_band_list() -> None:
    assert errors_after(_set(["routing", "rules", 1, "when", "band"], ["hot", "hott"])) == [
        'routing.rules[1].when.band: unknown band "hott"'
    ]


def test_unknown_route_band() -> None:
    assert errors_after(_set(["routing", "route_bands"], ["hot", "tepid"])) == [
        'routing.route_bands[1]: unknown band "tepid"'
    ]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (["routing", "rules", 0, "colour"], "routing.rules[0].colour: unknown field"),
        (["routing", "colour"], "routing.colour: unknown field"),
        (["teams", "inbound", "colour"], "teams.inbound.colour: unknown field"),
        (["fit", "rules", 1, "when", "bogus"], "fit.rules[1].when.bogus: unknown field"),
        (
            ["fit", "rules", 3, "when", "any", 1, "all", 0, "bogus"],
            "fit.rules[3].when.any[1].all[0].bogus: unknown field",
        ),
        (["colour"], "colour: unknown field"),
    ],
)
def test_unknown_fields_are_refused(path: list[Any], expected: str) -> None:
    assert errors_after(_set(path, 1)) == [expected]


@pytest.mark.parametrize("bad", ["3q", "", "d", "fortnight", True, [1]])
def test_bad_durations_are_refused_with_their_path(bad: Any) -> None:
    errors = errors_after(_set(["signals", "demo_request", "half_life"], bad))
    assert len(errors) == 1
    assert errors[0].startswith("signals.demo_request.half_life: ")


def test_bad_duration_message_names_the_value() -> None:
    assert errors_after(_set(["routing", "cooldown"], "3q")) == [
        "routing.cooldown: invalid duration '3q': use seconds or a string like 14d, 12h, 30m"
    ]


@pytest.mark.parametrize("bad", [0, -5, "0d", "0"])
def test_durations_must_be_positive(bad: Any) -> None:
    assert errors_after(_set(["signals", "site_visit", "half_life"], bad)) == [
        "signals.site_visit.half_life: a duration must be positive"
    ]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("14d", 14 * DAY),
        ("12h", 12 * 3600.0),
        ("30m", 1800.0),
        ("90s", 90.0),
        ("500ms", 0.5),
        ("2w", 14 * DAY),
        ("1.5h", 5400.0),
        (" 7d ", 7 * DAY),
        ("3600", 3600.0),
        (3600, 3600.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


def test_unknown_list_in_a_fit_rule() -> None:
    errors = errors_after(_set(["fit", "rules", 0, "when"], {"field": "x.y", "in_list": "nope"}))
    # field roots are checked too
    assert any(e.startswith("fit.rules[0].when: ") for e in errors)
    errors = errors_after(
        _set(["fit", "rules", 0, "when"], {"field": "account.domain", "in_list": "tier_a"})
    )
    assert errors == ['fit.rules[0].when: unknown list "tier_a"']


def test_unknown_list_in_a_routing_condition() -> None:
    errors = errors_after(
        _set(
            ["routing", "rules", 1, "when", "conditions"],
            [{"field": "lead.email_domain", "eq": "acme.com"}, {"field": "a.b", "exists": True}],
        )
    )
    assert errors == [
        'routing.rules[1].when.conditions[1]: field "a.b" must start with one of lead, '
        "account, score, event followed by a dot"
    ]
    errors = errors_after(
        _set(
            ["routing", "rules", 1, "when", "conditions"],
            [{"field": "lead.email_domain", "in_list": "vip"}],
        )
    )
    assert errors == ['routing.rules[1].when.conditions[0]: unknown list "vip"']


def test_unknown_nested_list_names_its_exact_path() -> None:
    errors = errors_after(_set(["fit", "rules", 5, "when", "any", 0, "in_list"], "freemail"))
    # The same path pydantic gives any other error of that nested condition:
    bad_field = errors_after(_set(["fit", "rules", 5, "when", "any", 0, "field"], "domain"))
    assert bad_field[0].startswith("fit.rules[5].when.any[0]: ")
    assert errors == ['fit.rules[5].when.any[0]: unknown list "freemail"']


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ["segment", "track", "Demo Requested"],
            "demo_requested",
            'segment.track.Demo Requested: unknown signal "demo_requested"',
        ),
        (
            ["segment", "pages", 1, "signal"],
            "careers",
            'segment.pages[1].signal: unknown signal "careers"',
        ),
        (["segment", "default_page"], "visit", 'segment.default_page: unknown signal "visit"'),
    ],
)
def test_unknown_signals_in_the_segment_mapping(path: list[Any], value: str, expected: str) -> None:
    assert errors_after(_set(path, value)) == [expected]


def test_unknown_teams() -> None:
    assert errors_after(_set(["routing", "rules", 1, "team"], "outbound")) == [
        'routing.rules[1].team: unknown team "outbound"'
    ]
    assert errors_after(_set(["routing", "default_queue", "team"], "nobody")) == [
        'routing.default_queue.team: unknown team "nobody"'
    ]


def test_unknown_tier() -> None:
    assert errors_after(_set(["routing", "rules", 0, "when", "tier"], "tier_4")) == [
        'routing.rules[0].when.tier: unknown tier "tier_4" (use tier_1, tier_2, tier_3 or none)'
    ]


def test_rule_kind_constraints() -> None:
    assert errors_after(_set(["routing", "rules", 2, "when", "band"], "hot")) == [
        "routing.rules[2].when.band: account rules do not have a band"
    ]
    assert errors_after(_set(["routing", "rules", 1, "when", "active_leads_gte"], 2)) == [
        "routing.rules[1].when.active_leads_gte: only account rules count leads"
    ]


def test_duplicate_rule_names() -> None:
    def dup(raw: dict[str, Any]) -> None:
        raw["routing"]["rules"].append(dict(raw["routing"]["rules"][1]))

    assert errors_after(dup) == ['routing.rules[3].name: duplicate rule name "hot_inbound"']


def test_band_errors() -> None:
    assert errors_after(_set(["scoring", "bands", 0, "exit_below"], 85)) == [
        "scoring.bands[0].exit_below: must not exceed min"
    ]
    assert errors_after(lambda raw: raw["scoring"]["bands"].pop()) == [
        "scoring.bands: one band must start at min 0"
    ]


def test_signal_names_are_snake_case() -> None:
    assert errors_after(_set(["signals", "DemoRequest"], {"points": 1, "half_life": "1d"})) == [
        "signals.DemoRequest: signal names are lower_snake_case"
    ]


def test_several_errors_are_all_reported() -> None:
    def two(raw: dict[str, Any]) -> None:
        raw["routing"]["rules"][0]["team"] = "ghosts"
        raw["routing"]["rules"][1]["when"]["band"] = "hott"

    assert sorted(errors_after(two)) == [
        'routing.rules[0].team: unknown team "ghosts"',
        'routing.rules[1].when.band: unknown band "hott"',
    ]


@pytest.mark.parametrize("raw", [None, [], "scoring: {}", 42])
def test_a_policy_must_be_a_mapping(raw: Any) -> None:
    doc, errors = parse_policy(raw)
    assert doc is None
    assert [str(e) for e in errors] == ["the policy must be a mapping (YAML or JSON object)"]


@pytest.mark.parametrize(
    ("when", "message"),
    [
        (
            {"field": "account.employees", "gte": 1, "lte": 2},
            "exactly one operator of eq, in, between, gte, lte, matches, exists, in_list",
        ),
        (
            {"field": "account.employees"},
            "exactly one operator of eq, in, between, gte, lte, matches, exists, in_list",
        ),
        (
            {"field": "employees", "gte": 1},
            'field "employees" must start with one of lead, account, score, event '
            "followed by a dot",
        ),
        ({"gte": 1}, "a condition needs `field` and one operator, or all/any/not"),
        (
            {"field": "account.employees", "between": [10, 5]},
            "between: the lower bound exceeds the upper bound",
        ),
        (
            {"any": [], "field": "lead.title"},
            "a combinator (all/any/not) stands alone",
        ),
        ({"any": [], "all": []}, "a combinator (all/any/not) stands alone"),
    ],
)
def test_malformed_conditions(when: dict[str, Any], message: str) -> None:
    assert errors_after(_set(["fit", "rules", 0, "when"], when)) == [
        f"fit.rules[0].when: {message}"
    ]


def test_invalid_regular_expression() -> None:
    errors = errors_after(_set(["fit", "rules", 2, "when", "matches"], "(vp"))
    assert len(errors) == 1
    assert errors[0].startswith("fit.rules[2].when: invalid regular expression: ")


# --- the condition language --------------------------------------------------------

LISTS = {"free_mail": frozenset({"gmail.com", "yahoo.com"}), "empty": frozenset()}
CTX: Context = {
    "lead": {"title": "VP Sales", "email_domain": "Gmail.com", "country": "us", "score": 7},
    "account": {"employees": 1200, "industry": "software", "annual_revenue": 5e7, "tag": ""},
    "score": {"total": 82.5, "band": "hot"},
    "event": {"source": "LinkedIn_Ads", "properties": {"url": "/pricing"}},
}


def holds(cond: dict[str, Any], ctx: Context = CTX) -> bool:
    return compile_condition(Condition.model_validate(cond), LISTS)(ctx)


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ({"field": "lead.country", "eq": "US"}, True),
        ({"field": "lead.country", "eq": "CA"}, False),
        ({"field": "event.source", "eq": "linkedin_ads"}, True),
        ({"field": "score.band", "eq": "HOT"}, True),
        ({"field": "account.employees", "eq": 1200}, True),
        ({"field": "account.employees", "eq": 1201}, False),
        ({"field": "account.missing", "eq": "x"}, False),
        ({"field": "event.properties.url", "eq": "/PRICING"}, True),
        ({"field": "lead.country", "in": ["CA", "US"]}, True),
        ({"field": "lead.country", "in": ["CA", "GB"]}, False),
        ({"field": "account.industry", "in": ["Software", "Internet"]}, True),
        ({"field": "account.employees", "in": [200, 1200]}, True),
        ({"field": "account.missing", "in": ["a"]}, False),
        ({"field": "account.employees", "between": [1200, 1300]}, True),
        ({"field": "account.employees", "between": [1000, 1200]}, True),
        ({"field": "account.employees", "between": [1201, 1300]}, False),
        ({"field": "account.industry", "between": [0, 10]}, False),
        ({"field": "account.missing", "between": [0, 10]}, False),
        ({"field": "score.total", "gte": 82.5}, True),
        ({"field": "score.total", "gte": 82.6}, False),
        ({"field": "score.total", "gte": 0}, True),
        ({"field": "account.missing", "gte": 0}, False),
        ({"field": "score.total", "lte": 82.5}, True),
        ({"field": "score.total", "lte": 82.4}, False),
        ({"field": "account.missing", "lte": 100}, False),
        ({"field": "lead.title", "matches": "^VP\\b"}, True),
        ({"field": "lead.title", "matches": "(?i)^vp\\b"}, True),
        ({"field": "lead.title", "matches": "Sales$"}, True),
        ({"field": "lead.title", "matches": "^Sales"}, False),
        ({"field": "account.employees", "matches": "1200"}, False),  # only strings match
        ({"field": "lead.title", "exists": True}, True),
        ({"field": "lead.title", "exists": False}, False),
        ({"field": "account.missing", "exists": False}, True),
        ({"field": "account.tag", "exists": False}, True),  # empty string counts as absent
        ({"field": "account.tag", "exists": True}, False),
        ({"field": "lead.email_domain", "in_list": "free_mail"}, True),
        ({"field": "account.industry", "in_list": "free_mail"}, False),
        ({"field": "lead.email_domain", "in_list": "empty"}, False),
    ],
)
def test_condition_operators(cond: dict[str, Any], expected: bool) -> None:
    assert holds(cond) is expected


def test_in_list_members_are_compared_case_insensitively_via_the_compiled_policy() -> None:
    raw = default_policy_raw()
    raw["lists"]["vip"] = ["ACME.com"]
    raw["fit"]["rules"].append(
        {"name": "vip", "points": 1, "when": {"field": "lead.email_domain", "in_list": "vip"}}
    )
    policy = compiled(raw)
    assert "vip" in rules_matched(policy, fit_ctx(email_domain="acme.COM"))
    assert "vip" not in rules_matched(policy, fit_ctx(email_domain="acme.org"))


TRUE = {"field": "lead.country", "eq": "us"}
FALSE = {"field": "lead.country", "eq": "fr"}


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ({"all": [TRUE, TRUE]}, True),
        ({"all": [TRUE, FALSE]}, False),
        ({"any": [FALSE, TRUE]}, True),
        ({"any": [FALSE, FALSE]}, False),
        ({"not": TRUE}, False),
        ({"not": FALSE}, True),
        ({"not": {"any": [FALSE, {"all": [TRUE, {"not": FALSE}]}]}}, False),
        ({"all": [{"any": [FALSE, TRUE]}, {"not": {"all": [TRUE, FALSE]}}]}, True),
    ],
)
def test_combinators(cond: dict[str, Any], expected: bool) -> None:
    assert holds(cond) is expected


def test_missing_roots_and_non_mapping_paths_do_not_match() -> None:
    assert holds({"field": "lead.title", "exists": True}, {}) is False
    assert holds({"field": "lead.title.first", "eq": "vp"}) is False
    assert holds({"field": "event.properties.url.path", "exists": False}) is True


def test_list_names_collects_nested_in_list_references() -> None:
    cond = Condition.model_validate(
        {
            "any": [
                {"field": "lead.email_domain", "in_list": "free_mail"},
                {"not": {"all": [{"field": "lead.email_domain", "in_list": "competitors"}]}},
            ]
        }
    )
    assert sorted(cond.list_names("when")) == [
        ("when.any[0]", "free_mail"),
        ("when.any[1].not.all[0]", "competitors"),
    ]


@pytest.mark.parametrize(
    ("path", "where"),
    [
        (["signals", "demo_request", "half_life"], "signals.demo_request.half_life"),
        (["signals", "demo_request", "points"], "signals.demo_request.points"),
        (["routing", "cooldown"], "routing.cooldown"),
        (["fit", "rules", 0, "points"], "fit.rules[0].points"),
    ],
)
def test_nan_is_refused(path: list[Any], where: str) -> None:
    raw = default_policy_raw()
    _set(path, yaml.safe_load(".nan"))(raw)  # what PUT /v1/policy with a YAML body yields
    doc, errors = parse_policy(raw)
    assert doc is None
    assert [e.path for e in errors] == [where]


def test_fit_memo_agrees_with_direct_evaluation() -> None:
    """Fit is memoised on the fields its rules read; the memo must never change a result."""
    import itertools

    doc, errors = parse_policy(default_policy_raw())
    assert doc is not None, errors
    policy = CompiledPolicy(1, doc)
    titles = ["VP Sales", "engineer", None, "Head of Growth"]
    domains = ["acme.com", "gmail.com", "mit.edu"]
    sizes = [199, 200, 10_000, 10_001, None]
    for title, domain, size in itertools.product(titles, domains, sizes):
        ctx = {
            "lead": {"title": title, "email_domain": domain, "country": None},
            "account": {
                "employees": size,
                "industry": "software",
                "country": "US",
                "annual_revenue": None,
            },
        }
        first = policy.fit(ctx)
        assert first == policy._fit(ctx)
        assert policy.fit(ctx) == first  # a memo hit gives the same answer
    # an unhashable attribute value skips the memo instead of failing
    ctx = {"lead": {"title": ["VP"], "email_domain": "acme.com"}, "account": {}}
    assert policy.fit(ctx) == policy._fit(ctx)


# -- the version list over HTTP ------------------------------------------------------------


async def test_version_list_shows_which_version_is_in_force(svc: Service) -> None:
    """One ``active`` (in force), applied ones before it ``superseded``, calibration's
    proposals ``proposed`` until their document is applied."""
    c = svc.client
    doc = (await c.get("/v1/policy")).json()["policy"]
    doc["signals"]["demo_request"]["points"] = 25
    r = await c.put("/v1/policy", json=doc, params={"comment": "more for demos"})
    assert (r.status_code, r.json()["version"], r.json()["status"]) == (200, 2, "active"), r.text
    # A calibration proposal, stored the way calibration stores it.
    proposal = PolicyDoc.model_validate({**doc, "lists": {**doc["lists"], "extra": ["x.com"]}})
    async with svc.runtime.sessionmaker() as session, session.begin():
        await save_version(
            session, proposal, source_text=None, created_by="calibrate", now=0.0, status="proposed"
        )

    async def statuses() -> dict[int, str]:
        r = await c.get("/v1/policy/versions")
        assert r.status_code == 200, r.text
        return {v["version"]: v["status"] for v in r.json()["versions"]}

    assert await statuses() == {3: "proposed", 2: "active", 1: "superseded"}
    in_force = (await c.get("/v1/policy")).json()
    assert (in_force["version"], in_force["status"]) == (2, "active")
    assert (await c.get("/v1/policy", params={"version": 1})).json()["status"] == "superseded"
    assert (await c.get("/v1/policy", params={"version": 3})).json()["status"] == "proposed"

    # Applying the proposal's document makes a new version; the proposal stays a proposal.
    proposed = (await c.get("/v1/policy", params={"version": 3})).json()["policy"]
    r = await c.put("/v1/policy", json=proposed)
    assert (r.status_code, r.json()["version"], r.json()["status"]) == (200, 4, "active"), r.text
    assert await statuses() == {4: "active", 3: "proposed", 2: "superseded", 1: "superseded"}
    assert (await c.get("/v1/policy")).json()["version"] == 4
