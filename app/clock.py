"""Time, injectable: the service reads the clock only through this, so tests can drive it."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime


class Clock:
    def now(self) -> float:
        return time.time()


class FakeClock(Clock):
    """A clock tests move by hand."""

    def __init__(self, start: float | None = None) -> None:
        self._now = start if start is not None else time.time()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def iso(ts: float | None) -> str | None:
    """POSIX seconds → RFC 3339 UTC with milliseconds."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str, ts: float | None = None) -> str:
    """A time-ordered unique id (ULID layout: 48-bit ms time + 80 random bits)."""
    ms = int((ts if ts is not None else time.time()) * 1000)
    n = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[n & 31])
        n >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
