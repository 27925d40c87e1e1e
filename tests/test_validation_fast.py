"""The batch fast path (``fast_events``, the normalisers' core forms) gives exactly what the
per-event path gives: the same events, the same rejections with the same field, code and
message. The reference is the per-event code as it was before the fast path."""

from __future__ import annotations

import copy
import random
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from app.errors import first_error
from app.events import (
    Event,
    EventStatus,
    normalise_country,
    normalise_domain,
    normalise_email,
    normalise_slug,
)
from app.ingest import schemas
from app.ingest.native import validate_batch
from app.ingest.schemas import (
    EVENT_ADAPTER,
    EventIn,
    FastCountry,
    FastDomain,
    FastEmail,
    FastSlug,
    check_event,
    fast_events,
    to_event,
)
from app.observability.logging import REQUEST_ID
from app.policy.defaults import default_policy_raw
from app.policy.schema import CompiledPolicy
from app.policy.store import validate_or_raise
from bench.workload import EventFactory, make_accounts, make_leads

NOW = time.time()
POLICY = CompiledPolicy(1, validate_or_raise(default_policy_raw()))

# -- the reference: the per-event path as it was -------------------------------------------


def old_to_event(e: EventIn, *, received_at: float, transport: str, raw: Any = None) -> Event:
    lead_attrs = {k: v for k, v in e.lead.traits.items() if k not in schemas.LEAD_RESERVED}
    for key in ("first_name", "last_name", "title", "country", "phone"):
        value = getattr(e.lead, key)
        if value is not None:
            lead_attrs[key] = value
    account_attrs: dict[str, Any] = {}
    domain = None
    if e.account is not None:
        domain = e.account.domain
        account_attrs = {
            k: v for k, v in e.account.traits.items() if k not in schemas.ACCOUNT_RESERVED
        }
        for key in ("name", "industry", "employees", "country", "annual_revenue"):
            value = getattr(e.account, key)
            if value is not None:
                account_attrs[key] = value
    return Event(
        event_id=e.event_id,
        type=e.type,
        occurred_at=e.occurred_at.timestamp(),
        received_at=received_at,
        source=e.source,
        transport=transport,
        email=e.lead.email,
        anonymous_id=e.lead.anonymous_id,
        user_id=e.lead.user_id,
        lead_attrs=lead_attrs,
        account_domain=domain,
        account_attrs=account_attrs,
        campaign=e.campaign,
        properties=e.properties,
        raw=raw if raw is not None else e.model_dump(mode="json", exclude_defaults=True),
        raw_json=None,
        request_id=REQUEST_ID.get(),
    )


def old_validate_batch(items: list[Any]) -> tuple[list[Event], list[EventStatus | None]]:
    events: list[Event] = []
    slots: list[EventStatus | None] = []
    for i, item in enumerate(items):
        try:
            parsed = EVENT_ADAPTER.validate_python(item)
        except ValidationError as exc:
            field, code, message = first_error(exc)
            event_id = item.get("event_id") if isinstance(item, dict) else None
            path = f"events[{i}].{field}" if field else f"events[{i}]"
            eid = str(event_id) if isinstance(event_id, str | int) else ""
            slots.append(EventStatus(eid, "rejected", code, path, message))
            continue
        ev = old_to_event(parsed, received_at=NOW, transport="http", raw=item)
        bad = check_event(ev, POLICY, NOW)
        if bad is not None:
            bad.field = f"events[{i}].{bad.field}"
            slots.append(bad)
            continue
        events.append(ev)
        slots.append(None)
    return events, slots


def snapshot(ev: Event) -> tuple[Any, ...]:
    """Everything about an event, dict key order included (it reaches the stored JSON)."""
    return (ev, list(ev.lead_attrs.items()), list(ev.account_attrs.items()))


def assert_same_as_before(items: list[Any]) -> None:
    expected_events, expected_slots = old_validate_batch(copy.deepcopy(items))
    events, slots = validate_batch(copy.deepcopy(items), POLICY, NOW)
    assert slots == expected_slots
    assert [snapshot(e) for e in events] == [snapshot(e) for e in expected_events]


# -- events ---------------------------------------------------------------------------------


def base() -> dict[str, Any]:
    return {
        "event_id": "evt-1",
        "type": "pricing_page_view",
        "occurred_at": "2026-01-05T10:00:00Z",
        "source": "website",
        "lead": {"email": "dana@acme.com", "title": "VP Sales"},
        "account": {
            "domain": "acme.com",
            "industry": "software",
            "employees": 1200,
            "country": "US",
            "annual_revenue": 5e7,
            "name": " Acme Inc. ",
        },
        "properties": {"url": "/pricing"},
    }


