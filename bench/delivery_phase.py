"""Delivery throughput with a dead endpoint (issue 4): does one destination that never
answers slow the deliveries to the healthy ones?

Ten destinations, of which nine are healthy (paths of the bench's receiver, which answers
204 at once) and one is a loopback TCP listener in this process that accepts connections
and never answers, so each attempt holds a connection until the service's delivery
timeout (15 s by default). Each run starts a fresh service with its own database (a queue
of dead deliveries cannot leak into the next run), imports the ABM accounts, applies a
policy where a demo request from a new VP at a tier-1 account makes exactly one new lead
hot and no account rule exists (so no surges: one decision per event), and registers the
destinations without filters, so every routed event fans out to all of them. After a
short warm-up, routed events are offered open loop at a fixed rate; each healthy delivery
is matched at the receiver by ``data.trigger_event_id`` to the time its event was sent.

Runs: A (the nine healthy destinations), B (the same plus the dead one), A again (the
noise of two runs without the dead one). B is compared with the mean of the two A runs;
the target is that the dead endpoint changes neither the healthy deliveries/s nor their
p99 by more than 10%. The bench talks to the service through its public HTTP API only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import traffic
from bench.http1 import Http1Pool, HttpError
from bench.session import HOT_DEMO_POINTS, Bench, service_env
from bench.stats import header, line, ms, pct

HEALTHY = 9
TARGET_CHANGE = 0.10  # the dead endpoint may move healthy deliveries/s and p99 by ≤ 10%
WARMUP_SECONDS = 2.0
DRAIN_SECONDS = 60.0
WINDOW_SECONDS = 5.0
DEFAULT_TIMEOUT = 15.0  # the service's INTENT_DELIVERY_TIMEOUT_SECONDS default


class DeadEndpoint:
    """A loopback listener that accepts connections, reads what is sent and never answers;
    it counts the connections it was offered and the most it held open at once."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        self._writers.add(writer)
        try:
            while await reader.read(65536):  # the request, then nothing until the client quits
                pass
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        """Stop listening and reset the connections held, so waiting attempts fail now."""
        if self.server is not None:
            self.server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.sleep(0)


@dataclass
class Run:
    name: str
    offered: int = 0
    offered_rate: float = 0.0
    accepted: int = 0
    status: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    schedule_lag: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # per healthy delivery
    sent_offsets: list[float] = field(default_factory=list)  # its event's send, from the start
    received: int = 0  # healthy deliveries matched to an event of this run
    expected: int = 0  # accepted events × healthy destinations
    missing: int = 0  # deliveries short of HEALTHY per accepted event
    duplicates: int = 0  # deliveries beyond HEALTHY per event
    other_webhooks: Counter[str] = field(default_factory=Counter)
    window: float = 0.0  # first send → last send
    in_window: int = 0  # healthy deliveries that arrived within it
    tail: float = 0.0  # last send → last healthy delivery
    per_destination: dict[str, tuple[float, float]] = field(default_factory=dict)
    service_rss_mb: float = math.nan
    cpu: str = ""
    dead: DeadEndpoint | None = None

    @property
    def rate(self) -> float:
        """Healthy deliveries/s while the load was on: a service falling behind shows."""
        return self.in_window / self.window if self.window > 0 else 0.0

    def p(self, q: float) -> float:
        return pct(self.latencies, q)

    @property
    def complete(self) -> bool:
        return (
            self.accepted == self.offered
            and self.missing == 0
            and self.duplicates == 0
            and self.expected == self.offered * HEALTHY
        )


async def offer(
    pool: Http1Pool, make: Callable[[float], dict[str, Any]], *, rate: float, seconds: float
) -> tuple[Run, dict[str, float]]:
    """Open loop: one routed event every 1/rate s, each POST in its own task; returns the
    run's counters and the send time of every event the service accepted."""
    run = Run("")
    n = int(rate * seconds)
    sent_at: dict[str, float] = {}
    taken: dict[str, float] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def send(event: dict[str, Any]) -> None:
        eid = event["event_id"]
        sent_at[eid] = time.time()
        try:
            r = await pool.post("/v1/events", orjson.dumps(event))
        except (HttpError, OSError) as exc:
            run.errors.append(f"{type(exc).__name__}: {exc}")
            return
        run.status[r.status] += 1
        doc = orjson.loads(r.body) if r.status == 202 else {}
        if int(doc.get("accepted", 0)) + int(doc.get("duplicates", 0)) == 1:
            run.accepted += 1
            taken[eid] = sent_at[eid]
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
        task = asyncio.create_task(send(make(time.time())))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    run.offered = n
    run.offered_rate = n / max(1e-9, loop.time() - t0)
    if tasks:
        await asyncio.wait(set(tasks), timeout=30)
    for task in list(tasks):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return run, taken


