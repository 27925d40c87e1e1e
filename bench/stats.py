"""Percentiles, the service's Prometheus counters, CPU use over a phase, and printing."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from bench.procs import cpu_seconds, self_cpu_seconds


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted values; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def line(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<44} {value:>16}  {note}".rstrip(), flush=True)


def header(title: str) -> None:
    print(f"\n== {title}", flush=True)


# -- the service's own metrics ------------------------------------------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9eE+\-.naNIinf]+)$")
WATCHED = (
    "intent_pipeline_batch_seconds_sum",
    "intent_pipeline_batch_seconds_count",
    "intent_pipeline_batch_events_sum",
    "intent_event_to_webhook_seconds_count",
    "intent_event_to_webhook_seconds_bucket",
    "intent_decisions_total",
    "intent_decisions_suppressed_total",
    "intent_deliveries_total",
    "intent_events_ingested_total",
    "intent_events_duplicate_total",
    "intent_events_rejected_total",
)


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    """Watched series from ``/metrics``: name (+ ``|le`` for buckets, ``|outcome`` for
    deliveries, ``|transport`` for event counters) → value, summed over other labels."""
    try:
        r = await client.get("/metrics", timeout=10)
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for raw in r.text.splitlines():
        m = _SAMPLE.match(raw)
        if not m or m.group(1) not in WATCHED:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name.endswith("_bucket"):
            le = re.search(r'le="([^"]+)"', labels)
            name = f"{name}|{le.group(1) if le else '?'}"
        elif name == "intent_deliveries_total":
            outcome = re.search(r'outcome="([^"]+)"', labels)
            name = f"{name}|{outcome.group(1) if outcome else '?'}"
        elif name.startswith("intent_events_"):
            transport = re.search(r'transport="([^"]+)"', labels)
            name = f"{name}|{transport.group(1) if transport else '?'}"
        out[name] = out.get(name, 0.0) + value
    return out


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def histogram_quantile(d: dict[str, float], metric: str, q: float) -> float:
    """Upper bound of the bucket holding quantile q (what Prometheus would interpolate to)."""
    buckets = sorted(
        (float(k.split("|", 1)[1]), v) for k, v in d.items() if k.startswith(metric + "_bucket|")
    )
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    target = q * buckets[-1][1]
    for le, count in buckets:
        if count >= target:
            return le
    return math.inf


# -- CPU over a phase ---------------------------------------------------------------------
@dataclass
class CpuMeter:
    """CPU used between start() and stop() by the service (its event-loop thread and the
    rest: aiosqlite's worker threads, where SQLite runs), the receiver, this process and,
    in the Kafka phases, the broker's JVM."""

    service: int
    receiver: int
    broker: int | None = None  # the Kafka JVM, when known
    wall: float = 0.0
    used: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0
    _c0: dict[str, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        return {
            "service": cpu_seconds(self.service),
            "loop": cpu_seconds(self.service, self.service),
            "receiver": cpu_seconds(self.receiver),
            "client": self_cpu_seconds(),
            "broker": cpu_seconds(self.broker) if self.broker else 0.0,
        }

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = self._sample()

    def stop(self) -> None:
        self.wall = time.perf_counter() - self._t0
        now = self._sample()
        self.used = {n: now[n] - self._c0[n] for n in now}

    def share(self, name: str) -> float:
        return 100 * self.used.get(name, 0.0) / self.wall if self.wall > 0 else math.nan

    def summary(self, who: str = "service") -> str:
        loop, total = self.share("loop"), self.share("service")
        return (
            f"{who} {total:.0f}% (event loop thread {loop:.0f}%, other threads "
            f"{total - loop:.0f}%), receiver {self.share('receiver'):.0f}%, "
            f"bench client {self.share('client'):.0f}%"
            + (f", Kafka broker {self.share('broker'):.0f}%" if self.broker else "")
        )