def variant(path: str, value: Any) -> dict[str, Any]:
    """The base event with ``path`` (dotted) set to ``value``; ``...`` deletes it."""
    ev = base()
    *parents, key = path.split(".")
    target = ev
    for p in parents:
        target = target[p]
    if value is ...:
        del target[key]
    else:
        target[key] = value
    return ev


EMAILS = [
    "dana@acme.com",
    "Dana@Acme.COM",
    "  dana@acme.com  ",
    "\tdana@acme.com\n",
    "\x1cdana@acme.com",
    "dana@acme.com\x1f",
    "dana.o'neil+intent@sub.acme.co.uk",
    "dana@acme",
    "dana@@acme.com",
    "dana smith@acme.com",
    "dana@acme.com.",
    "dana@a_b.com",
    "dürer@acme.com",
    "DÜRER@ACME.COM",
    "\u212a@acme.com",  # KELVIN SIGN, lower-cases to "k"
    "dana@\u212acme.com",
    "not-an-email",
    "",
    "   ",
    123,
    None,
]
DOMAINS = [
    "acme.com",
    "ACME.COM",
    " acme.com\t",
    "www.acme.com",
    "WWW.Acme.com",
    "www.com",
    "wwx.acme.com",
    "ww.acme.com",
    "w.acme.com",
    "www2.acme.com",
    "wwwacme.com",
    "https://www.Acme.com/about",
    "http://acme.com:8080/x",
    "acme.com/pricing",
    "acme.com.",
    "acme.com..",
    "localhost",
    "acme",
    "-acme.com",
    "acme-.com",
    "a-b.co",
    "acme.c",
    "acme.123",
    "a" * 63 + ".com",
    "a" * 64 + ".com",
    ".".join(["abcdefghi"] * 25) + ".com",  # 253 characters
    ".".join(["abcdefghi"] * 25) + ".comx",  # 254
    "http://[::1",
    "http://[abc]/",
    "bücher.de",
    "ａｃｍｅ.com",
    "\x1cacme.com",
    "",
    "  ",
    5,
    None,
]
COUNTRIES = [
    "US",
    "us",
    " De ",
    "USA",
    "u",
    "\u0131e",
    "\u017fe",
    "12",
    "",
    "  ",
    "\x1cus",
    1,
    None,
]
SLUGS = [
    "software",
    "SOFTWARE",
    "  internet ",
    "Financial Services",
    "financial_services",
    "e__commerce",
    "__x__",
    "_x",
    "a--b",
    "ÄRZTE",
    "",
    "  ",
    7,
    None,
]
EDGE_EVENTS: list[Any] = [
    base(),
    *(variant("lead.email", v) for v in EMAILS),
    *(variant("account.domain", v) for v in DOMAINS),
    *(variant("account.country", v) for v in COUNTRIES),
    *(variant("lead.country", v) for v in COUNTRIES),
    *(variant("account.industry", v) for v in SLUGS),
    *(
        variant("occurred_at", v)
        for v in (
            "2026-01-05T10:00:00",  # naive: UTC
            "2026-01-05T10:00:00+05:30",
            "2000-01-01T00:00:00Z",
            "1999-12-31T23:59:59.999999Z",
            "2000-01-01T00:30:00+01:00",
            "2000-01-01T00:00:00-00:01",
            1_767_607_200,
            1_767_607_200_000,
            1_767_607_200.5,
            "2999-01-01T00:00:00Z",  # in the future: check_event
            "yesterday",
            None,
            ...,
        )
    ),
    variant("lead", {}),
    variant("lead", {"title": "CTO"}),
    variant("lead", {"anonymous_id": "  a-1  "}),
    variant("lead", {"anonymous_id": "   "}),
    variant("lead", {"user_id": "u-1", "email": None}),
    variant(
        "lead",
        {"email": "dana@acme.com", "phone": " +1 555 ", "title": "CTO", "first_name": "Dana"},
    ),
    variant("lead", {"email": "dana@acme.com", "nickname": "dd"}),
    variant("lead", "dana@acme.com"),
    variant("lead", ...),
    variant("lead.traits", {"email": "x@y.z", "plan": "pro", "title": "t", "seats": 4}),
    variant("account.traits", {"domain": "x.com", "tier": "tier_1", "region": "emea"}),
    variant("account.traits", "not a dict"),
    variant("account.region", "emea"),
    variant("account", None),
    variant("account", ...),
    variant("account", {}),
    variant("account", "acme.com"),
    *(variant("account.employees", v) for v in ("12", 12.0, 12.5, -1, True, 10_000_001, None)),
    *(variant("account.annual_revenue", v) for v in ("1e3", 5, 1e16, -1.0, "nan", None)),
    *(variant("type", v) for v in ("Page_View", "site_visit\n", "9abc", "identify", "nope", 3)),
    *(variant("event_id", v) for v in ("  e-2  ", "", "x" * 201, 5, None, ...)),
    *(variant("campaign", v) for v in ("  q4  ", "", None)),
    *(variant("source", v) for v in ("", "  linkedin_ads ", ...)),
    *(variant("properties", v) for v in ({}, {"url": "/x", "n": [1, 2]}, "x", None)),
    variant("extra", 1),
    "not an event",
    5,
    None,
    [],
]


