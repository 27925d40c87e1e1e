"""What every hook preset shares: the source, the rejection, one message's fate, and the
small normalisers that turn a platform's person into a native event's ``lead``."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from app.errors import AppError
from app.events import normalise_domain, normalise_email

PRESET_KINDS = ("google_ads_lead_form", "calendly", "typeform", "intercom", "generic")
# The signal each preset scores by default (generic: its mapping's ``type``).
DEFAULT_SIGNAL = {
    "google_ads_lead_form": "form_submission",
    "calendly": "meeting_booked",
    "typeform": "form_submission",
    "intercom": "chat_message",
}
# Each preset's prefix on event ids, so the same id on two platforms never clashes.
ID_PREFIX = {
    "google_ads_lead_form": "gads",
    "calendly": "calendly",
    "typeform": "typeform",
    "intercom": "intercom",
}
MAX_ID = 200
MAX_SHORT = 300
MAX_TEXT = 1000
MAX_KEY = 64


@dataclass(frozen=True)
class HookSource:
    """What a preset needs of a registered source."""

    name: str  # becomes each event's ``source``
    kind: str  # one of PRESET_KINDS
    secret: str | None  # the platform-side secret (Google key, signing key, client secret …)
    signal: str | None  # overrides the preset's default signal
    config: dict[str, Any] = field(default_factory=dict)  # generic: mapping and signature


class HookRejected(AppError):
    """A request refused before any message is read: 401 (signature) or 400 (body)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message, field=field, code=code)
        self.status = status


@dataclass
class HookMessage:
    """One platform message's fate, for the pipeline and the source debugger."""

    message_id: str  # the platform's own id, or "" when absent
    event: dict[str, Any] | None  # a native event dict, or None when not ingested
    outcome: str  # mapped | ignored | test | rejected
    reason: str | None = None  # why ignored, test or rejected; names the field


def ignored(message_id: str, reason: str) -> HookMessage:
    return HookMessage(message_id, None, "ignored", reason)


def rejected(message_id: str, reason: str) -> HookMessage:
    return HookMessage(message_id, None, "rejected", reason)


def signal_of(source: HookSource) -> str | None:
    return source.signal or DEFAULT_SIGNAL.get(source.kind)


def as_dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def id_text(v: Any) -> str:
    """A platform id as text: strings and integers; anything else is no id."""
    if isinstance(v, bool) or not isinstance(v, str | int):
        return ""
    return str(v).strip()


def event_id(prefix: str, raw: str) -> str:
    """``prefix:raw``, or ``prefix:`` and a digest of ``raw`` when that would be too long."""
    eid = f"{prefix}:{raw}"
    if len(eid) <= MAX_ID:
        return eid
    return f"{prefix[: MAX_ID - 41]}:{digest(raw)}"


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def iso_time(v: Any) -> str | None:
    """An ISO 8601 time with offset from an ISO string or a unix time (seconds, or
    milliseconds when it is too large to be seconds); None when it is neither."""
    if isinstance(v, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", v):
        v = float(v)
    if isinstance(v, int | float) and not isinstance(v, bool):
        ts = float(v)
        if not math.isfinite(ts):
            return None
        if ts > 1e11:
            ts /= 1000.0
        try:
            return datetime.fromtimestamp(ts, UTC).isoformat()
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v.strip())
        except ValueError:
            return None
        return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).isoformat()
    return None


def when(v: Any, received_at: float) -> str:
    """The time the person acted, else the time we received the message."""
    return iso_time(v) or datetime.fromtimestamp(received_at, UTC).isoformat()


def short(v: Any, limit: int = MAX_SHORT) -> str | None:
    if isinstance(v, int | float) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str):
        return None
    v = v.strip()
    return v[:limit] if v else None


