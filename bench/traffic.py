"""The HTTP traffic the phases offer (batches, single events, open-loop events matched
to their webhooks) and the set-up calls they need, each against the running service."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx
import orjson

from bench.http1 import Http1Pool, HttpError, Response
from bench.workload import Account, EventFactory

JSON = {"content-type": "application/json"}


class BenchError(RuntimeError):
    """The service answered something the bench cannot go on from."""


def _expect(r: httpx.Response, status: int, what: str) -> Any:
    if r.status_code != status:
        raise BenchError(f"{what}: expected HTTP {status}, got {r.status_code}: {r.text[:500]}")
    return r.json() if r.content else None


# -- set-up ---------------------------------------------------------------------------------
async def import_accounts(client: httpx.AsyncClient, accounts: list[Account]) -> int:
    body = {"accounts": [a.abm_row() for a in accounts]}
    r = await client.put("/v1/accounts", content=orjson.dumps(body), headers=JSON, timeout=120)
    return int(_expect(r, 200, "PUT /v1/accounts")["upserted"])


async def add_destination(client: httpx.AsyncClient, url: str) -> str:
    r = await client.post("/v1/destinations", json={"name": "bench", "url": url})
    return str(_expect(r, 201, "POST /v1/destinations")["id"])


async def set_signal_points(client: httpx.AsyncClient, signal: str, points: float) -> int:
    """Apply the active policy with one signal's points changed; returns the new version."""
    current = _expect(await client.get("/v1/policy"), 200, "GET /v1/policy")
    doc = current["policy"]
    doc["signals"][signal]["points"] = points
    r = await client.put(
        "/v1/policy",
        params={"comment": f"bench: {signal} = {points:g} points"},
        content=orjson.dumps(doc),
        headers=JSON,
    )
    return int(_expect(r, 200, "PUT /v1/policy")["version"])


async def free_mail(client: httpx.AsyncClient) -> frozenset[str]:
    """The active policy's free-mail domains (the service's partition key skips them)."""
    current = _expect(await client.get("/v1/policy"), 200, "GET /v1/policy")
    return frozenset(
        str(d).lower() for d in current["policy"].get("lists", {}).get("free_mail", [])
    )


async def receiver_count(rec: httpx.AsyncClient) -> int:
    return int((await rec.get("/count")).json()["count"])


async def wait_quiet(rec: httpx.AsyncClient, *, quiet: float, within: float) -> tuple[int, bool]:
    """Wait until no webhook has arrived for ``quiet`` s; (count, whether it settled)."""
    deadline = time.monotonic() + within
    last, since = await receiver_count(rec), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        n = await receiver_count(rec)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return n, True
    return last, False


# -- 1. batch ingest ------------------------------------------------------------------------
@dataclass
class BatchRun:
    requests: int = 0
    events: int = 0
    status: Counter[int] = field(default_factory=Counter)
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0
    # (seconds since the start, events accepted) per response, to see a trend.
    done: list[tuple[float, int]] = field(default_factory=list)

    def rate_between(self, start: float, end: float) -> float:
        """Accepted events/s counting responses that completed in [start, end)."""
        n = sum(k for t, k in self.done if start <= t < end)
        return n / (end - start) if end > start else 0.0

    @property
    def ok(self) -> bool:
        return (
            set(self.status) == {202}
            and self.accepted == self.events
            and not (self.duplicates or self.rejected or self.errors)
        )


