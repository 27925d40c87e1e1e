"""Each platform's signature, verified over the raw body exactly as the platform signs it,
compared in constant time (``hmac.compare_digest``).

- Calendly: ``Calendly-Webhook-Signature: t=<unix>,v1=<hex HMAC-SHA256(key, "<t>." + body)>``;
  a timestamp more than 3 minutes from our clock is stale (Calendly's own example rejects
  older than three minutes; we also refuse that far ahead).
- Typeform: ``Typeform-Signature: sha256=<base64 HMAC-SHA256(secret, body)>``.
- Intercom: ``X-Hub-Signature: sha1=<hex HMAC-SHA1(client secret, body)>``.
- Google Ads lead forms sign nothing: the body carries the advertiser's ``google_key``.
- generic: a scheme the source configures (header, algorithm, encoding, prefix, timestamp).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from app.ingest.hooks.model import HookRejected

CALENDLY_HEADER = "Calendly-Webhook-Signature"
CALENDLY_TOLERANCE_SECONDS = 180
# Typeform and Intercom as generic schemes: their signature is the body's HMAC, prefixed.
SCHEMES: dict[str, dict[str, Any]] = {
    "typeform": {
        "header": "Typeform-Signature",
        "algorithm": "sha256",
        "encoding": "base64",
        "prefix": "sha256=",
        "timestamp_header": None,
        "tolerance_seconds": 300,
        "signed_payload": "body",
    },
    "intercom": {
        "header": "X-Hub-Signature",
        "algorithm": "sha1",
        "encoding": "hex",
        "prefix": "sha1=",
        "timestamp_header": None,
        "tolerance_seconds": 300,
        "signed_payload": "body",
    },
}
_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, whatever its case: Starlette's ``Headers`` or a plain mapping."""
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        wanted = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    return value.strip() if isinstance(value, str) and value.strip() else None


def missing(name: str, what: str = "the signature") -> HookRejected:
    return HookRejected(401, "missing_signature", f"{name}: {what} is missing", name)


def invalid(name: str, why: str) -> HookRejected:
    return HookRejected(401, "invalid_signature", f"{name}: {why}", name)


def digest(algorithm: str, key: str, message: bytes) -> bytes:
    return hmac.new(key.encode(), message, _HASHES[algorithm]).digest()


def matches(expected: bytes, given: str, encoding: str) -> bool:
    """Whether ``given`` (hex or base64 text) is ``expected``, compared in constant time."""
    try:
        got = bytes.fromhex(given) if encoding == "hex" else base64.b64decode(given, validate=True)
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(expected, got)


def unix_time(value: str) -> float | None:
    """A header's unix time: seconds, or milliseconds when too large to be seconds."""
    try:
        ts = float(value)
    except ValueError:
        return None
    if ts != ts or ts in (float("inf"), float("-inf")):
        return None
    return ts / 1000.0 if ts > 1e11 else ts


def stale(name: str, ts: float, now: float, tolerance: float) -> None:
    if abs(now - ts) > tolerance:
        raise HookRejected(
            401,
            "stale_signature",
            f"{name}: signed at {ts:.0f}, {abs(now - ts):.0f} s from our clock "
            f"(the limit is {tolerance:.0f} s); a replay, or a clock out of sync",
            name,
        )


def verify_calendly(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """``t=<unix>,v1=<hex>``: v1 is HMAC-SHA256 of ``"<t>." + body``; any one v1 may match."""
    name = CALENDLY_HEADER
    value = header(headers, name)
    if value is None:
        raise missing(name)
    t: str | None = None
    signatures: list[str] = []
    for part in value.split(","):
        key, _, val = part.strip().partition("=")
        if key == "t":
            t = val.strip()
        elif key == "v1":
            signatures.append(val.strip())
    ts = unix_time(t) if t else None
    if ts is None or not signatures:
        raise invalid(name, "expected t=<unix time>,v1=<hex signature>")
    expected = digest("sha256", secret, f"{t}.".encode() + body)
    if not any(matches(expected, s, "hex") for s in signatures):
        raise invalid(name, "does not match the body signed with the source's signing key")
    stale(name, ts, now, CALENDLY_TOLERANCE_SECONDS)


def verify_scheme(
    scheme: Mapping[str, Any], secret: str, headers: Mapping[str, str], body: bytes, now: float
) -> None:
    """An HMAC of the body (or of ``"<timestamp>." + body``) in a header, maybe prefixed."""
    name = scheme["header"]
    value = header(headers, name)
    if value is None:
        raise missing(name)
    prefix = scheme.get("prefix") or ""
    if not value.startswith(prefix):
        raise invalid(name, f'expected "{prefix}" followed by the signature')
    value = value[len(prefix) :].strip()
    message = body
    ts: float | None = None
    ts_name = scheme.get("timestamp_header")
    if ts_name:
        ts_value = header(headers, ts_name)
        if ts_value is None:
            raise missing(ts_name, "the signature's timestamp")
        ts = unix_time(ts_value)
        if ts is None:
            raise invalid(ts_name, "expected a unix time")
        if scheme.get("signed_payload") == "timestamp.body":
            message = f"{ts_value}.".encode() + body
    expected = digest(scheme["algorithm"], secret, message)
    if not matches(expected, value, scheme["encoding"]):
        raise invalid(name, "does not match the body signed with the source's secret")
    if ts_name and ts is not None:
        stale(ts_name, ts, now, float(scheme.get("tolerance_seconds") or 300))


def verify_google_key(secret: str, payload: Any) -> None:
    """Google Ads signs nothing: the body's ``google_key`` (Google's own samples spell it
    ``Google_key``) must be the key set on the lead form."""
    name = "google_key"
    given = None
    if isinstance(payload, dict):
        given = payload.get("google_key", payload.get("Google_key"))
    if not isinstance(given, str) or not given:
        raise missing(name, "the lead form's key (google_key in the body)")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise invalid(name, "is not the key set on this source")
