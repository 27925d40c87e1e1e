"""The domain vocabulary every stage shares: the event, its limits, the normalisers and
field types, the per-event status and the routing candidate. No stage imports an ingest
adapter for these; ingest only turns wire formats into them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import orjson
from pydantic import AfterValidator, StringConstraints

FUTURE_TOLERANCE_SECONDS = 300.0
EARLIEST_EVENT = datetime(2000, 1, 1, tzinfo=UTC)
EARLIEST_TIMESTAMP = EARLIEST_EVENT.timestamp()
MAX_EMPLOYEES = 10_000_000
MAX_REVENUE = 1e15
# Keys the typed fields own: free-form traits never overwrite them.
LEAD_RESERVED = frozenset(
    {
        "email",
        "email_domain",
        "lead_id",
        "source",
        "anonymous_id",
        "user_id",
        "first_name",
        "last_name",
        "title",
        "country",
        "phone",
    }
)
# The account's own columns (ABM list and firmographics), in table order.
ACCOUNT_FIELDS = (
    "name",
    "tier",
    "owner",
    "territory",
    "industry",
    "employees",
    "country",
    "annual_revenue",
)
ACCOUNT_RESERVED = frozenset({"domain", "active_leads", *ACCOUNT_FIELDS})

_EMAIL = re.compile(r"^[^@\s]+@([a-z0-9-]+(?:\.[a-z0-9-]+)+)$")
# RFC 5321's limits: 64 for the local part + "@" + 255 for the domain.
MAX_EMAIL = 320
# C0 and C1 control characters and DEL: never part of an id, a name or a URL (a CR or LF
# in a header or a log line is an injection; a NUL truncates in C libraries and PostgreSQL).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_SLUG = re.compile(r"[^a-z0-9]+")


def no_control(v: str) -> str:
    """``v`` unchanged; a ValueError when it holds a control character."""
    if CONTROL.search(v):
        raise ValueError("must not contain control characters (such as CR, LF, tab or NUL)")
    return v


def normalise_email(v: str) -> str:
    v = no_control(v.strip().lower())
    if len(v) > MAX_EMAIL:
        raise ValueError(f"at most {MAX_EMAIL} characters")
    if not _EMAIL.match(v):
        raise ValueError("not a valid email address")
    return v


def normalise_domain(v: str) -> str:
    """``https://www.Acme.com/about`` → ``acme.com``."""
    v = v.strip().lower()
    if "://" in v:
        v = urlsplit(v).hostname or ""
    v = v.split("/", 1)[0].rstrip(".")
    v = v.removeprefix("www.")
    if not _DOMAIN.match(v):
        raise ValueError("not a valid domain name")
    return v


def normalise_slug(v: str) -> str:
    """``"Financial Services"`` → ``financial_services``."""
    return _SLUG.sub("_", v.strip().lower()).strip("_")


def normalise_country(v: str) -> str:
    v = v.strip().upper()
    if not re.fullmatch(r"[A-Z]{2}", v):
        raise ValueError("use an ISO 3166 alpha-2 country code such as US or DE")
    return v


Email = Annotated[str, AfterValidator(normalise_email)]
Domain = Annotated[str, AfterValidator(normalise_domain)]
Country = Annotated[str, AfterValidator(normalise_country)]
Slug = Annotated[str, AfterValidator(normalise_slug)]
# CONTROL as a pydantic-core pattern (checked in Rust: a Python validator on every id and
# text field cost the batch fast path about a sixth of its time).
NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True, pattern=NO_CONTROL)
]
ShortText = Annotated[
    str, StringConstraints(max_length=300, strip_whitespace=True, pattern=NO_CONTROL)
]
# A name an admin gives (a destination's, say): one line, no control characters.
Name = Identifier
EventType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


# Events that update attributes but carry no signal.
ATTRIBUTE_ONLY_TYPES = frozenset({"identify"})


@dataclass(slots=True)
class Event:
    """A validated, normalised event as the pipeline sees it."""

    event_id: str
    type: str
    occurred_at: float
    received_at: float
    source: str
    transport: str
    email: str | None
    anonymous_id: str | None
    user_id: str | None
    lead_attrs: dict[str, Any]
    account_domain: str | None
    account_attrs: dict[str, Any]
    campaign: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] | None = None
    raw_json: str | None = None  # the document's JSON as received, when we have it
    request_id: str | None = None  # the HTTP request that brought it, for the logs

    def payload(self) -> str:
        """What the events table stores: the event as received."""
        if self.raw_json is not None:
            return self.raw_json
        return orjson.dumps(self.raw).decode()

    def identifiers(self) -> list[str]:
        """Identity keys in order of strength: email, user id, anonymous id."""
        keys = []
        if self.email:
            keys.append(self.email)
        if self.user_id:
            keys.append("user:" + self.user_id)
        if self.anonymous_id:
            keys.append("anon:" + self.anonymous_id)
        return keys


def encoded_size(doc: Any) -> int | None:
    """A document's size as JSON, in bytes; None when it is nested too deep to encode
    (JSON parsers accept ~1,000 levels, orjson encodes 254): refuse it as such."""
    try:
        return len(orjson.dumps(doc, default=str))
    except TypeError:
        return None


def email_domain(email: str | None) -> str | None:
    return email.rsplit("@", 1)[1] if email else None


@dataclass
class EventStatus:
    """What became of one event: accepted, duplicate, or rejected with a code and field."""

    event_id: str
    status: str  # accepted | duplicate | rejected
    code: str | None = None
    field: str | None = None
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "status": self.status}
        if self.code:
            out.update(code=self.code, field=self.field, message=self.message)
        return out


@dataclass
class Candidate:
    """A lead whose band rose, or an account that surged, waiting to be routed."""

    kind: str  # lead | account
    lead_id: str | None
    account_domain: str | None
    band: str | None
    previous_band: str | None
    tier: str | None
    account_owner: str | None
    active_leads: int
    ctx: dict[str, Any]  # what rule conditions see
    lead: dict[str, Any] | None
    account: dict[str, Any] | None
    score: dict[str, Any]
    signals: list[dict[str, Any]]
    fit_breakdown: list[dict[str, Any]]
    trigger_event_id: str | None
    event_received_at: float | None


def shallow(value: Any, depth: int = 32) -> Any:
    """``value`` with whatever is nested deeper than ``depth`` replaced by ``"…"``: safe to
    encode or print however deep the input was (JSON parsers accept ~1,000 levels; the
    encoders and ``repr`` do not)."""
    if isinstance(value, dict):
        if depth <= 0:
            return "…"
        return {str(k): shallow(v, depth - 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if depth <= 0:
            return "…"
        return [shallow(v, depth - 1) for v in value]
    return value