async def post_batches(
    client: httpx.AsyncClient,
    bodies: list[bytes],
    sizes: list[int],
    *,
    concurrency: int,
    max_seconds: float | None = None,
) -> BatchRun:
    """POST pre-serialised batches with ``concurrency`` requests in flight."""
    run = BatchRun()
    todo = iter(range(len(bodies)))  # shared: each worker takes the next body
    t0 = time.perf_counter()
    deadline = t0 + max_seconds if max_seconds else None

    async def worker() -> None:
        for i in todo:
            if deadline is not None and time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            try:
                r = await client.post("/v1/events", content=bodies[i], headers=JSON)
            except httpx.HTTPError as exc:
                run.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            run.latencies.append(time.perf_counter() - started)
            run.requests += 1
            run.events += sizes[i]
            run.status[r.status_code] += 1
            if r.status_code == 202:
                body = orjson.loads(r.content)
                run.accepted += body["accepted"]
                run.done.append((time.perf_counter() - t0, body["accepted"]))
                run.duplicates += body["duplicates"]
                run.rejected += body["rejected"]
                if body["rejected"] and len(run.errors) < 3:
                    bad = next(x for x in body["results"] if x["status"] == "rejected")
                    run.errors.append(f"rejected: {bad}")
            elif len(run.errors) < 3:
                run.errors.append(f"HTTP {r.status_code}: {r.text[:300]}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.wall = time.perf_counter() - t0
    return run


# -- 2. single-event ingest -----------------------------------------------------------------
@dataclass
class SingleRun:
    requests: int = 0
    status: Counter[int] = field(default_factory=Counter)
    accepted: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0


async def post_single_events(
    pool: Http1Pool, factory: EventFactory, *, concurrency: int, seconds: float
) -> SingleRun:
    """Closed loop: ``concurrency`` workers, each posting one event and then the next."""
    run = SingleRun()
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            body = orjson.dumps(factory.event(time.time(), "s"))
            started = time.perf_counter()
            try:
                r = await pool.post("/v1/events", body)
            except (HttpError, OSError) as exc:
                run.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            run.latencies.append(time.perf_counter() - started)
            run.requests += 1
            run.status[r.status] += 1
            if r.status == 202 and _taken(r.body):
                run.accepted += 1
            elif len(run.errors) < 3:
                run.errors.append(f"HTTP {r.status}: {r.body[:300]!r}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.wall = time.perf_counter() - t0
    return run


# -- 3./4. event → webhook latency ---------------------------------------------------------
@dataclass
class LatencyRun:
    offered: int = 0  # events sent, routed or not
    offered_rate: float = 0.0
    skipped: int = 0  # not sent: too many requests already in flight
    unanswered: int = 0  # no response by the end of the drain
    accepted: int = 0  # events the service took (202, accepted or our retry's duplicate)
    routed_offered: int = 0  # sent events that should route (make a new lead hot)
    expected: int = 0  # of those, accepted: one lead.routed webhook each
    status: Counter[int] = field(default_factory=Counter)
    request_latencies: list[float] = field(default_factory=list)
    schedule_lag: list[float] = field(default_factory=list)
    # Per matched webhook: receiver time - send time, and its two halves.
    latencies: list[float] = field(default_factory=list)
    to_service: list[float] = field(default_factory=list)
    in_service: list[float] = field(default_factory=list)
    received: int = 0
    duplicates: int = 0
    missing: int = 0
    other_webhooks: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    settled: bool = True
    # From the first send to the last matched webhook: what the service kept up with.
    span: float = 0.0

    @property
    def webhooks_per_second(self) -> float:
        return self.received / self.span if self.span > 0 else 0.0

    @property
    def complete(self) -> bool:
        return (
            self.missing == 0
            and self.accepted == self.offered
            and self.expected == self.routed_offered
            and not self.duplicates
        )


def _taken(body: bytes) -> bool:
    """One event answered accepted, or duplicate (the pool's retry of one that was)."""
    doc = orjson.loads(body)
    return int(doc["accepted"]) + int(doc["duplicates"]) == 1


def _parse_ts(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


# Event i of the run → (the event, whether it should yield one lead.routed webhook).
MakeEvent = Callable[[int, float], tuple[dict[str, Any], bool]]


class Sender(Protocol):
    """What offers one event: an HTTP pool, or a producer onto the service's topic."""

    async def post(self, path: str, body: bytes) -> Response: ...


async def offer_events(
    pool: Sender,
    rec: httpx.AsyncClient,
    make: MakeEvent,
    *,
    rate: float,
    seconds: float,
    drain_timeout: float = 60.0,
    max_in_flight: int = 6_000,
) -> LatencyRun:
    """Open loop: one single-event POST every 1/rate s, each in its own task, whatever
    the responses do. Events that ``make`` marks as routed each make a new lead hot and
    should yield one ``lead.routed`` webhook, matched by ``data.trigger_event_id``."""
    run = LatencyRun()
    n = int(rate * seconds)
    sent_at: dict[str, float] = {}  # routed events only
    expected_ids: set[str] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def send(event: dict[str, Any], routed: bool) -> None:
        body = orjson.dumps(event)
        eid = event["event_id"]
        started = time.perf_counter()
        if routed:
            sent_at[eid] = time.time()
        try:
            r = await pool.post("/v1/events", body)
        except (HttpError, OSError) as exc:
            run.errors.append(f"{type(exc).__name__}: {exc}")
            return
        run.request_latencies.append(time.perf_counter() - started)
        run.status[r.status] += 1
        # A duplicate can only be our own retry of a request the service did take.
        if r.status == 202 and _taken(r.body):
            run.accepted += 1
            if routed:
                expected_ids.add(eid)
        elif len(run.errors) < 3:
            run.errors.append(f"HTTP {r.status}: {r.body[:300]!r}")

    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05
    for i in range(n):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        run.schedule_lag.append(max(0.0, loop.time() - due))
        if len(tasks) >= max_in_flight:  # one connection each: stay clear of the fd limit
            run.skipped += 1
            continue
        event, routed = make(i, time.time())
        run.routed_offered += routed
        task = asyncio.create_task(send(event, routed))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    run.offered = n - run.skipped
    run.offered_rate = n / max(1e-9, loop.time() - t0)

    # Wait for every response and every expected webhook (the service may be far behind),
    # within drain_timeout in all, then for the receiver to be quiet a moment. Other
    # webhooks (surges, ordinary events that happened to route) count at the receiver too,
    # so the count is only a hint: the matched set decides.
    deadline = time.monotonic() + drain_timeout
    if tasks:
        await asyncio.wait(set(tasks), timeout=max(0.1, deadline - time.monotonic()))
    while time.monotonic() < deadline:
        if await receiver_count(rec) >= len(expected_ids):
            break
        await asyncio.sleep(0.1)
    left = max(1.0, deadline - time.monotonic())
    _, run.settled = await wait_quiet(rec, quiet=0.5, within=left)
    records = (await rec.get("/stats", timeout=60)).json()
    while time.monotonic() < deadline:
        matched = {r[1] for r in records if r[0] == "lead.routed"}
        if expected_ids <= matched:
            break
        await asyncio.sleep(0.5)
        records = (await rec.get("/stats", timeout=60)).json()
    run.unanswered = len(tasks)
    for task in list(tasks):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    run.expected = len(expected_ids)

    seen: set[str] = set()
    first_sent, last_at = min(sent_at.values(), default=0.0), 0.0
    for type_, trigger, received_at, at in records:
        if type_ != "lead.routed" or trigger not in sent_at:
            run.other_webhooks[str(type_)] += 1
            continue
        if trigger in seen:
            run.duplicates += 1
            continue
        seen.add(trigger)
        last_at = max(last_at, at)
        sent = sent_at[trigger]
        run.latencies.append(at - sent)
        arrived = _parse_ts(received_at)
        if arrived is not None:
            run.to_service.append(arrived - sent)
            run.in_service.append(at - arrived)
    run.received = len(seen)
    run.span = last_at - first_sent if seen else 0.0
    run.missing = len(expected_ids - seen)
    return run
