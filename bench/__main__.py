"""``python -m bench``: start the real service on loopback and measure it.

Embedded mode first (SQLite in a temporary directory, HTTP ingest): start the receiver
and the service, import ABM accounts, register the receiver as a destination, then

1. batch ingest: pre-serialised batches of 1,000 events, a few requests in flight;
2. single-event ingest: one event per request, 64 in flight, closed loop;
3. event → webhook, every event routed: demo requests, each from a new VP at a tier-1
   ICP account, offered open loop — first a short 50 events/s baseline (the latency
   floor of an idle service), then 500 events/s. With the default policy such a lead has
   fit 50 and a demo request gives 20 intent points (total 70, warm), so this phase first
   applies a policy version with ``demo_request`` at 31 points: each event then makes
   exactly one new lead hot and yields one ``lead.routed`` webhook, matched at the
   receiver by ``data.trigger_event_id`` to the time the event was sent;
4. event → webhook, realistic mix: 500 events/s where 1 in 20 makes a new lead hot and
   the rest are ordinary traffic of the pool's leads (site visits, email opens, …; no
   demo requests), timed for the routed events only;
D. delivery throughput with a dead endpoint (``bench.delivery_phase``): 9 healthy
   destinations, then the same plus one that never answers, each run on a fresh service
   (``--only delivery`` runs just this phase).

Then, when a Kafka broker is available (see ``bench.kafka_phases``), Kafka mode — the
service with ``INTENT_KAFKA_BOOTSTRAP`` set, still on an embedded SQLite database, with a
topic and consumer group of its own:

5. the ceiling: one raw AIOKafkaConsumer reading a pre-produced backlog (getmany of up to
   5,000, a commit after each), the way the service's consumer reads;
6. pipeline throughput: a keyed backlog produced straight to the service's topic, applied
   by the service's consumer (``intent_events_ingested_total{transport="kafka"}``);
7. event → webhook through Kafka: HTTP ingest produces (202 after the broker's ack), the
   consumer applies, the dispatcher delivers — a realistic mix; the same mix produced by
   this process straight onto the topic, as a source writing to Kafka would
   (``kafka_phases.TopicSender``, no HTTP in the path); and a short strict run;
7b. the realistic mix again with the roles in two processes (API | consumer+dispatcher),
   the way a 2-core machine would run them.

Subprocesses, services this run started and the temporary directory are removed on
exit, Ctrl-C and errors; a broker found running is reused and left running.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import orjson

from bench import delivery_phase, kafka_phases, phases, profile
from bench.http1 import Http1Pool
from bench.procs import (
    ROOT,
    Child,
    ChildError,
    find_child,
    free_port,
    stop_all,
    venv_bin,
    wait_http_ok,
)
from bench.stats import CpuMeter, diff, header, histogram_quantile, line, ms, pct, scrape
from bench.workload import EventFactory, kafka_key, make_accounts, make_leads

TARGET_BATCH_EPS = 20_000
TARGET_WEBHOOK_P99 = 0.050
TARGET_KAFKA_WEBHOOK_P99 = 0.100
TARGET_KAFKA_RATIO = 0.50  # pipeline throughput / raw consume rate
# Fit 50 + 30 points would total 79.99…, not 80: the points decay from occurred_at to the
# moment the service applies the event. 31 clears the hot threshold with a margin of 1.
HOT_DEMO_POINTS = 31
BASELINE_RATE = 50.0
PORT_RE = re.compile(r"PORT (\d+)")
KEY_RE = re.compile(r"\b(ir_[A-Za-z0-9_\-]{20,})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--accounts", type=int, default=2_000, help="ABM accounts (default 2000)")
    p.add_argument("--leads", type=int, default=20_000, help="distinct leads (default 20000)")
    p.add_argument("--events", type=int, default=200_000, help="timed batch events")
    p.add_argument("--warmup-events", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=1_000)
    p.add_argument("--batch-concurrency", type=int, default=3, help="batches in flight")
    p.add_argument("--batch-max-seconds", type=float, default=30.0, help="time cap, phase 1")
    p.add_argument("--single-concurrency", type=int, default=64)
    p.add_argument("--single-seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=500.0, help="phases 3-4 offered events/s")
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument("--baseline-seconds", type=float, default=4.0, help="0 skips the baseline")
    p.add_argument("--mix-seconds", type=float, default=15.0, help="phase 4; 0 skips it")
    p.add_argument("--mix-every", type=int, default=20, help="1 in N events routes (4, 7)")
    p.add_argument("--delivery-rate", type=float, default=100.0, help="phase D events/s")
    # Past the service's 60 s delivery lease: a dead endpoint's backlog changes after it.
    p.add_argument("--delivery-seconds", type=float, default=70.0, help="phase D, per run")
    p.add_argument(
        "--only",
        choices=("delivery", "latency", "kafka"),
        help="run only this phase (latency: phases 3 and 4, event → webhook; kafka: 5-7b)",
    )
    p.add_argument("--no-kafka", action="store_true", help="skip the Kafka phases")
    p.add_argument("--kafka-raw-events", type=int, default=200_000, help="phase 5 messages")
    p.add_argument("--kafka-events", type=int, default=100_000, help="phase 6 backlog")
    p.add_argument("--kafka-max-seconds", type=float, default=45.0, help="time cap, phase 6")
    p.add_argument("--kafka-rate", type=float, default=1_000.0, help="phase 7 events/s")
    p.add_argument("--kafka-seconds", type=float, default=10.0, help="phase 7 duration")
    p.add_argument("--kafka-strict-rate", type=float, default=500.0)
    p.add_argument(
        "--kafka-split-seconds", type=float, default=10.0, help="phase 7b duration; 0 skips it"
    )
    p.add_argument("--kafka-strict-seconds", type=float, default=3.0, help="0 skips it")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--profile", action="store_true", help="sample the service with py-spy")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--quick", action="store_true", help="a short smoke run (~1 min)")
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.warmup_events = 20_000, 2_000
        args.single_seconds, args.latency_seconds, args.baseline_seconds = 3.0, 5.0, 2.0
        args.mix_seconds, args.kafka_raw_events, args.kafka_events = 5.0, 50_000, 20_000
        args.kafka_seconds, args.kafka_strict_seconds = 4.0, 2.0
        args.kafka_split_seconds = 4.0
        args.delivery_seconds = 20.0
    if args.mix_every < 1:
        p.error("--mix-every must be at least 1")
    if args.profile and not profile.available():
        p.error("--profile needs py-spy: .venv/bin/pip install py-spy")
    return args


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def statuses(status: dict[int, int]) -> str:
    return ", ".join(f"HTTP {k}: {v:,}" for k, v in sorted(status.items()))


def code_version() -> str:
    """The commit of the working tree, and whether app/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "app"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in app/' if dirty else ''}"


