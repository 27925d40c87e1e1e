"""Standard Webhooks signatures (https://www.standardwebhooks.com/)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh ``whsec_<base64>`` secret with 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three webhook headers; several secrets (rotation) give space-separated signatures."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
        "content-type": "application/json",
    }


def verify(secret: str, msg_id: str, timestamp: int, body: bytes, signature_header: str) -> bool:
    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1]
    for candidate in signature_header.split():
        version, _, sig = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


# How far a webhook's timestamp may be from the receiver's clock, either way: what the
# Standard Webhooks libraries accept (their verify() refuses older or newer messages).
TOLERANCE_SECONDS = 300


def check_request(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    """Why a received webhook does not verify as the Standard Webhooks libraries verify it
    (headers, a timestamp within ±``TOLERANCE_SECONDS`` of ``now``, a v1 signature of
    ``secret``); None when it does."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    signature = headers.get("webhook-signature", "")
    if not (msg_id and stamp and signature):
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    try:
        timestamp = int(stamp)
    except ValueError:
        return f"webhook-timestamp {stamp[:40]!r} is not a Unix time in seconds"
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        when = "old" if timestamp < now else "new"
        return (
            f"timestamp too {when}: {abs(now - timestamp):.0f} s from this clock "
            f"(±{TOLERANCE_SECONDS} s allowed)"
        )
    try:
        ok = verify(secret, msg_id, timestamp, body, signature)
    except ValueError:  # a secret that is no base64
        return "the secret is not a whsec_… secret"
    return None if ok else "no signature matches the secret"