@pytest.mark.parametrize("item", EDGE_EVENTS, ids=range(len(EDGE_EVENTS)))
def test_each_edge_case_gives_what_it_gave_before(item: Any) -> None:
    assert_same_as_before([item])


def test_a_mixed_batch_keeps_every_position_and_path() -> None:
    assert_same_as_before(EDGE_EVENTS)
    _, slots = validate_batch(copy.deepcopy(EDGE_EVENTS), POLICY, NOW)
    assert sum(s is None for s in slots) > 50  # the list holds accepted events too
    rejected = [s for s in slots if s is not None]
    assert {s.code for s in rejected} >= {"value_error", "missing", "unknown_field", "string_type"}


def workload_events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    accounts = make_accounts(200, rng)
    factory = EventFactory(make_leads(2000, accounts, rng), rng, "fast")
    return [factory.event(NOW, rich=i % 2 == 0) for i in range(n)]


def test_the_benchmark_workload_gives_what_it_gave_before_and_all_takes_the_fast_path() -> None:
    items = workload_events(1000, seed=3)
    assert_same_as_before(items)
    # If the fast form stopped covering ordinary events, the speed would go unnoticed.
    assert all(ev is not None for ev in fast_events(items, received_at=NOW, transport="http"))


def test_what_the_fast_path_leaves_to_the_python_normalisers() -> None:
    """Values the core forms do not cover go the per-event way, and still come out right."""
    cases = [
        ("account.domain", "https://www.Acme.com/about", "account_domain", "acme.com"),
        ("account.domain", "www.acme.com", "account_domain", "acme.com"),
        ("account.domain", "acme.com.", "account_domain", "acme.com"),
        ("account.industry", "Financial Services", "industry", "financial_services"),
        ("lead.email", "DÜRER@acme.com", "email", "dürer@acme.com"),
        ("account.country", "\u0131e", "country", "IE"),
    ]
    for path, value, attr, normal in cases:
        item = variant(path, value)
        assert fast_events([item], received_at=NOW, transport="http") == [None], value
        (ev,), _ = validate_batch([item], POLICY, NOW)
        got = ev.account_attrs.get(attr) if attr in ("industry", "country") else getattr(ev, attr)
        assert got == normal


def test_to_event_is_unchanged_for_the_kafka_and_single_event_paths() -> None:
    """``to_event`` (which the Kafka consumer and single events use) against the old one,
    with ``raw`` given and without it (then the model's own dump is stored)."""
    items = [e for e in EDGE_EVENTS if isinstance(e, dict)] + workload_events(200, seed=5)
    checked = 0
    for item in items:
        try:
            parsed = EVENT_ADAPTER.validate_python(item)
        except ValidationError:
            continue
        for raw in (item, None):
            new = to_event(parsed, received_at=NOW, transport="kafka", raw=raw)
            old = old_to_event(parsed, received_at=NOW, transport="kafka", raw=raw)
            assert snapshot(new) == snapshot(old)
        checked += 1
    assert checked > 200


# -- the normalisers' core forms ------------------------------------------------------------

FAST_FORMS = [
    (FastEmail, normalise_email, EMAILS),
    (FastDomain, normalise_domain, DOMAINS),
    (FastCountry, normalise_country, COUNTRIES),
    (FastSlug, normalise_slug, SLUGS),
]


def fast(form: Any, value: str) -> str | None:
    """What the core form makes of ``value``, or None where it leaves it to Python."""
    try:
        out: str = TypeAdapter(form).validate_python(value)
    except ValidationError:
        return None
    return out


def python(normalise: Any, value: str) -> str | None:
    try:
        out: str = normalise(value)
    except ValueError:
        return None
    return out


