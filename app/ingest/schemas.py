"""Wire models for events (HTTP and Kafka) and their normalised internal form."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Required

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs it below Python 3.12

from app.events import (
    ACCOUNT_RESERVED,
    ATTRIBUTE_ONLY_TYPES,
    EARLIEST_EVENT,
    EARLIEST_TIMESTAMP,
    FUTURE_TOLERANCE_SECONDS,
    LEAD_RESERVED,
    MAX_EMPLOYEES,
    MAX_REVENUE,
    Country,
    Domain,
    Email,
    Event,
    EventStatus,
    EventType,
    Identifier,
    ShortText,
    Slug,
)
from app.observability.logging import REQUEST_ID
from app.policy.schema import CompiledPolicy

MAX_BATCH_EVENTS = 1000
MAX_BODY_BYTES = 1024 * 1024
# One event as sent, in JSON (Segment's limit for a message, kept for every transport).
MAX_EVENT_BYTES = 32 * 1024

# The same normalisers as pydantic-core constraints, for the values they apply to: plain
# ASCII, already in (or only a strip and a case change away from) the normal form. They
# refuse everything else — a URL or ``www.`` as a domain, a trailing dot, non-ASCII,
# separators Python strips but Rust does not (\x1c-\x1f) — which then takes the Python
# normaliser above. Why that is the same result: the core strips (Rust's White_Space, a
# subset of Python's) and checks the pattern before it changes case, so an accepted value
# is ASCII that Python's strip and lower()/upper() treat the same way, and the pattern
# implies the normaliser's own checks pass and leave it unchanged.
_ALNUM = "A-Za-z0-9"
_LABEL = f"[{_ALNUM}](?:[{_ALNUM}-]{{0,61}}[{_ALNUM}])?"
# A first label that is not "www" (which normalise_domain removes); no look-around in Rust.
_NOT_W = "A-VX-Za-vx-z0-9"
_FIRST_LABEL = (
    f"(?:[{_ALNUM}]{{1,2}}|[{_NOT_W}][{_ALNUM}-][{_ALNUM}]|[wW][{_NOT_W}-][{_ALNUM}]"
    f"|[wW][wW][{_NOT_W}]|[{_ALNUM}][{_ALNUM}-]{{2,61}}[{_ALNUM}])"
)
FastEmail = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        to_lower=True,
        max_length=320,
        pattern=r"^[!-?A-~]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$",
    ),
]
FastDomain = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        to_lower=True,
        max_length=253,
        pattern=f"^{_FIRST_LABEL}\\.(?:{_LABEL}\\.)*[A-Za-z]{{2,63}}$",
    ),
]
FastCountry = Annotated[
    str, StringConstraints(strip_whitespace=True, to_upper=True, pattern=r"^[A-Za-z]{2}$")
]
FastSlug = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, pattern=r"^[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*$"
    ),
]


class LeadIn(BaseModel):
    """Who the event is about: at least one of email, anonymous_id or user_id."""

    model_config = ConfigDict(extra="forbid")

    email: Email | None = None
    anonymous_id: Identifier | None = None
    user_id: Identifier | None = None
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    title: ShortText | None = None
    country: Country | None = None
    phone: ShortText | None = None
    traits: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_identifier(self) -> LeadIn:
        if not (self.email or self.anonymous_id or self.user_id):
            raise ValueError("the lead needs an email, anonymous_id or user_id")
        return self


class AccountIn(BaseModel):
    """The company, e.g. from reverse-IP enrichment or a group call."""

    model_config = ConfigDict(extra="forbid")

    domain: Domain
    name: ShortText | None = None
    industry: Slug | None = None
    employees: int | None = Field(default=None, ge=0, le=MAX_EMPLOYEES)
    country: Country | None = None
    annual_revenue: float | None = Field(default=None, ge=0, le=MAX_REVENUE, allow_inf_nan=False)
    traits: dict[str, Any] = Field(default_factory=dict)


class EventIn(BaseModel):
    """One behavioural event, as posted to ``/v1/events`` or produced to Kafka."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "event_id": "evt_01JDEMO0001",
                "type": "pricing_page_view",
                "occurred_at": "2026-11-23T15:04:05Z",
                "source": "linkedin_ads",
                "lead": {"email": "dana@acme.com", "anonymous_id": "a-93f1", "title": "VP Sales"},
                "account": {
                    "domain": "acme.com",
                    "industry": "software",
                    "employees": 1200,
                    "country": "US",
                },
                "properties": {"url": "/pricing"},
            }
        },
    )

    event_id: Identifier
    type: EventType
    occurred_at: datetime
    source: Identifier = Field(
        description="where it came from; over HTTP it defaults to the API key's name"
    )
    campaign: Identifier | None = None
    lead: LeadIn
    account: AccountIn | None = None
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        v = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
        if v < EARLIEST_EVENT:
            raise ValueError("must not be before 2000-01-01")
        return v


class EventBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(max_length=MAX_BATCH_EVENTS)


EVENT_ADAPTER: TypeAdapter[EventIn] = TypeAdapter(EventIn)

_LEAD_COLUMNS = ("first_name", "last_name", "title", "country", "phone")
_ACCOUNT_COLUMNS = ("name", "industry", "employees", "country", "annual_revenue")


def _event(
    ev: Mapping[str, Any],
    lead: Mapping[str, Any],
    account: Mapping[str, Any] | None,
    occurred_at: float,
    received_at: float,
    transport: str,
    raw: dict[str, Any] | None,
    raw_json: str | None,
    request_id: str | None,
) -> Event:
    """The Event from validated fields (a model's ``__dict__``s or ``_FastEventIn``'s,
    where an omitted optional field is simply absent)."""
    traits = lead.get("traits")
    lead_attrs = {k: v for k, v in traits.items() if k not in LEAD_RESERVED} if traits else {}
    for key in _LEAD_COLUMNS:
        value = lead.get(key)
        if value is not None:
            lead_attrs[key] = value
    account_attrs: dict[str, Any] = {}
    domain = None
    if account is not None:
        domain = account["domain"]
        traits = account.get("traits")
        if traits:
            account_attrs = {k: v for k, v in traits.items() if k not in ACCOUNT_RESERVED}
        for key in _ACCOUNT_COLUMNS:
            value = account.get(key)
            if value is not None:
                account_attrs[key] = value
    properties = ev.get("properties")
    # Positional: the keywords of a 17-field dataclass cost a tenth of this function.
    return Event(
        ev["event_id"],
        ev["type"],
        occurred_at,
        received_at,
        ev["source"],
        transport,
        lead.get("email"),
        lead.get("anonymous_id"),
        lead.get("user_id"),
        lead_attrs,
        domain,
        account_attrs,
        ev.get("campaign"),
        properties if properties is not None else {},
        raw,
        raw_json,
        request_id,
    )


def to_event(
    e: EventIn,
    *,
    received_at: float,
    transport: str,
    raw: dict[str, Any] | None = None,
    raw_json: str | None = None,
) -> Event:
    """The normalised event; ``raw`` (the document as received) is stored for audit."""
    # Field values straight from __dict__: a BaseModel's attributes are slow to read
    # (its __getattr__ hook defeats the interpreter's attribute caches).
    return _event(
        e.__dict__,
        e.lead.__dict__,
        e.account.__dict__ if e.account is not None else None,
        e.occurred_at.timestamp(),
        received_at,
        transport,
        raw
        if raw is not None or raw_json is not None
        else e.model_dump(mode="json", exclude_defaults=True),
        raw_json,
        REQUEST_ID.get(),
    )


# The batch fast path: EventIn's fields, validated into plain dicts (building the three
# models costs as much as the rest of validation) with the normalisers' fast forms, and the
# two Python checks (an identifier; not before 2000) done by fast_events. Anything it does
# not accept goes through EVENT_ADAPTER, for the exact result or error.