def service_env(workdir: Path, db: str = "bench.db", **extra: str) -> dict[str, str]:
    """The caller's environment (other INTENT_* settings pass through) plus ours. The
    caller's INTENT_KAFKA_* never reach the embedded-mode service; ``extra`` sets them
    for the Kafka-mode one."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("INTENT_HOST", "INTENT_PORT") and not k.startswith("INTENT_KAFKA_")
    }
    env.update(
        INTENT_DATABASE_URL=f"sqlite+aiosqlite:///{workdir}/{db}",
        INTENT_DELIVERY_ALLOWED_HOSTS="127.0.0.1",
        INTENT_LOG_LEVEL="warning",
    )
    env.update(extra)
    return env


def latency_figures(lat: phases.LatencyRun) -> tuple[dict[int, float], float, str]:
    p = {q: pct(lat.latencies, q) for q in (50, 95, 99)}
    worst = max(lat.latencies, default=math.nan)
    text = f"p50 {p[50] * 1000:.1f}, p95 {p[95] * 1000:.1f}, p99 {p[99] * 1000:.1f}, "
    return p, worst, text + f"max {worst * 1000:.1f} ms"


@dataclass
class Summary:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: bool = False

    def add(self, figure: str, value: str, target: str = "", result: str = "") -> None:
        self.rows.append((figure, value, target, result))

    def print(self) -> None:
        header("Summary")
        head = ("figure", "measured", "target", "")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]
        for r in [head, *self.rows]:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        for note in self.notes:
            print(f"  {note}")


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.rng = random.Random(args.seed)
        self.accounts = make_accounts(args.accounts, self.rng)
        self.leads = make_leads(args.leads, self.accounts, self.rng)
        self.tier1 = [a for a in self.accounts if a.tier == "tier_1"]
        self.factory = EventFactory(self.leads, self.rng, secrets.token_hex(3))
        self.summary = Summary()
        self.version = code_version()
        self.free_mail: frozenset[str] = frozenset()
        self.policy_version: int | None = None  # set once demo_request has HOT_DEMO_POINTS
        self.broker_pid: int | None = None
        self.raw_rate = 0.0  # phase 5a, messages/s
        # Set by start() / start_service() / measure_start():
        self.service: Child | None = None
        self.receiver: Child
        self.port: int
        self.base: str
        self.rec_port: int
        self.key: str
        self.auth: dict[str, str]
        self.client: httpx.AsyncClient | None = None
        self.rec: httpx.AsyncClient | None = None
        self.prof: profile.Profiler | None = None
        self.metrics0: dict[str, float] = {}
        self.cpu: CpuMeter

    @property
    def svc(self) -> Child:
        assert self.service is not None
        return self.service

    @property
    def http(self) -> httpx.AsyncClient:
        assert self.client is not None
        return self.client

    @property
    def hooks(self) -> httpx.AsyncClient:
        assert self.rec is not None
        return self.rec

    # -- processes -------------------------------------------------------------------------
    async def start(self) -> list[bytes]:
        """Start the receiver and the service; returns the batch bodies for phase 1."""
        args, workdir = self.args, self.workdir
        header("Set-up")
        line("cores on this machine", str(os.cpu_count()))
        line("code under test", self.version)
        ours = ("DATABASE_URL", "DELIVERY_ALLOWED_HOSTS", "LOG_LEVEL", "HOST", "PORT")
        intent = [k for k in os.environ if k.startswith("INTENT_")]
        extra = sorted(k for k in intent if k[7:] not in ours and not k[7:].startswith("KAFKA_"))
        if extra:
            line("INTENT_* settings passed to the service", ", ".join(extra))
        if any(k.startswith("INTENT_KAFKA_") for k in intent):
            line("INTENT_KAFKA_* from the environment", "", "not used by phases 1-4")
        self.spawn_receiver()
        # Serialise the batch bodies while the service migrates and starts.
        n = args.warmup_events + args.events
        t0 = time.perf_counter()
        gen = asyncio.create_task(
            asyncio.to_thread(self.factory.batches, n, args.batch_size, time.time())
        )
        try:
            port_line = await self.receiver.wait_for_stdout(PORT_RE, "its port", 20)
            self.rec_port = int(port_line.group(1))
            await self.start_service("service", service_env(workdir), fresh=True)
            await wait_http_ok(f"http://127.0.0.1:{self.rec_port}/count", self.receiver, 20)
            bodies = await asyncio.wait_for(gen, 120)
        finally:
            if not gen.done():
                gen.cancel()
        self.rec = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.rec_port}", timeout=30)
        line("service (SQLite, HTTP ingest)", f"pid {self.svc.pid}", self.base)
        line("webhook receiver (own process)", f"pid {self.receiver.pid}", f"port {self.rec_port}")
        line("batch bodies serialised", f"{len(bodies)}", f"in {time.perf_counter() - t0:.1f} s")
        return bodies

    def spawn_receiver(self) -> None:
        self.receiver = Child(
            "receiver",
            [sys.executable, "-m", "bench.receiver"],
            env=dict(os.environ),
            workdir=self.workdir,
        )

    async def start_receiver(self) -> None:
        """The receiver alone (``--only``): no service, no batch bodies."""
        header("Set-up")
        line("cores on this machine", str(os.cpu_count()))
        line("code under test", self.version)
        self.spawn_receiver()
        port_line = await self.receiver.wait_for_stdout(PORT_RE, "its port", 20)
        self.rec_port = int(port_line.group(1))
        await wait_http_ok(f"http://127.0.0.1:{self.rec_port}/count", self.receiver, 20)
        self.rec = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.rec_port}", timeout=30)
        line("webhook receiver (own process)", f"pid {self.receiver.pid}", f"port {self.rec_port}")

    async def start_service(self, name: str, env: dict[str, str], *, fresh: bool) -> None:
        """Start ``intent-router serve`` on a free port; ``fresh``: a new database, whose
        bootstrap admin key the service prints (a restart reuses the key it has)."""
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.service = Child(
            name,
            [venv_bin("intent-router"), "serve", "--host", "127.0.0.1", "--port", f"{self.port}"],
            env=env,
            workdir=self.workdir,
        )
        if fresh:
            key_line = await self.service.wait_for_stdout(KEY_RE, "the admin API key", 60)
            self.key = key_line.group(1)
            self.auth = {"authorization": f"Bearer {self.key}"}
        await wait_http_ok(f"{self.base}/readyz", self.service, 60)
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        self.client = httpx.AsyncClient(
            base_url=self.base, headers=self.auth, timeout=60.0, limits=limits
        )

    async def stop_service(self, what: str = "service stopped") -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.service is None:
            return
        service, self.service = self.service, None
        t0 = time.perf_counter()
        rc = await asyncio.to_thread(service.stop, 20.0)
        # uvicorn re-raises the SIGTERM it handled, so a graceful stop reads as -15.
        clean = rc in (0, -signal.SIGTERM)
        line(
            what,
            f"in {time.perf_counter() - t0:.1f} s",
            f"exit code {rc}" + ("" if clean else f"\n{service.stderr_tail(30)}"),
        )
        if not clean:
            self.summary.failed = True

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.rec is not None:
            await self.rec.aclose()

    # -- measuring helpers -----------------------------------------------------------------
    async def measure_start(self, name: str) -> None:
        """Before a phase: the service is alive, py-spy attached, counters read."""
        self.svc.ensure_alive()
        self.prof = None
        if self.args.profile:
            self.prof = profile.Profiler(self.svc.pid, self.workdir, name)
            await asyncio.sleep(0.5)  # let py-spy attach before the load starts
        self.metrics0 = await scrape(self.http)
        self.cpu = CpuMeter(self.svc.pid, self.receiver.pid, self.broker_pid)
        self.cpu.start()

    async def measure_stop(self) -> dict[str, float]:
        """After a phase: CPU and the service's counters over it; prints the profile."""
        self.cpu.stop()
        self.svc.ensure_alive()
        m = diff(await scrape(self.http), self.metrics0)
        if self.prof is not None:
            await self.prof.stop()
            print("  -- py-spy profile of the service during this phase")
            for text in self.prof.report():
                print(f"     {text}")
        return m

    def service_lines(
        self, m: dict[str, float], wall: float, cpu: CpuMeter | None = None, who: str = "service"
    ) -> None:
        """The service's own view: pipeline transactions, their size and busy share."""
        n = m.get("intent_pipeline_batch_seconds_count", 0.0)
        if n:
            busy = m.get("intent_pipeline_batch_seconds_sum", 0.0)
            events = m.get("intent_pipeline_batch_events_sum", 0.0)
            line(
                f"{who} pipeline transactions",
                f"{n:,.0f}",
                f"avg {events / n:,.1f} events, {1000 * busy / n:.1f} ms each",
            )
            line(
                "  wall time with a transaction open",
                f"{100 * busy / wall:.0f}%" if wall else "n/a",
                "(one transaction at a time)",
            )
        line(
            "routing decisions / webhooks ok / failed",
            f"{m.get('intent_decisions_total', 0):,.0f} / "
            f"{m.get('intent_deliveries_total|delivered', 0):,.0f} / "
            f"{m.get('intent_deliveries_total|failed', 0):,.0f}",
            f"({m.get('intent_decisions_suppressed_total', 0):,.0f} suppressed by cooldown)",
        )
        line("CPU (100% = one core)", "", (cpu or self.cpu).summary(who))

    # -- phases ----------------------------------------------------------------------------
    async def setup(self) -> None:
        n = await phases.import_accounts(self.http, self.accounts)
        line("ABM accounts imported", f"{n:,}", f"{len(self.tier1)} tier_1")
        hook = f"http://127.0.0.1:{self.rec_port}/hook"
        await phases.add_destination(self.http, hook)
        line("webhook destination registered", "bench", hook)
        line("distinct leads in the event pool", f"{len(self.leads):,}")
        self.free_mail = await phases.free_mail(self.http)
        self.policy_version = None

    async def batch_phase(self, bodies: list[bytes]) -> None:
        args = self.args
        header(
            f"1. Batch ingest (full pipeline): {args.batch_size:,} events per POST, "
            f"{args.batch_concurrency} in flight, httpx"
        )
        n_total = args.warmup_events + args.events
        sizes = [min(args.batch_size, n_total - i) for i in range(0, n_total, args.batch_size)]
        n_warm = math.ceil(args.warmup_events / args.batch_size)
        warm = await phases.post_batches(
            self.http, bodies[:n_warm], sizes[:n_warm], concurrency=args.batch_concurrency
        )
        line("warm-up", f"{warm.events:,} events", f"{warm.events / warm.wall:,.0f} events/s")
        await self.measure_start("batch")
        b = await phases.post_batches(
            self.http,
            bodies[n_warm:],
            sizes[n_warm:],
            concurrency=args.batch_concurrency,
            max_seconds=args.batch_max_seconds,
        )
        m = await self.measure_stop()
        eps = b.accepted / b.wall if b.wall else 0.0
        capped = (
            f"(stopped at the {args.batch_max_seconds:g} s cap)" if b.events < args.events else ""
        )
        line("events sent", f"{b.events:,}", capped)
        line("HTTP responses", f"{b.requests:,}", statuses(b.status))
        line("accepted / duplicates / rejected", f"{b.accepted:,} / {b.duplicates} / {b.rejected}")
        line(
            "every response 202, accepted = sent", "yes" if b.ok else "NO", "; ".join(b.errors[:3])
        )
        line("wall time", f"{b.wall:.2f} s")
        line(
            "full-pipeline throughput",
            f"{eps:,.0f} events/s",
            f"target ≥ {TARGET_BATCH_EPS:,}: {verdict(eps >= TARGET_BATCH_EPS)}",
        )
        if b.wall >= 20:
            first, last = b.rate_between(0, 10), b.rate_between(b.wall - 10, b.wall)
            line("  in the first / last 10 s", f"{first:,.0f} / {last:,.0f}", "events/s")
        line("batch request latency p50", ms(pct(b.latencies, 50)))
        line("batch request latency p99", ms(pct(b.latencies, 99)))
        self.service_lines(m, b.wall)
        self.summary.add(
            "batch ingest, full pipeline",
            f"{eps:,.0f} events/s",
            f"≥ {TARGET_BATCH_EPS:,} events/s",
            verdict(eps >= TARGET_BATCH_EPS),
        )
        self.summary.failed |= not b.ok

    async def single_phase(self) -> None:
        args = self.args
        header(
            f"2. Single-event ingest: 1 event per POST, {args.single_concurrency} in flight, "
            f"{args.single_seconds:g} s, closed loop"
        )
        await phases.wait_quiet(self.hooks, quiet=1.0, within=20)  # phase 1's webhooks
        pool = Http1Pool("127.0.0.1", self.port, self.auth)
        await self.measure_start("single")
        try:
            s = await phases.post_single_events(
                pool, self.factory, concurrency=args.single_concurrency, seconds=args.single_seconds
            )
        finally:
            await pool.close()
        m = await self.measure_stop()
        rps = s.requests / s.wall if s.wall else 0.0
        ok = set(s.status) == {202} and s.accepted == s.requests and not s.errors
        line("requests", f"{s.requests:,}", statuses(s.status))
        line("events accepted", f"{s.accepted:,}", "; ".join(s.errors[:3]))
        line("  connections opened / retried requests", f"{pool.opened} / {pool.retries}")
        line("single-event ingest", f"{rps:,.0f} requests/s")
        line("request latency p50", ms(pct(s.latencies, 50)))
        line("request latency p99", ms(pct(s.latencies, 99)))
        self.service_lines(m, s.wall)
        self.summary.add(
            f"single-event ingest, {args.single_concurrency} in flight", f"{rps:,.0f} req/s"
        )
        self.summary.add(
            "  request latency p50 / p99",
            f"{pct(s.latencies, 50) * 1000:.1f} / {pct(s.latencies, 99) * 1000:.1f} ms",
        )
        self.summary.failed |= not ok

    async def ensure_hot_policy(self) -> None:
        if self.policy_version is None:
            self.policy_version = await phases.set_signal_points(
                self.http, "demo_request", HOT_DEMO_POINTS
            )
            line(
                f"policy applied: demo_request = {HOT_DEMO_POINTS} points",
                f"version {self.policy_version}",
            )

    def strict_events(self) -> phases.MakeEvent:
        def make(i: int, now: float) -> tuple[dict[str, Any], bool]:
            return self.factory.hot_lead_event(self.rng.choice(self.tier1), now), True

        return make

    def mixed_events(self) -> phases.MakeEvent:
        every = self.args.mix_every

        def make(i: int, now: float) -> tuple[dict[str, Any], bool]:
            return self.factory.mixed(now, i, every, self.tier1)

        return make

    async def latency_phase(self) -> None:
        args = self.args
        header("3. Event → webhook latency, open loop, every event routed (a new hot lead each)")
        n_hooks, settled = await phases.wait_quiet(self.hooks, quiet=1.5, within=30)
        line("webhooks of phases 1-2 received", f"{n_hooks:,}", "" if settled else "(NOT settled)")
        await self.ensure_hot_policy()
        if args.baseline_seconds > 0:
            await self.offer(
                BASELINE_RATE,
                args.baseline_seconds,
                "baseline",
                self.strict_events(),
                kind="idle baseline",
                label=f"event→webhook @ {BASELINE_RATE:,g}/s, every event routed (baseline)",
            )
        await self.offer(
            args.rate,
            args.latency_seconds,
            "webhook",
            self.strict_events(),
            kind="target rate",
            label=f"event→webhook @ {args.rate:,g}/s, every event routed",
            target=TARGET_WEBHOOK_P99,
        )

    async def mix_phase(self) -> None:
        args = self.args
        if args.mix_seconds <= 0:
            return
        header(
            f"4. Event → webhook latency, open loop, realistic mix: 1 in {args.mix_every} "
            "events makes a new lead hot"
        )
        line("the other events", "", "ordinary pool traffic (no demo requests), not timed")
        await self.ensure_hot_policy()
        await self.offer(
            args.rate,
            args.mix_seconds,
            "mix",
            self.mixed_events(),
            kind=f"target rate, 1 in {args.mix_every} routed",
            label=f"event→webhook @ {args.rate:,g}/s, 1 in {args.mix_every} routed",
            target=TARGET_WEBHOOK_P99,
        )

    async def offer(
        self,
        rate: float,
        seconds: float,
        name: str,
        make: phases.MakeEvent,
        *,
        kind: str,
        label: str,
        target: float | None = None,
        drain: float = 60.0,
        topic: kafka_phases.TopicSender | None = None,
    ) -> phases.LatencyRun:
        """Offer events at ``rate``: single-event POSTs, or onto the topic with ``topic``."""
        print(f"\n  -- {rate:,g} events/s for {seconds:g} s ({kind})", flush=True)
        await phases.wait_quiet(self.hooks, quiet=0.5, within=30)
        (await self.hooks.post("/reset")).raise_for_status()
        sender: phases.Sender = topic or Http1Pool("127.0.0.1", self.port, self.auth)
        pool = sender if isinstance(sender, Http1Pool) else None  # ours: report and close it
        await self.measure_start(name)
        try:
            lat = await phases.offer_events(
                sender, self.hooks, make, rate=rate, seconds=seconds, drain_timeout=drain
            )
        finally:
            if pool is not None:
                await pool.close()
        m = await self.measure_stop()
        p, worst, figures = latency_figures(lat)
        routed = lat.routed_offered
        line(
            "events offered",
            f"{lat.offered:,}",
            f"at {lat.offered_rate:,.1f} events/s"
            + (f"; {routed:,} of them make a new lead hot" if routed != lat.offered else ""),
        )
        if lat.skipped:
            line("  NOT sent: over 6,000 requests in flight", f"{lat.skipped:,}")
        line(
            "  sender lag behind schedule p99 / max",
            ms(pct(lat.schedule_lag, 99)),
            f"/ {ms(max(lat.schedule_lag, default=math.nan))}",
        )
        if pool is not None:
            line("HTTP responses", f"{sum(lat.status.values()):,}", statuses(lat.status))
        if lat.unanswered:
            line("  NO response by the end of the drain", f"{lat.unanswered:,}")
        line("events accepted", f"{lat.accepted:,}", "; ".join(lat.errors[:3]))
        if pool is not None:
            line("  connections opened / retried requests", f"{pool.opened} / {pool.retries}")
        what = "request" if pool is not None else "produce (until the broker's ack)"
        line(f"{what} latency p50", ms(pct(lat.request_latencies, 50)))
        line(f"{what} latency p99", ms(pct(lat.request_latencies, 99)))
        line(
            "lead.routed webhooks received / expected",
            f"{lat.received:,} / {lat.expected:,}",
            f"missing {lat.missing}, duplicates {lat.duplicates}"
            + ("" if lat.settled else ", receiver NOT settled"),
        )
        if lat.other_webhooks:
            others = ", ".join(f"{k} {v}" for k, v in lat.other_webhooks.items())
            line("other webhooks meanwhile (not timed)", "", others)
        line("timed webhooks/s, first send → last one", f"{lat.webhooks_per_second:,.0f}")
        ok = p[99] <= target if target is not None else True
        line("event → webhook p50", ms(p[50]))
        line("event → webhook p95", ms(p[95]))
        line(
            "event → webhook p99",
            ms(p[99]),
            f"target ≤ {target * 1000:.0f} ms: {verdict(ok)}" if target is not None else "",
        )
        line("event → webhook max", ms(worst))
        line("  p99 client send → service receipt", ms(pct(lat.to_service, 99)), "(ms precision)")
        line("  p99 service receipt → receiver", ms(pct(lat.in_service, 99)))
        svc_p99 = histogram_quantile(m, "intent_event_to_webhook_seconds", 0.99)
        line(
            "  service's event_to_webhook p99 bucket",
            "beyond the last bucket" if math.isinf(svc_p99) else f"≤ {ms(svc_p99)}",
            f"({m.get('intent_event_to_webhook_seconds_count', 0):,.0f} observations, "
            "all webhooks)",
        )
        self.service_lines(m, self.cpu.wall)
        if target is not None:
            self.summary.add(label, figures, f"p99 ≤ {target * 1000:.0f} ms", verdict(ok))
        else:
            self.summary.add(label, figures)
        self.summary.add(
            "  events sent / accepted; webhooks received / expected",
            f"{lat.offered:,} / {lat.accepted:,}; {lat.received:,} / {lat.routed_offered:,}",
            "all, once",
            "OK" if lat.complete else "INCOMPLETE",
        )
        self.summary.failed |= not lat.complete
        return lat

    # -- Kafka -----------------------------------------------------------------------------
    async def kafka(self) -> None:
        from aiokafka.errors import KafkaError

        header("Kafka mode: the broker")
        found = await kafka_phases.services_up(self.workdir)
        if isinstance(found, str):
            note = f"Kafka phases skipped: {found}"
            print(f"  {note}", flush=True)
            self.summary.notes.append(note)
            return
        svc = found
        self.broker_pid = svc.broker_pid
        line("Kafka broker", svc.bootstrap, svc.origin)
        if svc.broker_pid:
            line("  broker JVM", f"pid {svc.broker_pid}", "(its CPU is shown per phase)")
        run_id = self.factory.run_id
        topic, group = f"intent-bench-{run_id}.events", f"intent-bench-{run_id}"
        raw_topic = f"intent-bench-{run_id}.raw"
        svc.topics += [raw_topic, topic, f"{topic}.dlq"]
        try:
            messages = self.kafka_messages()
            await self.kafka_raw(svc, raw_topic, f"{group}.raw", messages)
            env = service_env(
                self.workdir,
                "kafka.db",
                INTENT_KAFKA_BOOTSTRAP=svc.bootstrap,
                INTENT_KAFKA_TOPIC=topic,
                INTENT_KAFKA_GROUP=group,
            )
            drained = await self.kafka_pipeline(svc, env, topic, messages)
            del messages
            if not drained:  # a backlog left would queue ahead of the timed events
                await self.stop_service("Kafka-mode service stopped (backlog left)")
                topic = f"{topic}2"
                svc.topics += [topic, f"{topic}.dlq"]
                env.update(INTENT_KAFKA_TOPIC=topic, INTENT_KAFKA_GROUP=f"{group}2")
                await self.start_service("service-kafka-3", env, fresh=False)
                line("restarted on a fresh topic", topic)
            await self.kafka_latency(svc.bootstrap, topic)
            if self.args.kafka_split_seconds > 0:
                await self.kafka_split(env, self.args.kafka_split_seconds)
        except (KafkaError, TimeoutError) as exc:
            note = f"Kafka phases failed: {type(exc).__name__}: {exc}"
            print(f"  {note}", flush=True)
            self.summary.notes.append(note)
            self.summary.failed = True
        finally:
            await self.stop_service("Kafka-mode service stopped")
            await kafka_phases.delete_topics(svc)

    def kafka_messages(self) -> list[kafka_phases.Message]:
        """Rich pool events (~400 bytes), keyed as the service keys them."""
        n = max(self.args.kafka_raw_events, self.args.kafka_events)
        t0 = time.perf_counter()
        now = time.time()
        out = []
        for _ in range(n):
            ev = self.factory.event(now, "k", rich=True)
            out.append((kafka_key(ev, self.free_mail), orjson.dumps(ev)))
        line(
            "messages generated",
            f"{n:,}",
            f"avg {kafka_phases.summarise_sizes(out):.0f} bytes of event JSON, keyed by account "
            f"domain, in {time.perf_counter() - t0:.1f} s",
        )
        return out

    async def kafka_raw(
        self,
        svc: kafka_phases.Services,
        topic: str,
        group: str,
        messages: list[kafka_phases.Message],
    ) -> None:
        n = self.args.kafka_raw_events
        header(f"5. Kafka ceiling: one raw AIOKafkaConsumer, {n:,} messages, same broker")
        cpu = CpuMeter(os.getpid(), self.receiver.pid, svc.broker_pid)
        raw = await kafka_phases.raw_consume(svc.bootstrap, topic, group, messages[:n], cpu=cpu)
        line(
            "produced to a fresh 4-partition topic",
            f"in {raw.produce_seconds:.1f} s",
            f"{n / raw.produce_seconds:,.0f} msg/s (acks=all, idempotent, linger 20 ms)",
        )
        line("consumer start → first batch", f"{raw.join_seconds:.2f} s", "(group join; not timed)")
        line(
            "consumed",
            f"{raw.consumed:,}",
            f"in {raw.consume_seconds:.2f} s after the first batch, {raw.polls} getmany + commit",
        )
        line("raw consume rate", f"{raw.rate:,.0f} msg/s", "(the ceiling for the service)")
        broker = f", Kafka broker {cpu.share('broker'):.0f}%" if svc.broker_pid else ""
        line("CPU (100% = one core)", "", f"this consumer {cpu.share('client'):.0f}%{broker}")
        self.raw_rate = raw.rate
        self.summary.add(
            "Kafka raw consume (1 aiokafka consumer, ceiling)",
            f"{raw.rate:,.0f} msg/s",
            "",
            "OK" if raw.consumed >= n else "INCOMPLETE",
        )
        self.summary.failed |= raw.consumed < n

    async def kafka_pipeline(
        self,
        svc: kafka_phases.Services,
        env: dict[str, str],
        topic: str,
        messages: list[kafka_phases.Message],
    ) -> bool:
        """Phase 6; whether the backlog was applied in full."""
        args = self.args
        n = args.kafka_events
        header(
            f"6. Kafka pipeline throughput: a backlog of {n:,} events, applied by the "
            "service's consumer"
        )
        await self.start_service("service-kafka", env, fresh=True)
        line("service (Kafka mode)", f"pid {self.svc.pid}", self.base)
        line("  database", "SQLite", f"embedded, {self.workdir / 'kafka.db'}")
        line("  topic / consumer group", topic, env["INTENT_KAFKA_GROUP"])
        await self.setup()
        await self.stop_service("service stopped to queue the backlog")
        produce_s = await kafka_phases.produce(svc.bootstrap, topic, messages[:n])
        line(
            "backlog produced to the service's topic",
            f"{n:,} events",
            f"in {produce_s:.1f} s ({n / produce_s:,.0f} msg/s), keyed as the service keys",
        )
        t_start = time.perf_counter()
        await self.start_service("service-kafka-2", env, fresh=False)
        line("service restarted (same database)", f"in {time.perf_counter() - t_start:.1f} s")
        await self.measure_start("kafka-pipeline")
        warm = min(10_000, n // 10)
        t0 = c0 = 0.0
        t_end, done, capped = 0.0, 0.0, False
        deadline = time.perf_counter() + args.kafka_max_seconds
        while True:
            m = await scrape(self.http)
            now = time.perf_counter()
            counts = {
                k: m.get(f"intent_events_{k}_total|kafka", 0.0)
                for k in ("ingested", "duplicate", "rejected")
            }
            done = sum(counts.values())
            if not t0 and done >= warm:
                t0, c0 = now, done
            if done >= n:
                t_end = now
                break
            if now > deadline:
                t_end, capped = now, True
                break
            self.svc.ensure_alive()
            await asyncio.sleep(0.1)
        m = await self.measure_stop()
        wall = t_end - t0 if t0 else 0.0
        eps = (done - c0) / wall if wall > 0 else 0.0
        ratio = eps / self.raw_rate if self.raw_rate else 0.0
        line(
            "events applied",
            f"{done:,.0f} / {n:,}",
            f"(stopped at the {args.kafka_max_seconds:g} s cap)" if capped else "",
        )
        line(
            "  ingested / duplicate / rejected",
            " / ".join(f"{counts[k]:,.0f}" for k in ("ingested", "duplicate", "rejected")),
        )
        line(
            "Kafka pipeline throughput",
            f"{eps:,.0f} events/s",
            f"after the first {warm:,} (warm-up), over {wall:.1f} s",
        )
        line(
            "  / raw consume rate",
            f"{100 * ratio:.1f}%",
            f"target ≥ {100 * TARGET_KAFKA_RATIO:.0f}%: {verdict(ratio >= TARGET_KAFKA_RATIO)}",
        )
        self.service_lines(m, self.cpu.wall)
        self.summary.add(
            "Kafka pipeline throughput (consumer → SQLite)",
            f"{eps:,.0f} events/s",
            "",
            "" if done >= n else "INCOMPLETE",
        )
        self.summary.add(
            "  pipeline / raw consume",
            f"{100 * ratio:.1f}%",
            f"≥ {100 * TARGET_KAFKA_RATIO:.0f}%",
            verdict(ratio >= TARGET_KAFKA_RATIO),
        )
        return bool(done >= n)

    async def kafka_latency(self, bootstrap: str, topic: str) -> None:
        args = self.args
        header(
            "7. Event → webhook through Kafka: HTTP ingest produces (202 after the broker's "
            "ack), the consumer applies, the dispatcher delivers"
        )
        await self.ensure_hot_policy()
        every = args.mix_every
        await self.offer(
            args.kafka_rate,
            args.kafka_seconds,
            "kafka-mix",
            self.mixed_events(),
            kind=f"1 in {every} routed",
            label=f"event→webhook via Kafka @ {args.kafka_rate:,g}/s, 1 in {every} routed",
            target=TARGET_KAFKA_WEBHOOK_P99,
            drain=30.0,
        )
        # A source producing to the topic itself: the same events, no HTTP in the path.
        sender = kafka_phases.TopicSender(bootstrap, topic, self.free_mail)
        await sender.start()
        try:
            await self.offer(
                args.kafka_rate,
                args.kafka_seconds,
                "kafka-direct",
                self.mixed_events(),
                kind=f"1 in {every} routed, produced straight to the topic",
                label=(
                    f"event→webhook via Kafka @ {args.kafka_rate:,g}/s, 1 in {every} routed, "
                    "produced to the topic (no HTTP)"
                ),
                target=TARGET_KAFKA_WEBHOOK_P99,
                drain=30.0,
                topic=sender,
            )
        finally:
            await sender.close()
        if args.kafka_strict_seconds > 0:
            await self.offer(
                args.kafka_strict_rate,
                args.kafka_strict_seconds,
                "kafka-strict",
                self.strict_events(),
                kind="every event routed, short",
                label=(
                    f"event→webhook via Kafka @ {args.kafka_strict_rate:,g}/s, every event "
                    f"routed ({args.kafka_strict_seconds:g} s)"
                ),
                drain=30.0,
            )

    async def kafka_split(self, env: dict[str, str], seconds: float) -> None:
        """Phase 7 again with the roles in two processes, as a 2-core deployment runs them:
        HTTP ingest → Kafka in one, consumer + dispatcher in the other."""
        args = self.args
        header(
            "7b. The same through Kafka with the roles split: one process answers HTTP and "
            "produces (INTENT_ROLES=api), another consumes and delivers "
            "(INTENT_ROLES=consumer,dispatcher)"
        )
        await self.stop_service("single-process Kafka-mode service stopped")
        port = free_port()
        worker = Child(
            "service-kafka-worker",
            [venv_bin("intent-router"), "serve", "--host", "127.0.0.1", "--port", f"{port}"],
            env={**env, "INTENT_ROLES": "consumer,dispatcher"},
            workdir=self.workdir,
        )
        try:
            await wait_http_ok(f"http://127.0.0.1:{port}/readyz", worker, 60)
            await self.start_service(
                "service-kafka-api", {**env, "INTENT_ROLES": "api"}, fresh=False
            )
            line("API process (INTENT_ROLES=api)", f"pid {self.svc.pid}", self.base)
            line("worker process (consumer,dispatcher)", f"pid {worker.pid}", f"port {port}")
            line("  CPU and pipeline lines below", "the API process, then the worker")
            wclient = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", headers=self.auth, timeout=30
            )
            m0 = await scrape(wclient)
            wcpu = CpuMeter(worker.pid, self.receiver.pid, self.broker_pid)
            wcpu.start()
            every = args.mix_every
            await self.offer(
                args.kafka_rate,
                seconds,
                "kafka-split",
                self.mixed_events(),
                kind=f"1 in {every} routed, roles split",
                label=(
                    f"event→webhook via Kafka @ {args.kafka_rate:,g}/s, 1 in {every} routed, "
                    "api | consumer+dispatcher processes"
                ),
                target=TARGET_KAFKA_WEBHOOK_P99,
                drain=30.0,
            )
            wcpu.stop()
            m = diff(await scrape(wclient), m0)
            await wclient.aclose()
            self.service_lines(m, wcpu.wall, wcpu, who="worker")
        finally:
            rc = await asyncio.to_thread(worker.stop, 20.0)
            line("worker process stopped", f"exit code {rc}")

    async def delivery_phase(self) -> None:
        await delivery_phase.run(self, lambda db: service_env(self.workdir, db))

    async def run(self) -> int:
        try:
            if self.args.only in ("delivery", "kafka"):  # phases with services of their own
                await self.start_receiver()
                await (self.delivery_phase() if self.args.only == "delivery" else self.kafka())
                self.summary.print()
                await asyncio.to_thread(self.receiver.stop, 5.0)
                return 1 if self.summary.failed else 0
            bodies = await self.start()
            await self.setup()
            if self.args.only != "latency":
                await self.batch_phase(bodies)
                del bodies
                await self.single_phase()
            await self.latency_phase()
            await self.mix_phase()
            if self.args.only == "latency":
                header("Embedded-mode service: shutdown")
                await self.stop_service()
                self.summary.print()
                await asyncio.to_thread(self.receiver.stop, 5.0)
                return 1 if self.summary.failed else 0
            header("Embedded-mode service: shutdown")
            await self.stop_service()
            await self.delivery_phase()
            if not self.args.no_kafka:
                await self.kafka()
            self.summary.print()
            await asyncio.to_thread(self.receiver.stop, 5.0)
        finally:
            await self.close()
        return 1 if self.summary.failed else 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """uvloop when present (the service uses it too): a cheaper client, cleaner figures."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="intent-bench-"))
    started = time.perf_counter()
    code = 2
    try:
        code = _run_loop(Bench(args, workdir).run())
    except KeyboardInterrupt:
        print("\ninterrupted; stopping what the bench started", file=sys.stderr)
        code = 130
    except ChildError as exc:
        print(f"\nbench: {exc}", file=sys.stderr)
        code = 2
    except (phases.BenchError, httpx.HTTPError, OSError, TimeoutError) as exc:
        print(f"\nbench: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        service = find_child("service")
        if service is not None:
            state = "running" if service.alive() else f"exit code {service.proc.poll()}"
            print(f"--- {service.name} ({state}) stderr tail ---", file=sys.stderr)
            print(service.stderr_tail(40), file=sys.stderr)
        code = 1
    finally:
        stop_all()
        for note in kafka_phases.cleanup():
            print(note)
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nbench finished in {time.perf_counter() - started:.0f} s (exit code {code})")
    sys.exit(code)


if __name__ == "__main__":
    main()