@pytest.mark.parametrize(("form", "normalise", "values"), FAST_FORMS)
def test_a_core_form_accepts_only_what_its_normaliser_accepts_with_the_same_result(
    form: Any, normalise: Any, values: list[Any]
) -> None:
    accepted = 0
    for v in values:
        if not isinstance(v, str):
            continue
        got = fast(form, v)
        if got is not None:
            assert got == python(normalise, v), repr(v)
            accepted += 1
    assert accepted >= 3


@pytest.mark.parametrize(
    ("form", "value", "normal"),
    [
        (FastEmail, " Dana.Smith@ACME.com ", "dana.smith@acme.com"),
        (FastDomain, " Acme.COM ", "acme.com"),
        (FastDomain, "ww.acme.com", "ww.acme.com"),
        (FastCountry, " de ", "DE"),
        (FastSlug, " Financial_Services ", "financial_services"),
    ],
)
def test_a_core_form_covers_the_usual_spellings(form: Any, value: str, normal: str) -> None:
    assert fast(form, value) == normal


@pytest.mark.parametrize(
    ("form", "value"),
    [
        (FastDomain, "www.acme.com"),
        (FastDomain, "WwW.acme.com"),
        (FastDomain, "https://acme.com"),
        (FastDomain, "acme.com."),
        (FastDomain, "acme.com/x"),
        (FastEmail, "\x1cdana@acme.com"),
        (FastEmail, "\u212a@acme.com"),
        (FastCountry, "\u0131e"),
        (FastSlug, "Financial Services"),
        (FastSlug, ""),
    ],
)
def test_a_core_form_leaves_what_needs_python_to_python(form: Any, value: str) -> None:
    assert fast(form, value) is None


# Characters where Python and Rust (pydantic-core) could differ: whitespace that only Python
# strips, case mappings into ASCII, non-ASCII letters, and the separators the forms parse.
TRICKY = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2003\u3000\u212a\u0131\u017f\u0130éÄß"
ALPHABETS = {
    "email": "aAzZ09.-_+'@w" + TRICKY,
    "domain": "aAwWzZ09.-/:_" + TRICKY,
    "country": "aAuUsSiIzZ1" + TRICKY,
    "slug": "aAzZ09_- ." + TRICKY,
}


@settings(max_examples=3000, deadline=None)
@given(
    st.sampled_from(FAST_FORMS).flatmap(
        lambda f: st.tuples(
            st.just(f),
            st.text(
                alphabet=ALPHABETS[f[1].__name__.removeprefix("normalise_")],
                min_size=0,
                max_size=24,
            ),
        )
    )
)
def test_property_core_form_implies_the_normalisers_result(case: tuple[Any, str]) -> None:
    (form, normalise, _), value = case
    got = fast(form, value)
    if got is not None:
        assert got == python(normalise, value)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(EMAILS).map(lambda v: variant("lead.email", v))
        | st.sampled_from(DOMAINS).map(lambda v: variant("account.domain", v))
        | st.sampled_from(SLUGS).map(lambda v: variant("account.industry", v)),
        max_size=12,
    )
)
def test_property_any_batch_gives_what_it_gave_before(items: list[Any]) -> None:
    assert_same_as_before(items)


# -- the fast schema follows EventIn --------------------------------------------------------

NORMALISED = {"email", "domain", "country", "industry"}


def comparable(schema: Any, *, fast_form: bool = False) -> Any:
    """A JSON schema without what legitimately differs between EventIn and its fast form:
    names, descriptions, defaults, and the core forms' own pattern and length."""
    if isinstance(schema, list):
        return [comparable(s, fast_form=fast_form) for s in schema]
    if not isinstance(schema, dict):
        return schema.replace("_Fast", "") if isinstance(schema, str) else schema
    out = {}
    for key, value in schema.items():
        if key in ("title", "description", "default", "example"):
            continue
        if key in ("properties", "$defs"):
            out[key.replace("_Fast", "")] = {
                k.replace("_Fast", ""): comparable(v, fast_form=k in NORMALISED)
                for k, v in value.items()
            }
        elif fast_form and key in ("pattern", "maxLength"):
            continue
        else:
            out[key] = comparable(value, fast_form=fast_form)
    return out


def test_the_fast_schema_has_eventins_fields_and_constraints() -> None:
    """A field or constraint added to EventIn and not to the fast form would make the fast
    path accept what EventIn refuses: the two must stay the same but for the normalisers."""
    model = comparable(EventIn.model_json_schema())
    fast_schema = TypeAdapter(schemas._FastEventIn).json_schema()
    fast_schema["$defs"] = {k.replace("_Fast", ""): v for k, v in fast_schema["$defs"].items()}
    assert comparable(fast_schema) == model
    assert set(model["$defs"]) == {"LeadIn", "AccountIn"}
