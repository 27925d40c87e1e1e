"""The generic kind: any platform's JSON, mapped to native events by JMESPath expressions
(jmespath.org) and verified by an HMAC scheme the source configures.

A config::

    {"mapping": {"event_id": "id", "type": "'form_submission'", "occurred_at": "created",
                 "lead": {"email": "contact.email", "traits": {"plan": "contact.plan"}},
                 "account": {"domain": "company.website"}, "properties": {"page": "url"}},
     "signature": {"header": "X-Signature", "algorithm": "sha256", "encoding": "hex",
                   "prefix": "sha256=", "timestamp_header": "X-Timestamp",
                   "tolerance_seconds": 300, "signed_payload": "timestamp.body"},
     "each": "events"}

``each`` (optional) selects a list of messages in one body; a body that is a JSON array is
read element by element without it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

from app.events import MAX_EMPLOYEES, MAX_REVENUE
from app.ingest.hooks.model import (
    HookMessage,
    HookSource,
    as_dict,
    clean_country,
    event_id,
    id_text,
    rejected,
    short,
    when,
)
from app.ingest.hooks.person import Person, native_event
from app.ingest.schemas import MAX_BATCH_EVENTS

MAX_EXPRESSIONS = 64
MAX_EXPRESSION_CHARS = 500
_TOP = ("event_id", "type", "occurred_at", "campaign")
_LEAD = ("email", "anonymous_id", "user_id", "first_name", "last_name", "title", "phone", "country")
_ACCOUNT = ("domain", "name", "industry", "employees", "country", "annual_revenue")
_TARGETS = frozenset(
    (*_TOP, *(f"lead.{f}" for f in _LEAD), *(f"account.{f}" for f in _ACCOUNT)),
) | {"lead.traits", "properties"}
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
_SIGNATURE_KEYS = (
    "header",
    "algorithm",
    "encoding",
    "prefix",
    "timestamp_header",
    "tolerance_seconds",
    "signed_payload",
)


@lru_cache(maxsize=2048)
def compiled(expression: str) -> Any:
    return jmespath.compile(expression)


def _compile(field: str, expression: Any) -> None:
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError(f"{field}: must be a JMESPath expression (a non-empty string)")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"{field}: longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        compiled(expression)
    except JMESPathError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{field}: not a valid JMESPath expression ({first})") from None


def _flatten(mapping: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"lead": {"email": "x"}}`` → ``("lead.email", "x")``; dotted keys stay as they are."""
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, path + ".")
        else:
            yield path, value


def _is_target(path: str) -> bool:
    if path in _TARGETS:
        return True
    for parent in ("lead.traits.", "properties."):
        if path.startswith(parent) and _KEY.fullmatch(path[len(parent) :]):
            return True
    return False


def check_mapping(mapping: Any, signal: str | None) -> dict[str, str]:
    """The mapping as ``{target: expression}`` with dotted targets, every one compiled."""
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError("mapping: required, an object of {field: JMESPath expression}")
    flat = dict(_flatten(mapping))
    if len(flat) > MAX_EXPRESSIONS:
        raise ValueError(f"mapping: {len(flat)} expressions; the limit is {MAX_EXPRESSIONS}")
    for path, expression in flat.items():
        field = f"mapping.{path}"
        if not _is_target(path):
            raise ValueError(
                f"{field}: not a native event field (event_id, type, occurred_at, campaign, "
                "lead.<field>, lead.traits[.<key>], account.<field>, properties[.<key>])"
            )
        _compile(field, expression)
    if "event_id" not in flat:
        raise ValueError("mapping.event_id: required (the platform's own message id)")
    if "lead.email" not in flat and "lead.anonymous_id" not in flat:
        raise ValueError("mapping.lead.email: required (or lead.anonymous_id)")
    if "type" not in flat and not signal:
        raise ValueError("mapping.type: required when the source has no signal")
    return flat


