"""Quotas: a token bucket per API key and per source, in events per second.

Each request costs one token per event it carries (a batch of 300 costs 300). A bucket
holds at most ``burst`` tokens and refills at ``rate`` a second; both default to
``INTENT_RATE_LIMIT_EVENTS_PER_SECOND`` and ``INTENT_RATE_LIMIT_BURST`` and a key or a
source may set its own (``rate_limit``, ``rate_burst``). A request the bucket cannot pay
for is refused whole: 429 ``rate_limited`` with ``Retry-After``. Every answer, 2xx or
429, carries the bucket's state in the IETF draft's fields (draft-ietf-httpapi-ratelimit-
headers): ``RateLimit-Limit`` (the burst), ``RateLimit-Remaining`` (tokens left) and
``RateLimit-Reset`` (seconds until the bucket is full again).

The buckets live in the process: each replica (and each worker) has its own, so the
quota a sender sees across N replicas behind a balancer is up to N times the setting.
Time is the runtime's clock, so tests drive it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from app.auth import ApiKey
from app.errors import AppError
from app.runtime.service import Runtime
from app.sources import Source

MAX_BUCKETS = 100_000  # full buckets are dropped past this (a full bucket is no bucket)


class RateLimited(AppError):
    status = 429
    code = "rate_limited"


@dataclass
class _Bucket:
    tokens: float
    at: float
    rate: float
    size: int


@dataclass(frozen=True)
class Verdict:
    """What a bucket said to a request: allowed or not, and its state afterwards."""

    allowed: bool
    burst: int
    remaining: int
    reset: int  # seconds until the bucket is full
    retry_after: int  # seconds until this request could pass (≥ 1 when refused)

    def headers(self) -> dict[str, str]:
        out = {
            "RateLimit-Limit": str(self.burst),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after)
        return out


class RateLimiter:
    """Token buckets by name (``key:<id>``, ``source:<name>``)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def take(
        self,
        name: str,
        cost: int,
        now: float,
        *,
        rate: float | None = None,
        burst: int | None = None,
    ) -> Verdict:
        """Take ``cost`` tokens from the bucket ``name`` if it holds them."""
        rate = rate or self.rate
        size = burst or self.burst
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune(now)
            bucket = self._buckets[name] = _Bucket(float(size), now, rate, size)
        bucket.rate, bucket.size = rate, size
        # A clock moved back (or a quota lowered) never adds tokens past the burst.
        bucket.tokens = min(float(size), bucket.tokens + max(0.0, now - bucket.at) * rate)
        bucket.at = now
        allowed = cost <= bucket.tokens
        if allowed:
            bucket.tokens -= cost
        reset = math.ceil((size - bucket.tokens) / rate)
        if allowed:
            retry_after = 0
        elif cost > size:  # never payable: the earliest a smaller request could pass
            retry_after = max(1, reset)
        else:
            retry_after = max(1, math.ceil((cost - bucket.tokens) / rate))
        return Verdict(allowed, size, int(bucket.tokens), reset, retry_after)

    def _prune(self, now: float) -> None:
        full = [
            name for name, b in self._buckets.items() if b.tokens + (now - b.at) * b.rate >= b.size
        ]
        for name in full:
            del self._buckets[name]
        if len(self._buckets) >= MAX_BUCKETS:
            self._buckets.clear()


_LIMITERS: WeakKeyDictionary[Runtime, RateLimiter] = WeakKeyDictionary()


def limiter(runtime: Runtime) -> RateLimiter:
    """The runtime's buckets (one set per running service)."""
    found = _LIMITERS.get(runtime)
    if found is None:
        settings = runtime.settings
        found = RateLimiter(settings.rate_limit_events_per_second, settings.rate_limit_burst)
        _LIMITERS[runtime] = found
    return found


def charge(runtime: Runtime, sender: ApiKey | Source, cost: int) -> dict[str, str]:
    """Take ``cost`` events from the sender's bucket: its ``RateLimit-*`` headers, or
    ``RateLimited`` (429, ``Retry-After``) when the bucket cannot pay."""
    if isinstance(sender, ApiKey):
        name, what = f"key:{sender.id}", f'API key "{sender.name}"'
    else:
        name, what = f"source:{sender.name}", f'source "{sender.name}"'
    verdict = limiter(runtime).take(
        name,
        max(1, cost),
        runtime.clock.now(),
        rate=sender.rate_limit,
        burst=sender.rate_burst,
    )
    if verdict.allowed:
        return verdict.headers()
    rate = sender.rate_limit or limiter(runtime).rate
    if cost > verdict.burst:
        message = (
            f"{cost} events in one request is more than the {what}'s burst of "
            f"{verdict.burst}: send smaller batches"
        )
    else:
        message = (
            f"the {what} is over its quota of {rate:g} events per second "
            f"(burst {verdict.burst}); retry after {verdict.retry_after} s"
        )
    raise RateLimited(message, field="authorization", headers=verdict.headers())


def event_count(data: Any) -> int:
    """How many events a native body carries (what it costs), before it is validated."""
    if isinstance(data, dict) and isinstance(data.get("events"), list):
        return len(data["events"])
    return 1
