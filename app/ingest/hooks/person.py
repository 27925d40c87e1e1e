"""The person a platform message is about, gathered field by field, and the native event
built from it (the dict ``app.ingest.native.validate_batch`` accepts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.events import LEAD_RESERVED
from app.ingest.hooks.model import (
    MAX_ID,
    clean_country,
    clean_domain,
    clean_email,
    flat,
    put,
    short,
    slug,
)


@dataclass
class Person:
    """Who the message is about. The first value offered for a field wins; what is not a
    typed field (and a company's name) goes to ``traits``."""

    email: str | None = None
    anonymous_id: str | None = None
    user_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    name: str | None = None
    title: str | None = None
    phone: str | None = None
    country: str | None = None
    company: str | None = None
    domain: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)

    def offer(self, what: str, value: Any) -> None:
        """Set the field ``what`` (a name from ``person_field``) from a platform value."""
        if what == "email":
            email = clean_email(value)
            if email and self.email is None:
                self.email = email
            elif email and email != self.email:
                put(self.traits, "other_email", email)
        elif what == "country":
            code = clean_country(value)
            if code and self.country is None:
                self.country = code
            elif code is None:
                put(self.traits, "country_name", value)
        elif what == "website":
            self.domain = self.domain or clean_domain(value)
        elif what == "company":
            self.company = self.company or short(value)
        elif what in ("first_name", "last_name", "name", "title", "phone"):
            if getattr(self, what) is None:
                setattr(self, what, short(value))
        elif what in ("anonymous_id", "user_id"):
            if getattr(self, what) is None:
                setattr(self, what, short(value, MAX_ID))

    def trait(self, key: Any, value: Any) -> None:
        """A free-form trait; keys the typed fields own are left to them."""
        k = slug(key)
        if k is not None and k not in LEAD_RESERVED:
            put(self.traits, k, value)

    def identified(self) -> bool:
        return bool(self.email or self.anonymous_id or self.user_id)

    def lead(self) -> dict[str, Any]:
        first, last = self.first_name, self.last_name
        if first is None and last is None and self.name:
            first, _, rest = self.name.partition(" ")
            last = rest.strip() or None
        traits = dict(self.traits)
        if self.company:
            traits["company"] = self.company
        out: dict[str, Any] = {
            "email": self.email,
            "anonymous_id": self.anonymous_id,
            "user_id": self.user_id,
            "first_name": first,
            "last_name": last,
            "title": self.title,
            "phone": self.phone,
            "country": self.country,
        }
        lead = {k: v for k, v in out.items() if v is not None}
        lead["traits"] = traits
        return lead

    def account(self) -> dict[str, Any] | None:
        """The company, when the message names its website or domain."""
        if self.domain is None:
            return None
        account: dict[str, Any] = {"domain": self.domain}
        if self.company:
            account["name"] = self.company
        return account


def native_event(
    *,
    event_id: str,
    type: str,
    occurred_at: str,
    source: str,
    person: Person,
    properties: dict[str, Any],
    campaign: Any = None,
) -> dict[str, Any]:
    """The native event dict; properties keep flat values only."""
    event: dict[str, Any] = {
        "event_id": event_id,
        "type": type,
        "occurred_at": occurred_at,
        "source": source,
        "lead": person.lead(),
        "properties": {k: fv for k, v in properties.items() if (fv := flat(v)) is not None},
    }
    account = person.account()
    if account is not None:
        event["account"] = account
    name = short(campaign, MAX_ID)
    if name is not None:
        event["campaign"] = name
    return event