def _choice(sig: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = sig.get(key, allowed[0])
    if value not in allowed:
        raise ValueError(f"signature.{key}: one of {', '.join(allowed)}")
    return str(value)


def check_signature(sig: Any) -> dict[str, Any]:
    """The HMAC scheme with its defaults filled in."""
    if not isinstance(sig, dict):
        raise ValueError(
            "signature: required, an object {header, algorithm, encoding, prefix, "
            "timestamp_header, tolerance_seconds, signed_payload}"
        )
    extra = sorted(set(sig) - set(_SIGNATURE_KEYS))
    if extra:
        raise ValueError(f"signature.{extra[0]}: unknown option")
    out: dict[str, Any] = {}
    for key in ("header", "timestamp_header"):
        value = sig.get(key)
        if value is None and key == "timestamp_header":
            out[key] = None
        elif not isinstance(value, str) or not _HEADER.fullmatch(value):
            raise ValueError(f"signature.{key}: must be an HTTP header name")
        else:
            out[key] = value
    out["algorithm"] = _choice(sig, "algorithm", ("sha256", "sha1"))
    out["encoding"] = _choice(sig, "encoding", ("hex", "base64"))
    prefix = sig.get("prefix")
    if prefix is not None and (not isinstance(prefix, str) or len(prefix) > 50):
        raise ValueError("signature.prefix: a string of at most 50 characters")
    out["prefix"] = prefix or None
    tolerance = sig.get("tolerance_seconds", 300)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or not 1 <= tolerance <= 86400:
        raise ValueError("signature.tolerance_seconds: a whole number from 1 to 86400")
    out["tolerance_seconds"] = tolerance
    out["signed_payload"] = _choice(sig, "signed_payload", ("body", "timestamp.body"))
    if out["signed_payload"] == "timestamp.body" and out["timestamp_header"] is None:
        raise ValueError("signature.timestamp_header: required to sign timestamp.body")
    return out


def check_generic(config: Any, signal: str | None) -> dict[str, Any]:
    """A generic source's config, validated and normalised; ValueError names the field."""
    if not isinstance(config, dict):
        raise ValueError("config: must be an object {mapping, signature, each}")
    extra = sorted(set(config) - {"mapping", "signature", "each"})
    if extra:
        raise ValueError(f"{extra[0]}: unknown option (mapping, signature, each)")
    out: dict[str, Any] = {"mapping": check_mapping(config.get("mapping"), signal)}
    if config.get("each") is not None:
        if len(out["mapping"]) >= MAX_EXPRESSIONS:
            raise ValueError(f"each: more than {MAX_EXPRESSIONS} expressions in all")
        _compile("each", config["each"])
        out["each"] = config["each"]
    out["signature"] = check_signature(config.get("signature"))
    return out


def _search(expression: str | None, item: Any) -> Any:
    if not expression:
        return None
    try:
        return compiled(expression).search(item)
    except JMESPathError:  # a function given the wrong type: nothing found
        return None


def _items(config: dict[str, Any], payload: Any) -> list[Any] | None:
    each = config.get("each")
    if each:
        found = _search(each, payload)
        return found if isinstance(found, list) else [found] if isinstance(found, dict) else None
    return payload if isinstance(payload, list) else [payload]


def generic(source: HookSource, payload: Any, received_at: float) -> list[HookMessage]:
    """One message per item; a source whose config does not check is refused as a whole."""
    try:
        config = check_generic(source.config, source.signal)
    except ValueError as exc:
        return [rejected("", f"the source's config is invalid: {exc}")]
    items = _items(config, payload)
    if items is None:
        return [rejected("", f"each: `{config['each']}` found no list of messages")]
    mapping = config["mapping"]
    out = [_message(source, mapping, item, received_at) for item in items[:MAX_BATCH_EVENTS]]
    if len(items) > MAX_BATCH_EVENTS:
        out.append(rejected("", f"messages past the first {MAX_BATCH_EVENTS} were not read"))
    return out


def _person(mapping: dict[str, str], item: Any) -> Person:
    person = Person()
    for f in _LEAD:
        if f"lead.{f}" in mapping:
            person.offer(f, _search(mapping[f"lead.{f}"], item))
    for key, value in as_dict(_search(mapping.get("lead.traits"), item)).items():
        person.trait(key, value)
    for path, expression in mapping.items():
        if path.startswith("lead.traits."):
            person.trait(path.removeprefix("lead.traits."), _search(expression, item))
    person.offer("website", _search(mapping.get("account.domain"), item))
    person.offer("company", _search(mapping.get("account.name"), item))
    return person


def _account_extras(mapping: dict[str, str], item: Any) -> dict[str, Any]:
    """The firmographics a mapping names, kept only when valid (a bad one is dropped)."""
    out: dict[str, Any] = {}
    industry = short(_search(mapping.get("account.industry"), item))
    if industry:
        out["industry"] = industry
    employees = _search(mapping.get("account.employees"), item)
    if isinstance(employees, str) and employees.strip().isdigit():
        employees = int(employees)
    if isinstance(employees, int) and not isinstance(employees, bool):
        if 0 <= employees <= MAX_EMPLOYEES:
            out["employees"] = employees
    country = clean_country(_search(mapping.get("account.country"), item))
    if country:
        out["country"] = country
    revenue = _search(mapping.get("account.annual_revenue"), item)
    if isinstance(revenue, int | float) and not isinstance(revenue, bool):
        if math.isfinite(revenue) and 0 <= revenue <= MAX_REVENUE:
            out["annual_revenue"] = revenue
    return out


def _properties(mapping: dict[str, str], item: Any) -> dict[str, Any]:
    out = dict(as_dict(_search(mapping.get("properties"), item)))
    for path, expression in mapping.items():
        if path.startswith("properties."):
            out[path.removeprefix("properties.")] = _search(expression, item)
    return out


def _message(
    source: HookSource, mapping: dict[str, str], item: Any, received_at: float
) -> HookMessage:
    raw_id = id_text(_search(mapping["event_id"], item))
    if not raw_id:
        return rejected("", f"event_id: `{mapping['event_id']}` found no id (text or integer)")
    kind = _search(mapping.get("type"), item)
    signal = kind if isinstance(kind, str) and kind else source.signal
    if not signal:
        return rejected(raw_id, f"type: `{mapping.get('type')}` found nothing, no source signal")
    person = _person(mapping, item)
    if not person.identified():
        looked = ", ".join(
            f"{p} (`{mapping[p]}`)" for p in ("lead.email", "lead.anonymous_id") if p in mapping
        )
        return rejected(raw_id, f"no email or anonymous id in {looked}")
    event = native_event(
        event_id=event_id(f"hook:{source.name}", raw_id),
        type=signal,
        occurred_at=when(_search(mapping.get("occurred_at"), item), received_at),
        source=source.name,
        person=person,
        properties=_properties(mapping, item),
        campaign=_search(mapping.get("campaign"), item),
    )
    if "account" in event:
        event["account"].update(_account_extras(mapping, item))
    return HookMessage(raw_id[:200], event, "mapped")
