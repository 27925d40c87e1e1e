"""The retry schedule, as data: delays (seconds) before attempt 1, 2, 3, …"""

from __future__ import annotations

import random
from datetime import UTC
from email.utils import parsedate_to_datetime

from app.config import RETRY_JITTER as JITTER
from app.config import RETRY_SCHEDULE as SCHEDULE

__all__ = ["JITTER", "SCHEDULE", "next_delay"]
MAX_RETRY_AFTER = 36000.0


def next_delay(
    attempts_made: int,
    *,
    schedule: tuple[float, ...] = SCHEDULE,
    jitter: float = JITTER,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Delay before the next attempt after ``attempts_made`` attempts; None = exhausted.

    ``Retry-After`` (429/503) replaces the scheduled delay when it asks for longer.
    """
    if attempts_made >= len(schedule):
        return None
    base = schedule[attempts_made]
    r = rng or random
    delay = base * (1 + r.uniform(-jitter, jitter)) if base else 0.0
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT (RFC 9110), whatever their format says
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)
