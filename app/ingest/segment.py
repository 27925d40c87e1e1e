"""Segment (and RudderStack) HTTP Tracking API messages → native events.

The mapping from track names and page paths to signals is part of the policy.
Identify, group and alias calls, and track calls the policy does not map, update
lead and account attributes (and stitch identities) without scoring.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from app.events import MAX_EMPLOYEES, shallow
from app.policy.schema import CompiledPolicy

MIN_TIME = 946684800.0  # 2000-01-01
SEGMENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")


def _parse_ts(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.timestamp()


def event_time(msg: dict[str, Any], received_at: float, batch_sent_at: Any = None) -> float:
    """Segment's rule: the time the client stamped (``timestamp``, else ``originalTimestamp``)
    corrected for the sender's clock skew, ``receivedAt - (sentAt - stamped)``, with
    ``sentAt`` from the message or, as analytics-python sends it, from the batch; without
    ``sentAt`` the stamp as given; without a stamp the arrival time."""
    ts = _parse_ts(msg.get("timestamp"))
    if ts is None:
        ts = _parse_ts(msg.get("originalTimestamp"))
    sent = _parse_ts(msg.get("sentAt")) or _parse_ts(batch_sent_at)
    if ts is not None and sent is not None:
        ts = received_at - (sent - ts)
    # A stamp before 2000 is a client without a clock: arrival time. One ahead of arrival
    # is kept (up to a year, so it stays a date), and refused, with the reason in the
    # source's debugger, by the validator.
    if ts is None or ts < MIN_TIME:
        return received_at
    return min(ts, received_at + 86400 * 365)


def message_id(msg: dict[str, Any]) -> str:
    """The message's own id; without one, a digest of the message, so that a batch the SDK
    retries is still recognised as the same events."""
    given = msg.get("messageId")
    if isinstance(given, str | int) and not isinstance(given, bool) and str(given):
        return str(given)
    try:
        text = orjson.dumps(msg, option=orjson.OPT_SORT_KEYS, default=str)
    except TypeError:  # nested deeper than the encoder goes: digest what it can encode
        text = orjson.dumps(shallow(msg), option=orjson.OPT_SORT_KEYS, default=str)
    return "seg_" + hashlib.sha256(text).hexdigest()[:32]


def segment_id(value: Any) -> Any:
    """A Segment ``userId``/``anonymousId``/``groupId`` as our identifier: a string, or a
    number as its text. Anything else (an object, a list, a boolean) is passed on as it
    is, for the validator to refuse naming the field; never ``str()`` of it, which for
    an object nested a thousand deep is a RecursionError."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return shallow(value, 2)


# context fields kept on the stored event, under these property names.
_CONTEXT = (("ip", "ip"), ("userAgent", "user_agent"), ("locale", "locale"))
_PAGE = (("referrer", "referrer"), ("url", "url"), ("search", "search"), ("title", "page_title"))
_UTM = ("source", "medium", "name", "term", "content")


def context_properties(context: dict[str, Any]) -> dict[str, Any]:
    """The client's ip, user agent, page referrer and every UTM field (``context.campaign``;
    ``name`` is ``utm_campaign``). ``integrations`` (which destinations Segment should
    forward to) means nothing here and is not read."""
    out: dict[str, Any] = {}
    for theirs, ours in _CONTEXT:
        if isinstance(context.get(theirs), str):
            out[ours] = context[theirs][:1000]
    page = _dict(context.get("page"))
    for theirs, ours in _PAGE:
        if isinstance(page.get(theirs), str) and page[theirs]:
            out[ours] = page[theirs][:2000]
    campaign = _dict(context.get("campaign"))
    for key in _UTM:
        if isinstance(campaign.get(key), str) and campaign[key]:
            out["utm_campaign" if key == "name" else f"utm_{key}"] = campaign[key][:300]
    return out


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float | str):
        try:
            return int(float(v))
        except (ValueError, OverflowError):
            return None
    return None


def _domain_of(traits: dict[str, Any]) -> str | None:
    for key in ("domain", "website", "url"):
        v = traits.get(key)
        if isinstance(v, str) and v.strip():
            return v
    return None