def flat(v: Any) -> str | int | float | bool | None:
    """A value as a flat trait or property: text (bounded), a finite number, a boolean, a
    list of those joined by commas; None for anything else."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, str):
        return short(v, MAX_TEXT)
    if isinstance(v, list) and v and all(isinstance(x, str | int | float) for x in v):
        return short(", ".join(str(x) for x in v), MAX_TEXT)
    return None


def slug(v: Any) -> str | None:
    """``"What's your Job Title?"`` → ``what_s_your_job_title``; None when nothing is left."""
    if not isinstance(v, str):
        return None
    s = re.sub(r"[^a-z0-9]+", "_", v.lower()).strip("_")[:MAX_KEY].strip("_")
    return s or None


def clean_email(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    try:
        return normalise_email(v)
    except ValueError:
        return None


def clean_domain(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    try:
        return normalise_domain(v)
    except ValueError:
        return None


def clean_country(v: Any) -> str | None:
    """ISO 3166 alpha-2 only: a country's name or alpha-3 code is kept as a trait instead."""
    if isinstance(v, str) and re.fullmatch(r"\s*[A-Za-z]{2}\s*", v):
        return v.strip().upper()
    return None


def put(out: dict[str, Any], key: Any, value: Any) -> None:
    """``out[slug(key)] = flat(value)`` when both are something and the key is free."""
    k = slug(key)
    v = flat(value)
    if k is not None and v is not None and k not in out:
        out[k] = v


# What a form field, question or attribute is, by its slugged name: exact names, and for
# free-text questions (Calendly's) the words they contain.
_EXACT = {
    "email": {"email", "email_address", "work_email", "business_email"},
    "first_name": {"first_name", "firstname", "given_name"},
    "last_name": {"last_name", "lastname", "surname", "family_name"},
    "name": {"name", "full_name", "fullname", "your_name"},
    "company": {
        "company",
        "company_name",
        "organization",
        "organisation",
        "organization_name",
        "organisation_name",
        "business_name",
        "employer",
    },
    "title": {"title", "job_title", "jobtitle", "position", "role", "job_role"},
    "phone": {"phone", "phone_number", "mobile", "telephone", "work_phone"},
    "website": {
        "website",
        "company_website",
        "website_url",
        "company_url",
        "domain",
        "company_domain",
    },
    "country": {"country", "country_code"},
}
_NOT_COMPANY = ("size", "employees", "revenue", "industry")


def person_field(key: Any, *, loose: bool = False) -> str | None:
    """Which person field a named value is (``email``, ``company``, ``title`` …), or None."""
    s = slug(key)
    if s is None:
        return None
    for name, keys in _EXACT.items():
        if s in keys:
            return name
    if not loose:
        return None
    if "email" in s:
        return "email"
    if "website" in s or "domain" in s:
        return "website"
    if any(w in s for w in ("company", "organization", "organisation")) and not any(
        w in s for w in _NOT_COMPANY
    ):
        return "company"
    if "job_title" in s or s.endswith(("_title", "_role")):
        return "title"
    if "phone" in s:
        return "phone"
    if "country" in s:
        return "country"
    return None


# A JSON string literal, escapes included; between two of them, a comma that only
# whitespace separates from a closing bracket is a trailing comma.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def strip_trailing_commas(text: str) -> str:
    """``{"a": [1, 2,],}`` → ``{"a": [1, 2]}``; commas inside strings are left alone."""
    parts: list[str] = []
    last = 0
    for m in _STRING.finditer(text):
        parts.append(_TRAILING_COMMA.sub(r"\1", text[last : m.start()]))
        parts.append(m.group())
        last = m.end()
    parts.append(_TRAILING_COMMA.sub(r"\1", text[last:]))
    return "".join(parts)


def loads(body: bytes, *, lenient: bool = False) -> Any:
    """The body's JSON; ``lenient`` also accepts trailing commas. Raises 400 invalid_body."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = str(exc)
    if lenient:
        try:
            return orjson.loads(strip_trailing_commas(body.decode("utf-8")))
        except (UnicodeDecodeError, orjson.JSONDecodeError):
            pass
    raise HookRejected(400, "invalid_body", f"body: not valid JSON ({error})", "body")