async def collect(rec: httpx.AsyncClient, run: Run, sent_at: dict[str, float]) -> None:
    """Wait for HEALTHY deliveries of every accepted event (within DRAIN_SECONDS), then
    match them to the events' send times."""
    run.expected = len(sent_at) * HEALTHY
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline:
        if await traffic.receiver_count(rec) >= run.expected:
            break
        await asyncio.sleep(0.2)
    await traffic.wait_quiet(rec, quiet=0.5, within=max(1.0, deadline - time.monotonic()))
    records = (await rec.get("/stats", timeout=60)).json()
    arrivals: Counter[str] = Counter()
    first_sent, last_sent = min(sent_at.values(), default=0.0), max(sent_at.values(), default=0.0)
    last_at = 0.0
    for type_, trigger, _received_at, at in records:
        sent = sent_at.get(trigger) if type_ == "lead.routed" else None
        if sent is None:
            run.other_webhooks[str(type_)] += 1
            continue
        arrivals[trigger] += 1
        if arrivals[trigger] > HEALTHY:
            continue
        run.latencies.append(at - sent)
        run.sent_offsets.append(sent - first_sent)
        last_at = max(last_at, at)
        run.in_window += first_sent <= at <= last_sent
    run.received = len(run.latencies)
    run.duplicates = sum(max(0, k - HEALTHY) for k in arrivals.values())
    run.missing = sum(HEALTHY - min(HEALTHY, arrivals[e]) for e in sent_at)
    run.window = last_sent - first_sent
    run.tail = max(0.0, last_at - last_sent)


async def delivery_counts(client: httpx.AsyncClient) -> dict[str, tuple[float, float]]:
    """``intent_deliveries_total`` per destination id: (delivered, failed) attempts."""
    text = (await client.get("/metrics", timeout=10)).text
    out: dict[str, tuple[float, float]] = {}
    for raw in text.splitlines():
        if not raw.startswith("intent_deliveries_total{"):
            continue
        labels, _, value = raw.partition("} ")
        pairs = labels.removeprefix("intent_deliveries_total{").split(",")
        fields = dict(part.split("=", 1) for part in pairs)
        dest, outcome = fields["destination"].strip('"'), fields["outcome"].strip('"')
        ok, failed = out.get(dest, (0.0, 0.0))
        if outcome == "delivered":
            ok += float(value)
        else:
            failed += float(value)
        out[dest] = (ok, failed)
    return out