def _lead(msg: dict[str, Any], traits: dict[str, Any]) -> dict[str, Any]:
    lead: dict[str, Any] = {}
    email = traits.get("email")
    if isinstance(email, str) and "@" in email:
        lead["email"] = email
    if msg.get("anonymousId"):
        lead["anonymous_id"] = segment_id(msg["anonymousId"])
    if msg.get("userId"):
        lead["user_id"] = segment_id(msg["userId"])
    for ours, theirs in (
        ("first_name", ("firstName", "first_name")),
        ("last_name", ("lastName", "last_name")),
        ("title", ("title",)),
        ("phone", ("phone",)),
    ):
        for key in theirs:
            if isinstance(traits.get(key), str):
                lead[ours] = traits[key]
                break
    country = traits.get("country") or _dict(traits.get("address")).get("country")
    if isinstance(country, str) and _COUNTRY.match(country):
        lead["country"] = country
    return lead


def _account(traits: dict[str, Any]) -> dict[str, Any] | None:
    domain = _domain_of(traits)
    if domain is None:
        return None
    account: dict[str, Any] = {"domain": domain}
    if isinstance(traits.get("name"), str):
        account["name"] = traits["name"]
    if isinstance(traits.get("industry"), str):
        account["industry"] = traits["industry"]
    employees = _int(traits.get("employees", traits.get("employee_count")))
    if employees is not None and 0 <= employees <= MAX_EMPLOYEES:
        account["employees"] = employees
    revenue = traits.get("annual_revenue", traits.get("annualRevenue"))
    if isinstance(revenue, int | float) and not isinstance(revenue, bool) and 0 <= revenue < 1e15:
        account["annual_revenue"] = revenue
    country = traits.get("country") or _dict(traits.get("address")).get("country")
    if isinstance(country, str) and _COUNTRY.match(country):
        account["country"] = country
    return account


def _page_path(msg: dict[str, Any]) -> str:
    props = _dict(msg.get("properties"))
    page = _dict(_dict(msg.get("context")).get("page"))
    for candidate in (props.get("path"), page.get("path")):
        if isinstance(candidate, str) and candidate:
            return candidate
    for candidate in (props.get("url"), page.get("url")):
        if isinstance(candidate, str) and candidate:
            try:
                return urlsplit(candidate).path or "/"
            except ValueError:
                return "/"
    name = msg.get("name")
    return name if isinstance(name, str) and name.startswith("/") else "/"


def to_native(
    msg: dict[str, Any],
    *,
    kind: str | None,
    policy: CompiledPolicy,
    source: str,
    received_at: float,
    batch_sent_at: Any = None,
) -> dict[str, Any]:
    """One Segment message as a native event dict (validated by the caller). Its source is
    the sender's (the registered source, or the API key's name); UTM fields are kept as
    properties."""
    msg_type = str(msg.get("type") or kind or "")
    context = _dict(msg.get("context"))
    traits = {**_dict(context.get("traits")), **_dict(msg.get("traits"))}
    props = _dict(msg.get("properties"))
    campaign = _dict(context.get("campaign"))
    event_type = "identify"
    properties: dict[str, Any] = {"segment_type": msg_type, **context_properties(context)}
    account = None
    if msg_type == "track":
        name = str(msg.get("event") or "")
        properties.update(props)
        properties["segment_event"] = name
        event_type = policy.signal_for_segment_track(name) or "identify"
        if isinstance(props.get("email"), str) and "email" not in traits:
            traits["email"] = props["email"]
    elif msg_type in ("page", "screen"):
        path = _page_path(msg)
        properties.update(props)
        properties["path"] = path
        event_type = policy.signal_for_page(path) or "identify"
    elif msg_type == "group":
        account = _account(_dict(msg.get("traits")))
        traits = _dict(context.get("traits"))
        if msg.get("groupId"):
            properties["group_id"] = segment_id(msg["groupId"])
    elif msg_type == "alias":
        if msg.get("previousId"):
            msg = {**msg, "anonymousId": msg["previousId"]}
    if account is None:
        company = _dict(traits.get("company"))
        if company:
            account = _account(company)
    lead = _lead(msg, traits)
    extra = {
        k: v
        for k, v in _dict(msg.get("traits")).items()
        if k
        not in (
            "email",
            "firstName",
            "lastName",
            "first_name",
            "last_name",
            "title",
            "phone",
            "company",
            "address",
        )
        and isinstance(v, str | int | float)
    }
    if extra and msg_type == "identify":
        lead["traits"] = extra
    occurred = event_time(msg, received_at, batch_sent_at)
    out: dict[str, Any] = {
        "event_id": message_id(msg),
        "type": event_type,
        "occurred_at": datetime.fromtimestamp(occurred, UTC).isoformat(),
        "source": source,
        "lead": lead,
        "properties": properties,
    }
    if isinstance(campaign.get("name"), str) and campaign["name"].strip():
        out["campaign"] = campaign["name"][:200]
    if account is not None:
        out["account"] = account
    return out
