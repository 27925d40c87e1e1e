"""Webhook sources: the ad, form, meeting and chat platforms' own webhooks → native events.

Pure: no database, no web framework. The hook route calls, per request::

    payload = parse(source, body)                            # 400 invalid_body
    verify(source, headers, body, now, payload=payload)      # 401 missing/invalid/stale
    messages = to_native(source, payload, received_at)       # one HookMessage each
    status, body = answer(source.kind)                       # what the platform expects

then validates the mapped events with ``app.ingest.native.validate_batch`` and answers the
platform 2xx even when a message was rejected (else it would retry it forever).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from app.ingest.hooks import chat, presets, signature
from app.ingest.hooks.generic import check_generic, check_signature, generic
from app.ingest.hooks.model import (
    DEFAULT_SIGNAL,
    PRESET_KINDS,
    HookMessage,
    HookRejected,
    HookSource,
    loads,
    rejected,
)

__all__ = [
    "DEFAULT_SIGNAL",
    "PRESET_KINDS",
    "HookMessage",
    "HookRejected",
    "HookSource",
    "answer",
    "check_config",
    "generate_secret",
    "needs_secret",
    "parse",
    "to_native",
    "verify",
]

_MAPPERS = {
    "google_ads_lead_form": presets.google_ads,
    "calendly": presets.calendly,
    "typeform": presets.typeform,
    "intercom": chat.intercom,
}


def _known(kind: str) -> None:
    if kind not in PRESET_KINDS:
        raise ValueError(f"kind: unknown kind {kind!r} (one of {', '.join(PRESET_KINDS)})")


def needs_secret(kind: str) -> bool:
    """Whether the user must supply the secret: Intercom signs with the app's client
    secret, which only Intercom issues. The others take one we generate."""
    _known(kind)
    return kind == "intercom"


def generate_secret(kind: str) -> str | None:
    """A fresh platform-side secret to paste into the platform (Google's lead form key,
    Calendly's signing key, Typeform's secret, a generic HMAC key); None for Intercom."""
    if needs_secret(kind):
        return None
    return secrets.token_urlsafe(32)


def check_config(kind: str, config: dict[str, Any], *, signal: str | None = None) -> dict[str, Any]:
    """A source's config, validated and normalised; ``ValueError("<path>: <what>")`` with
    the path inside the config (``mapping.lead.email``). Presets take no options yet. For
    generic pass the source's ``signal``: a mapping without ``type`` needs one."""
    _known(kind)
    if kind == "generic":
        return check_generic(config, signal)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError("config: must be an object")
    if config:
        raise ValueError(f"{sorted(config)[0]}: unknown option for kind {kind}")
    return {}


def parse(source: HookSource, body: bytes) -> Any:
    """The body's JSON: an object (generic: an object or an array). Google Ads bodies are
    read leniently, since Google's own samples carry a trailing comma."""
    payload = loads(body, lenient=source.kind == "google_ads_lead_form")
    if isinstance(payload, dict) or (source.kind == "generic" and isinstance(payload, list)):
        return payload
    what = "an object or an array" if source.kind == "generic" else "an object"
    raise HookRejected(400, "invalid_body", f"body: must be a JSON {what}", "body")


def verify(
    source: HookSource,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    *,
    payload: Any = None,
) -> None:
    """Raises ``HookRejected`` (401) unless the request is signed as the platform signs.
    Google Ads signs nothing: its key is in the body, read from ``payload`` (parsed here
    when not given)."""
    if not source.secret:
        raise HookRejected(
            401, "invalid_signature", f"source {source.name!r} has no secret to verify with"
        )
    kind = source.kind
    if kind == "google_ads_lead_form":
        found = parse(source, body) if payload is None else payload
        signature.verify_google_key(source.secret, found)
    elif kind == "calendly":
        signature.verify_calendly(source.secret, headers, body, now)
    elif kind in signature.SCHEMES:
        signature.verify_scheme(signature.SCHEMES[kind], source.secret, headers, body, now)
    elif kind == "generic":
        scheme = source.config.get("signature") if isinstance(source.config, dict) else None
        try:
            checked = check_signature(scheme)
        except ValueError as exc:
            raise HookRejected(
                401, "invalid_signature", f"the source's config is invalid: {exc}"
            ) from None
        signature.verify_scheme(checked, source.secret, headers, body, now)
    else:
        _known(kind)


def to_native(source: HookSource, payload: Any, received_at: float) -> list[HookMessage]:
    """One ``HookMessage`` per platform message: mapped (with a native event dict),
    ignored, test or rejected, each with the platform's own id and the reason."""
    if source.kind == "generic":
        return generic(source, payload, received_at)
    mapper = _MAPPERS.get(source.kind)
    if mapper is None:
        return [rejected("", f"kind: unknown kind {source.kind!r}")]
    if not isinstance(payload, dict):
        return [rejected("", "body: not a JSON object")]
    return [mapper(source, payload, received_at)]


def answer(kind: str) -> tuple[int, dict[str, Any]]:
    """What the platform expects back on success: each takes a 200 (Google Ads wants it
    quickly; Calendly, Typeform and Intercom any 2xx, and Intercom's ping needs it to
    save the webhook)."""
    _known(kind)
    return 200, {}