def rss_mb(pid: int) -> float:
    try:
        for raw in Path(f"/proc/{pid}/status").read_text().splitlines():
            if raw.startswith("VmRSS:"):
                return int(raw.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return math.nan


async def one_decision_policy(client: httpx.AsyncClient) -> int:
    """Apply the active policy with ``demo_request`` at HOT_DEMO_POINTS and no account
    rules: each routed event then makes one decision, a ``lead.routed`` (with surges on,
    a few hundred new hot leads a second at 200 tier-1 accounts also surge them)."""
    current = (await client.get("/v1/policy")).raise_for_status().json()
    doc = current["policy"]
    doc["signals"]["demo_request"]["points"] = HOT_DEMO_POINTS
    doc["routing"]["rules"] = [r for r in doc["routing"]["rules"] if r.get("kind") != "account"]
    r = await client.put(
        "/v1/policy",
        params={"comment": f"bench: demo_request = {HOT_DEMO_POINTS} points, no surges"},
        content=orjson.dumps(doc),
        headers=traffic.JSON,
    )
    if r.status_code != 200:
        raise traffic.BenchError(f"PUT /v1/policy: HTTP {r.status_code}: {r.text[:300]}")
    return int(r.json()["version"])


async def add_destination(client: httpx.AsyncClient, name: str, url: str) -> str:
    r = await client.post("/v1/destinations", json={"name": name, "url": url})
    if r.status_code != 201:
        raise traffic.BenchError(f"POST /v1/destinations: HTTP {r.status_code}: {r.text[:300]}")
    return str(r.json()["id"])


def change(b: float, a: float) -> float:
    return (b - a) / a if a else math.nan


class DeliveryPhase:
    def __init__(self, bench: Bench, env: Callable[[str], dict[str, str]]) -> None:
        self.bench = bench
        self.env = env
        args = bench.args
        self.rate: float = args.delivery_rate
        self.seconds: float = args.delivery_seconds
        self.timeout = float(
            os.environ.get("INTENT_DELIVERY_TIMEOUT_SECONDS", "") or DEFAULT_TIMEOUT
        )

    def make(self, now: float) -> dict[str, Any]:
        b = self.bench
        return b.factory.hot_lead_event(b.rng.choice(b.tier1), now)

    async def run_once(self, name: str, *, dead: bool) -> Run:
        b = self.bench
        print(
            f"\n  -- run {name}: {HEALTHY} healthy destinations"
            + (" + 1 that never answers" if dead else "")
            + f", {self.rate:,g} routed events/s for {self.seconds:g} s",
            flush=True,
        )
        tag = name.lower().replace(" ", "")
        await b.start_service(f"service-delivery-{tag}", self.env(f"delivery-{tag}.db"), fresh=True)
        endpoint: DeadEndpoint | None = None
        try:
            await traffic.import_accounts(b.http, b.accounts)
            await one_decision_policy(b.http)
            healthy = [
                await add_destination(
                    b.http, f"healthy-{i}", f"http://127.0.0.1:{b.rec_port}/hook/{i}"
                )
                for i in range(HEALTHY)
            ]
            dead_id = ""
            if dead:
                endpoint = DeadEndpoint()
                await endpoint.start()
                url = f"http://127.0.0.1:{endpoint.port}/hook"
                dead_id = await add_destination(b.http, "dead", url)
            line(
                "service (fresh database)",
                f"pid {b.svc.pid}",
                f"{len(healthy) + dead} destinations, no filters",
            )
            pool = Http1Pool("127.0.0.1", b.port, b.auth)
            try:
                warm, _ = await offer(pool, self.make, rate=self.rate, seconds=WARMUP_SECONDS)
                await traffic.wait_quiet(b.hooks, quiet=0.5, within=30)
                (await b.hooks.post("/reset")).raise_for_status()
                before = await delivery_counts(b.http)
                await b.measure_start(f"delivery-{tag}")
                run, sent_at = await offer(pool, self.make, rate=self.rate, seconds=self.seconds)
                await collect(b.hooks, run, sent_at)
            finally:
                await pool.close()
            await b.measure_stop()
            run.name, run.dead, run.cpu = name, endpoint, b.cpu.summary()
            after = await delivery_counts(b.http)
            run.per_destination = {
                d: (ok - before.get(d, (0.0, 0.0))[0], bad - before.get(d, (0.0, 0.0))[1])
                for d, (ok, bad) in after.items()
            }
            run.service_rss_mb = rss_mb(b.svc.pid)
            self.report(run, healthy)
            if endpoint is not None:
                await self.dead_backlog(endpoint, dead_id, made=warm.accepted + run.accepted)
        finally:
            if endpoint is not None:
                await endpoint.close()  # waiting attempts fail at once: a prompt shutdown
            await b.stop_service(f"service of run {name} stopped")
        return run

    async def dead_backlog(self, endpoint: DeadEndpoint, dead_id: str, *, made: int) -> None:
        """Close the dead endpoint and count the attempts that then fail at once: about
        the deliveries the dispatcher still held for it, in flight or waiting for a slot
        (jobs it drops unsent, queued past their lease, are not counted)."""
        b = self.bench

        async def failed() -> float:
            return (await delivery_counts(b.http)).get(dead_id, (0.0, 0.0))[1]

        f0 = await failed()
        await endpoint.close()
        last, since, deadline = f0, time.monotonic(), time.monotonic() + 20
        while time.monotonic() - since < 1.0 and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            n = await failed()
            if n != last:
                last, since = n, time.monotonic()
        held = last - f0
        line(
            "dead endpoint closed: attempts failing at once",
            f"{held:,.0f}",
            f"≈ the jobs the service held in memory for it; {made:,} deliveries were made "
            "to it" + (" (so some were queued more than once)" if held > made else ""),
        )

    def report(self, run: Run, healthy: list[str]) -> None:
        line(
            "routed events offered / accepted",
            f"{run.offered:,} / {run.accepted:,}",
            f"at {run.offered_rate:,.1f} events/s; " + "; ".join(run.errors[:3]),
        )
        line("  sender lag behind schedule p99", ms(pct(run.schedule_lag, 99)))
        line(
            "healthy deliveries received / expected",
            f"{run.received:,} / {run.expected:,}",
            f"missing {run.missing}, duplicates {run.duplicates}",
        )
        if run.other_webhooks:
            others = ", ".join(f"{k} {v}" for k, v in run.other_webhooks.items())
            line("other webhooks meanwhile (not timed)", "", others)
        ok = [run.per_destination.get(d, (0.0, 0.0))[0] for d in healthy]
        line(
            "  per healthy destination (service's count)",
            f"{min(ok):,.0f} – {max(ok):,.0f}",
            "delivered, fewest – most",
        )
        line(
            "healthy deliveries/s while sending",
            f"{run.rate:,.0f}",
            f"the last one {ms(run.tail)} after the last send",
        )
        for q in (50, 95, 99):
            line(f"event → healthy webhook p{q}", ms(run.p(q)))
        line("event → healthy webhook max", ms(max(run.latencies, default=math.nan)))
        windows: dict[int, list[float]] = {}
        for off, lat in zip(run.sent_offsets, run.latencies, strict=True):
            windows.setdefault(int(off // WINDOW_SECONDS), []).append(lat)
        line(
            f"  p99 per {WINDOW_SECONDS:g} s of sending, ms",
            "",
            " ".join(f"{pct(v, 99) * 1000:.0f}" for _, v in sorted(windows.items())),
        )
        if run.dead is not None:
            dead_ids = set(run.per_destination) - set(healthy)
            failed = sum(run.per_destination[d][1] for d in dead_ids)
            line(
                "dead endpoint: connections accepted",
                f"{run.dead.accepted:,}",
                f"at most {run.dead.max_open} open at once; {failed:,.0f} attempts failed "
                f"(timeout {self.timeout:g} s)",
            )
        line("service RSS at the end of the run", f"{run.service_rss_mb:,.0f} MB")
        line("CPU (100% = one core)", "", run.cpu)

    async def run(self) -> None:
        b = self.bench
        header(
            f"Delivery throughput with a dead endpoint: {HEALTHY} healthy destinations, "
            "then 1 more that never answers"
        )
        line(
            "offered",
            f"{self.rate:,g} events/s",
            f"each routed to every destination: {self.rate * HEALTHY:,g} healthy deliveries/s",
        )
        line(
            "runs (each on a fresh service)",
            "A, B, A again",
            f"{WARMUP_SECONDS:g} s warm-up + {self.seconds:g} s timed; "
            f"delivery timeout {self.timeout:g} s",
        )
        a1 = await self.run_once("A", dead=False)
        bb = await self.run_once("B", dead=True)
        a2 = await self.run_once("A again", dead=False)
        self.table(a1, bb, a2)
        b.summary.failed |= not (a1.complete and bb.complete and a2.complete)

    def table(self, a1: Run, bb: Run, a2: Run) -> None:
        b = self.bench
        header("Delivery throughput with a dead endpoint: B against the mean of the A runs")
        # The target judges deliveries/s and p99; p50 and p95 show where a change starts.
        rows: list[tuple[str, float, float, float, bool]] = [
            ("healthy deliveries/s", a1.rate, a2.rate, bb.rate, True),
            *((f"p{q} event → webhook", a1.p(q), a2.p(q), bb.p(q), q == 99) for q in (50, 95, 99)),
        ]
        head = ("", "A", "A again", "B (+dead)", "B vs mean A", "A vs A", "target ±10%")
        table = [head]
        for label, x1, x2, y, judged in rows:
            base = (x1 + x2) / 2
            d, noise = change(y, base), abs(change(x2, x1))
            fmt = (lambda v: f"{v:,.0f}") if label.endswith("/s") else ms
            verdict = ("PASS" if abs(d) <= TARGET_CHANGE else "MISS") if judged else ""
            table.append((label, fmt(x1), fmt(x2), fmt(y), f"{d:+.1%}", f"{noise:.1%}", verdict))
            if judged:
                b.summary.add(
                    f"dead endpoint: {label.replace('healthy ', '')} of the healthy",
                    f"{fmt(y)} vs {fmt(base)} ({d:+.1%})",
                    "±10%",
                    verdict,
                )
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        for r in table:
            cells = [r[0].ljust(widths[0])]
            cells += [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
            print("  " + "  ".join(cells).rstrip(), flush=True)
        noise = abs(change(a2.p(99), a1.p(99)))
        if noise > TARGET_CHANGE:
            note = (
                f"the two A runs differ by {noise:.0%} in p99: a ±10% comparison is below "
                "this machine's noise"
            )
            print(f"  {note}", flush=True)
            b.summary.notes.append(f"dead endpoint: {note}")
        line(
            "deliveries received / expected, A / B / A again",
            " / ".join("OK" if r.complete else "INCOMPLETE" for r in (a1, bb, a2)),
        )


async def run(bench: Bench) -> None:
    """The phase: three runs, each on a fresh service with a database file of its own."""
    await DeliveryPhase(bench, lambda db: service_env(bench.workdir, db)).run()