@with_config(ConfigDict(extra="forbid"))
class _FastLeadIn(TypedDict, total=False):
    email: FastEmail | None
    anonymous_id: Identifier | None
    user_id: Identifier | None
    first_name: ShortText | None
    last_name: ShortText | None
    title: ShortText | None
    country: FastCountry | None
    phone: ShortText | None
    traits: dict[str, Any]


@with_config(ConfigDict(extra="forbid"))
class _FastAccountIn(TypedDict, total=False):
    domain: Required[FastDomain]
    name: ShortText | None
    industry: FastSlug | None
    employees: Annotated[int | None, Field(ge=0, le=MAX_EMPLOYEES)]
    country: FastCountry | None
    annual_revenue: Annotated[float | None, Field(ge=0, le=MAX_REVENUE, allow_inf_nan=False)]
    traits: dict[str, Any]


@with_config(ConfigDict(extra="forbid"))
class _FastEventIn(TypedDict, total=False):
    event_id: Required[Identifier]
    type: Required[EventType]
    occurred_at: Required[datetime]
    source: Required[Identifier]
    campaign: Identifier | None
    lead: Required[_FastLeadIn]
    account: _FastAccountIn | None
    properties: dict[str, Any]


# One call per batch that never fails: an item the fast form refuses comes back as it is
# (the ``Any`` branch), which is how fast_events tells the two apart.
_FAST_BATCH: TypeAdapter[list[_FastEventIn | Any]] = TypeAdapter(
    list[Annotated[_FastEventIn | Any, Field(union_mode="left_to_right")]]
)


def fast_events(items: list[Any], *, received_at: float, transport: str) -> list[Event | None]:
    """Per item, the Event ``to_event(EVENT_ADAPTER.validate_python(item), raw=item)``
    gives, when the fast form applies; None where it does not (invalid, or a value that
    needs a Python normaliser): validate those with EVENT_ADAPTER."""
    request_id = REQUEST_ID.get()
    out: list[Event | None] = []
    for item, v in zip(items, _FAST_BATCH.validate_python(items), strict=True):
        if v is item:
            out.append(None)
            continue
        lead = v["lead"]
        occurred_at = v["occurred_at"]
        if occurred_at.tzinfo is None:
            occurred_at = occurred_at.replace(tzinfo=UTC)
        ts = occurred_at.timestamp()
        # The timestamp is exact to the microsecond, so this is ``occurred_at < EARLIEST_EVENT``.
        if ts < EARLIEST_TIMESTAMP or not (
            lead.get("email") or lead.get("anonymous_id") or lead.get("user_id")
        ):
            out.append(None)
            continue
        out.append(
            _event(v, lead, v.get("account"), ts, received_at, transport, item, None, request_id)
        )
    return out


def check_event(ev: Event, policy: CompiledPolicy, now: float) -> EventStatus | None:
    """Checks that need the policy or the clock; a rejection, or None when fine."""
    if ev.type not in policy.signals and ev.type not in ATTRIBUTE_ONLY_TYPES:
        return EventStatus(
            ev.event_id,
            "rejected",
            "unknown_event_type",
            "type",
            f'type: unknown event type "{ev.type}" (not a signal in policy '
            f"version {policy.version})",
        )
    if ev.occurred_at > now + FUTURE_TOLERANCE_SECONDS:
        return EventStatus(
            ev.event_id,
            "rejected",
            "occurred_in_future",
            "occurred_at",
            "occurred_at: more than 5 minutes in the future",
        )
    if ev.raw_json is None:
        # What the events table will store, encoded now: a document the parser took but
        # the encoder cannot write (nested past its 254 levels) is refused alone, here.
        try:
            ev.raw_json = orjson.dumps(ev.raw).decode()
        except TypeError:
            return EventStatus(
                ev.event_id,
                "rejected",
                "too_deep",
                None,
                "the event is nested too deeply to store (JSON up to 254 levels)",
            )
    return None
